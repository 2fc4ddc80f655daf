"""Training and evaluation loop: ``train_and_evaluate(config, workdir)``.

The model, the optimiser, the TrainState and the jitted steps come from
:mod:`jointre_jax.runtime`; checkpoints from :mod:`jointre_jax.checkpoints`; predictions and
scores from :mod:`jointre_jax.predictor` and :mod:`jointre_jax.evaluation`.

* Every epoch: dev evaluation, the best parameters kept by ``config.best_metric``, a line in
  ``workdir/metrics.jsonl``. At the end: test scores of the best parameters in
  ``workdir/metrics.json``, against the encoded gold and (``corpus``) the corpus gold.
* orbax checkpoints in ``workdir/checkpoints`` (latest, with the best-so-far bookkeeping) and
  ``workdir/best``; a killed run resumes from its workdir at the exact step and, since the data
  plan and dropout depend only on (seed, epoch, step), ends with the same result.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import time
from collections.abc import Callable
from typing import Any

import jax
from tqdm.auto import tqdm

from jointre_jax import locking, parallel, runtime, steps, validation
from jointre_jax import state as state_lib
from jointre_jax.checkpoints import (
    checkpoint_manager,
    describe,
    restore,
    restore_latest,
    save,
    set_aside,
)
from jointre_jax.data.corpus import load_split, make_encoder
from jointre_jax.data.packing import make_batcher
from jointre_jax.distillation import teacher_tables
from jointre_jax.errors import Preempted
from jointre_jax.evaluation import evaluate
from jointre_jax.predictor import Predictor
from jointre_jax.preemption import StopRequest

log = logging.getLogger(__name__)
TERMS = ("ner_loss_sum", "ner_count", "re_loss_sum", "re_pairs")


def _dev_f1s(results: dict) -> dict:
    """The per-epoch log's F1 fields of dev ``results`` (``corpus_*``: against the corpus gold)."""
    out = {f"dev_{k}_f1": results[k]["f1"] for k in ("ner", "re_gs", "re_e2e")}
    if "corpus" in results:
        out.update({f"dev_corpus_{k}_f1": results["corpus"][k]["f1"] for k in ("ner", "re_e2e")})
    return out


def best_metric_name(config) -> str:
    """``config.best_metric`` or, when empty, the natural one for the method."""
    if config.best_metric:
        return str(config.best_metric)
    return {"ner": "ner.f1", "re": "re_gs.f1"}.get(config.model.method, "re_e2e.f1")


def metric_value(results: dict, name: str) -> float:
    """A dotted metric of the results, e.g. "re_e2e.f1"."""
    value = results
    for part in name.split("."):
        value = value[part]
    return float(value)


# ---------------------------------------------------------------------------- main loop
def train_and_evaluate(config, workdir: str) -> dict:
    """Trains the model of ``config`` in ``workdir``; returns the test scores (metrics.json).

    The config is validated first (:mod:`jointre_jax.validation`), then the workdir is locked
    for the whole run (:mod:`jointre_jax.locking`: a second process on it stops at once), and
    a run that fails before its first write leaves no workdir behind."""
    validation.validate(config)  # every option, before anything is read or written
    validation.check_paths(config)
    workdir = pathlib.Path(workdir)
    with locking.hold(workdir, "workdir", program="train", remove_if_unused=True):
        return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config, workdir: pathlib.Path) -> dict:
    runtime.use_compilation_cache(config.compilation_cache_dir)
    is_main = jax.process_index() == 0
    encoder = make_encoder(config)
    train_data = load_split(config, config.data.train_split, encoder)
    dev_data = load_split(config, config.data.eval_split, encoder)
    schema, scheme = train_data.schema, encoder.scheme
    runtime.resolve_sizes(config, train_data.examples)  # sizes the data needs, saved below
    bert, weights_dir = runtime.encoder_config(config)
    validation.check_encoder(config, bert)
    teacher = teacher_tables(config, train_data.examples, scheme)  # checked before the workdir
    if is_main:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=1))
    batcher = make_batcher(config, train_data.examples, scheme, training=True, soft_targets=teacher)
    steps_per_epoch = batcher.steps_per_epoch()
    total_steps = steps_per_epoch * config.num_epochs

    mask_id = encoder.tokenizer.mask_token_id  # for model.word_masking; None: no [MASK]
    mask_id = -1 if mask_id is None else mask_id
    model = runtime.create_model(config, scheme, schema.num_relation_labels, bert, mask_id)
    mesh = runtime.make_mesh(config)
    log.info("%s", parallel.describe(mesh))
    state = state_lib.create_state(config, model, weights_dir, total_steps, mesh)
    train = steps.jit_train_step(mesh, state, runtime.loss_options(config, scheme))
    meta, resumed_sums = {"best_metric": None, "best_epoch": None}, None
    resumed = restore_latest(workdir / "checkpoints", state)  # the newest readable step
    if resumed is not None:
        state, meta = resumed
        resumed_sums = meta.pop("epoch_sums", None)  # of the epoch the step falls in
        log.info("resumed from step %d of %d", int(state.step), total_steps)
    # A best checkpoint beyond the starting step is an earlier run's (another model, maybe):
    # this run must never score it. Afresh, that is every one.
    start = int(state.step) if resumed is not None else -1
    set_aside(workdir / "best", "not saved by this run", after=start)
    latest = checkpoint_manager(workdir / "checkpoints", keep=2)  # a step to fall back on
    best = checkpoint_manager(workdir / "best")

    predictor = Predictor(config, model, state.params)  # compiled once, given fresh params

    def scores(state, split_data, desc):
        predictor.params = state_lib.eval_params(state)  # the average with optim.ema_decay
        return evaluate(predictor, split_data.examples, schema, split_data.corpus_gold, desc)

    rng = jax.random.key(config.seed + 1)
    step = int(state.step)
    log_path = workdir / "metrics.jsonl"
    start_epoch = step // steps_per_epoch
    # Every other shape compiles in background threads while the first step compiles here.
    ahead = _compile_ahead(batcher, start_epoch, step, predictor, dev_data, state, train, rng)
    writer = _tensorboard(workdir, is_main)
    if is_main:  # keep the lines of the epochs the restored state has completed
        truncate_log(log_path, start_epoch)
    if step == 0 and config.eval_before_training:  # the baseline the scores rise from
        ahead.wait()
        initial = scores(state, dev_data, "dev (initial)")
        append_log(log_path, is_main, {"epoch": 0, "step": 0, **_dev_f1s(initial)})

    def end_epoch(epoch, step, state, sums):  # dev scores, the best parameters kept
        nonlocal meta
        ahead.wait()
        dev = scores(state, dev_data, "dev")
        value = metric_value(dev, best_metric_name(config))
        if meta["best_metric"] is None or value > meta["best_metric"]:
            meta = {"best_metric": value, "best_epoch": epoch + 1}
            save(best, step, state, meta)
        record = {
            "train_ner_loss": sums["ner_loss_sum"] / max(sums["ner_count"], 1),
            "train_re_loss": sums["re_loss_sum"] / max(sums["re_pairs"], 1),
            **_dev_f1s(dev),
            "best_epoch": meta["best_epoch"],
        }
        return record, meta

    loop = Loop(
        train, batcher, config.num_epochs, rng, TERMS, latest, meta,
        config.checkpoint_every_steps, log_path, end_epoch, writer=writer,
    )  # fmt: skip
    state = loop.run(state, resumed_sums)
    test_data = load_split(config, config.data.test_split, encoder)
    if best.latest_step() is not None:
        try:
            state, meta = restore(best, state)  # written by this run
        except Exception as err:  # noqa: BLE001 - damaged, or left by an earlier run
            log.warning("best checkpoint unreadable (%s): scoring the last epoch's parameters",
                        describe(err))  # fmt: skip
            meta = {"best_metric": None, "best_epoch": config.num_epochs}
    results = scores(state, test_data, "test")
    results["best_epoch"] = meta["best_epoch"]
    results["dev_" + best_metric_name(config)] = meta["best_metric"]
    if is_main:
        (workdir / "metrics.json").write_text(json.dumps(results, indent=1))
    return results


@dataclasses.dataclass
class Loop:
    """The loop of every training of the project (a model's, the masked-LM adaptation's):
    :meth:`run` takes the epochs from ``state.step`` to the end of epoch ``num_epochs``, each
    planned by ``batcher`` from (seed, epoch) alone, so that a resumed loop runs exactly the
    steps, and sums exactly the losses, of an uninterrupted one.

    Attributes:
      step_fn: ``(state, batch, rng) -> (state, metrics)``, jitted by
        :func:`jointre_jax.steps.jit_step`; ``metrics`` has a scalar of each of ``terms``,
        summed over the epoch (read one step late: the host never waits on the device), and
        ``loss`` (the progress bar's).
      batcher: ``epoch_plan``, ``iterate`` and ``steps_per_epoch`` (this process's rows).
      manager: the orbax manager of the resumable checkpoints: one every
        ``checkpoint_every`` steps (0: none within an epoch) with the epoch's sums so far, one
        at each epoch's end, and one at the step a SIGTERM or SIGINT stops the loop
        (:mod:`jointre_jax.preemption`); ``meta`` is saved with each.
      end_epoch: ``end_epoch(epoch, step, state, sums) -> (fields, meta)`` after each epoch:
        the caller's fields of the epoch's line in ``log_path`` (after ``epoch``, ``step``,
        ``seconds``) and the meta to save from then on (training keeps its best there).
      prepare: None, or ``prepare(host_batch, step) -> host_batch`` (the adaptation's masks).
      writer: a TensorBoard writer of the lines' floats, or None.
    """

    step_fn: Callable
    batcher: Any
    num_epochs: int
    rng: Any
    terms: tuple[str, ...]
    manager: Any
    meta: dict
    checkpoint_every: int
    log_path: pathlib.Path
    end_epoch: Callable
    prepare: Callable | None = None
    writer: Any = None
    desc: str = "epoch"

    def run(self, state, carried_sums: dict | None = None):
        """The state after the last step. ``carried_sums``: the restored checkpoint's sums of
        its epoch so far (None afresh). Raises Preempted after saving, on a stop request."""
        step = int(state.step)
        steps_per_epoch = self.batcher.steps_per_epoch()
        with StopRequest() as stop:
            for epoch in range(step // steps_per_epoch, self.num_epochs):
                state, step = self._epoch(state, step, epoch, carried_sums, stop)
                carried_sums = None  # the restored epoch is behind
        return state

    def _epoch(self, state, step: int, epoch: int, carried_sums, stop: StopRequest):
        """One epoch from ``step``; returns (state, step)."""
        process, processes = jax.process_index(), jax.process_count()
        is_main = process == 0
        sharding = parallel.batch_sharding(parallel.params_mesh(state.params))
        steps_per_epoch = self.batcher.steps_per_epoch()
        offset = step - epoch * steps_per_epoch
        # The loss sums of the epoch so far: carried in the checkpoint, so that a resumed
        # epoch logs the same mean losses as an uninterrupted one.
        carried = (carried_sums or {}) if offset else {}
        sums = {k: float(carried.get(k, 0.0)) for k in self.terms}
        pending = None
        started = time.time()
        bar = tqdm(
            total=steps_per_epoch, initial=offset, disable=not is_main,
            desc=f"{self.desc} {epoch + 1}/{self.num_epochs}",
        )  # fmt: skip
        plan = self.batcher.epoch_plan(epoch)
        for host_batch in self.batcher.iterate(plan, process, processes, offset):
            if self.prepare is not None:
                host_batch = self.prepare(host_batch, step)
            state, metrics = self.step_fn(state, parallel.global_batch(host_batch, sharding),
                                          self.rng)  # fmt: skip
            if pending is not None:
                _accumulate(sums, pending, bar)
            pending = metrics
            step += 1
            bar.update(1)
            periodic = self.checkpoint_every and step % self.checkpoint_every == 0
            within = step % steps_per_epoch != 0  # the epoch's end saves after its scores
            stopping = within and stop.requested(step)
            if within and (periodic or stopping):
                _accumulate(sums, pending, bar)
                pending = None
                save(self.manager, step, state, {**self.meta, "epoch_sums": sums})
            if stopping:
                bar.close()
                raise Preempted(step, stop.signum)
        if pending is not None:
            _accumulate(sums, pending, bar)
        bar.close()
        fields, self.meta = self.end_epoch(epoch, step, state, sums)
        record = {"epoch": epoch + 1, "step": step,
                  "seconds": round(time.time() - started, 1), **fields}  # fmt: skip
        log.info("%s", record)
        append_log(self.log_path, is_main, record)
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, float):
                    self.writer.add_scalar(key, value, step)
            self.writer.flush()
        save(self.manager, step, state, self.meta)
        if stop.requested():
            raise Preempted(step, stop.signum)
        return state, step


def _compile_ahead(batcher, epoch, step, predictor, dev_data, state, train, rng):
    """Starts compiling, in background threads, the training shapes of ``epoch``'s plan but
    the one its next step needs, and the prediction shapes of the dev split."""
    plan = batcher.epoch_plan(epoch)
    sharding = parallel.batch_sharding(parallel.params_mesh(state.params))
    offset = step - epoch * batcher.steps_per_epoch()
    first = plan[offset].length if offset < len(plan) else None
    abstract = lambda tree: jax.tree.map(  # noqa: E731 - shapes only: the state is donated
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree
    )
    calls = [
        (f"training shape {tuple(b['input_ids'].shape)}", train, (abstract(state), b, rng))
        for b in runtime.shape_batches(batcher, plan, sharding)
        if b["input_ids"].shape[1] != first
    ]
    dev_batcher = predictor.batcher(dev_data.examples)
    calls += [
        (f"prediction shape {tuple(b['input_ids'].shape)}", predictor.predict_fn,
         (abstract(state.params), b))
        for b in runtime.shape_batches(dev_batcher, dev_batcher.eval_plan(), sharding)
    ]  # fmt: skip
    return runtime.CompileAhead(calls)


def _tensorboard(workdir: pathlib.Path, is_main: bool):
    """A tensorboardX SummaryWriter on ``workdir/tensorboard`` if installed (process 0)."""
    if not is_main:
        return None
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(workdir / "tensorboard"))


def truncate_log(path: pathlib.Path, completed_epochs: int) -> None:
    """Drops lines of epochs after ``completed_epochs`` (written before a kill)."""
    if path.exists():
        lines = [x for x in path.read_text().splitlines() if x.strip()]
        kept = [x for x in lines if json.loads(x)["epoch"] <= completed_epochs]
        path.write_text("".join(x + "\n" for x in kept) if completed_epochs else "")


def append_log(path: pathlib.Path, is_main: bool, record: dict) -> None:
    """Appends ``record`` as one JSON line to ``path`` (the main process only)."""
    if is_main:
        with path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def _accumulate(sums: dict, metrics, bar) -> None:
    values = jax.device_get(metrics)
    for key in sums:
        sums[key] += float(values[key])
    bar.set_postfix(loss=f"{float(values['loss']):.3f}", refresh=False)
