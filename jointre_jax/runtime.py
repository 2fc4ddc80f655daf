"""Building a run from its config: the mesh, the encoder, the model, the loss options, the
static sizes, and compiling ahead.

The jitted steps are :mod:`jointre_jax.steps`, the optimiser :mod:`jointre_jax.optim`, the
TrainState and its parameters :mod:`jointre_jax.state`.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import pathlib
import threading
import time

import jax
from jax.sharding import Mesh

from jointre_jax import parallel
from jointre_jax.data import packing
from jointre_jax.data.batching import Batcher, entity_slots
from jointre_jax.labels import EntityScheme
from jointre_jax.model.bert import BertConfig
from jointre_jax.model.joint import JointModel, ModelOptions
from jointre_jax.model.losses import LossOptions
from jointre_jax.model.pretrained import resolve_encoder

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------- construction
def make_mesh(config) -> Mesh:
    """The ``(data, fsdp)`` device mesh of ``config`` (see :mod:`jointre_jax.parallel`)."""
    data = config.data
    sizes = (data.batch_size, data.eval_batch_size)  # rows of a batch
    if data.packing:
        sizes = tuple(n for n in (data.pack_rows, data.eval_pack_rows) if n)
    return parallel.make_mesh(config.num_devices, config.sharding.fsdp, sizes)


def encoder_config(config) -> tuple[BertConfig, pathlib.Path | None]:
    """(BertConfig, weights directory or None) of ``config.model``.

    ``config.model.pretrained=False`` builds a randomly initialised encoder from the encoder
    directory's config.json (e.g. the shipped demo encoder).
    """
    directory = resolve_encoder(str(config.model.encoder))
    bert = BertConfig.from_json(directory / "config.json")
    return bert, (directory if config.model.pretrained else None)


def use_compilation_cache(directory: str) -> pathlib.Path | None:
    """Turns JAX's persistent compilation cache on in ``directory`` (``~`` expanded; created),
    or off when it is empty. Every compilation is kept, however quick, so that a second run of
    the same shapes compiles nothing. Returns the folder in use."""
    from jax.experimental.compilation_cache import compilation_cache

    if not directory:
        jax.config.update("jax_enable_compilation_cache", False)
        compilation_cache.reset_cache()
        return None
    path = pathlib.Path(os.path.expanduser(str(directory)))
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    compilation_cache.reset_cache()  # the next compilation opens the cache at ``path``
    return path


def create_model(
    config, scheme: EntityScheme, num_relations: int, bert: BertConfig, mask_token_id: int = -1
) -> JointModel:
    """The JointModel that ``config.model`` describes (:class:`ModelOptions`; its
    ``max_entities`` must be resolved: see :func:`resolve_sizes`). ``mask_token_id``: the
    tokenizer's [MASK], which training with ``model.word_masking`` needs (prediction never
    masks). The config was validated (:mod:`jointre_jax.validation`)."""
    options = ModelOptions.from_config(config.model)
    return JointModel(bert, scheme, num_relations + scheme.extra_relations, options, mask_token_id)


def loss_options(config, scheme: EntityScheme) -> LossOptions:
    """The static loss options of ``config`` (:meth:`LossOptions.from_config`)."""
    return LossOptions.from_config(config.model, scheme)


def host_rows(batcher: Batcher, planned) -> dict:
    """This process's rows of a planned batch (numpy)."""
    rows = batcher.local_rows(jax.process_index(), jax.process_count())
    return batcher.build(planned, rows)


def resolve_sizes(config, examples) -> None:
    """Sets the static sizes left at 0 that the training ``examples`` decide (in place; the
    run saves them in config.json, so inference builds the same shapes): with
    ``data.packing`` the rows per batch and the entity slots per row
    (:func:`jointre_jax.data.packing.resolve`), else the entity slots per example."""
    if config.data.packing:
        devices = int(config.num_devices) or jax.device_count()
        packing.resolve(config, examples, devices)
    elif not config.model.max_entities:
        with config.unlocked():
            config.model.max_entities = entity_slots(examples)


class CompileAhead:
    """Compiles jitted calls in background threads while the caller goes on (the first
    training step compiles in the main thread meanwhile): the shapes a run needs later, such
    as prediction's and the other length buckets', are ready when it gets there. Each finished
    compilation logs a progress line; :meth:`wait` re-raises a failure.

    Args:
      calls: (name, jitted function, example arguments) of each shape; the arguments' shapes,
        dtypes and shardings are what count (the call itself is not run).
      threads: compiler threads (0: one per shape, at most the CPU count).
    """

    def __init__(self, calls, threads: int = 0):
        self.calls = list(calls)
        self.done = 0
        lock = threading.Lock()
        threads = threads or max(1, min(len(self.calls), os.cpu_count() or 1))
        self.pool = concurrent.futures.ThreadPoolExecutor(threads, "compile-ahead")
        self.started = time.perf_counter()

        def compile_one(name, fn, args):
            begin = time.perf_counter()
            fn.lower(*args).compile()
            with lock:
                self.done += 1
                log.info(
                    "compiled %s in %.1f s (%d/%d ahead, %.1f s since start)", name,
                    time.perf_counter() - begin, self.done, len(self.calls),
                    time.perf_counter() - self.started,
                )  # fmt: skip

        self.futures = [self.pool.submit(compile_one, *call) for call in self.calls]
        self.pool.shutdown(wait=False)

    def wait(self) -> None:
        """Blocks until every compilation has finished; re-raises the first failure."""
        for future in self.futures:
            future.result()


def shape_batches(batcher: Batcher, plan, sharding) -> list:
    """A global batch of each distinct shape of ``plan`` (its first batch of that shape)."""
    seen, batches = set(), []
    for planned in plan:
        if planned.length not in seen:
            seen.add(planned.length)
            batches.append(parallel.global_batch(host_rows(batcher, planned), sharding))
    return batches
