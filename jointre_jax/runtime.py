"""What a run is built from: model, optimiser, TrainState, and the jitted steps.

* ``train_step(state, batch, rng, *, options)`` is pure and module-level; the loss options
  (:class:`~jointre_jax.model.losses.LossOptions`) are bound with ``functools.partial``. It is
  jitted once per batch shape with explicit shardings (batch split over every device; state
  replicated, or FSDP-sharded with ``config.sharding.fsdp`` > 1, see
  :mod:`jointre_jax.parallel`) and ``donate_argnums=0``; dropout keys are
  ``fold_in(rng, state.step)``.
* ``predict_step(params, batch)`` decodes entities and scores their relations on the device
  (:mod:`jointre_jax.predictor` turns its arrays into entities and relations of examples),
  for one model or an ensemble (a tuple of parameters: mean probabilities).
* AdamW with linear warmup and linear decay, global-norm gradient clipping; the new heads may
  take their own peak learning rate (``optim.head_learning_rate``), the encoder's layers
  decayed ones (``optim.layer_decay``).
* ``optim.ema_decay`` > 0: the state also carries an exponential moving average of the
  parameters (:class:`EmaTrainState`), which evaluation, the best checkpoint's scores and
  inference use (:func:`eval_params`).
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import os
import pathlib
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from flax.training import train_state
from jax.sharding import Mesh

from jointre_jax import parallel
from jointre_jax.data import packing
from jointre_jax.data.batching import Batcher, entity_slots
from jointre_jax.labels import EntityScheme, decide, gold_as_decoded, gold_table
from jointre_jax.model.bert import BertConfig
from jointre_jax.model.joint import JointModel
from jointre_jax.model.losses import LossOptions, loss_terms, ner_consistency, total_loss
from jointre_jax.model.pretrained import load_weights, merge_pretrained, resolve_encoder

TrainState = train_state.TrainState
log = logging.getLogger(__name__)
ENCODERS = ("encoder", "re_encoder")  # top-level parameter groups holding pre-trained BERTs
# Below an encoder: the word-embedding table that adversarial training perturbs.
WORD_EMBEDDINGS = ("embeddings", "word_embeddings", "embedding")
# The EMA decay of step t is min(ema_decay, (1 + t) / (EMA_WARMUP + t)): early steps, whose
# parameters are far from the later ones, are forgotten quickly (TensorFlow's num_updates).
EMA_WARMUP = 10.0


def path_keys(path) -> tuple[str, ...]:
    """The keys of a parameter's tree path (``tree_map_with_path``), e.g. ("encoder", ...)."""
    return tuple(getattr(k, "key", str(k)) for k in path)


class EmaTrainState(train_state.TrainState):
    """flax's TrainState plus an exponential moving average of the parameters after each step
    (``ema_params``). Only runs with ``optim.ema_decay`` > 0 have one: the others keep flax's
    own, so their checkpoints, and those saved before this class existed, keep one layout."""

    ema_params: Any = None
    ema_decay: float = struct.field(pytree_node=False, default=0.0)

    def apply_gradients(self, *, grads, **kwargs):
        new = super().apply_gradients(grads=grads, **kwargs)
        t = new.step.astype(jnp.float32)
        decay = jnp.minimum(self.ema_decay, (1.0 + t) / (EMA_WARMUP + t))
        ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, self.ema_params, new.params)
        return new.replace(ema_params=ema)


def eval_params(state: TrainState):
    """The parameters that evaluation and inference use: the moving average when the run
    keeps one (:class:`EmaTrainState`), else the parameters."""
    return state.ema_params if isinstance(state, EmaTrainState) else state.params


def eval_field(config) -> str:
    """The field of a run's saved state that :func:`eval_params` reads (what inference
    restores): "ema_params" with ``optim.ema_decay`` > 0, else "params"."""
    return "ema_params" if config.optim.get("ema_decay", 0.0) else "params"


def perturb_word_embeddings(params, grads, epsilon: float):
    """``params`` with each encoder's word-embedding table E moved by ``epsilon * g / ||g||``
    (g: its gradient, ||g|| its Frobenius norm): the fast gradient method's adversarial
    direction (Miyato et al. 2017), the rest unchanged."""

    def move(path, p, g):
        keys = path_keys(path)
        if keys[0] in ENCODERS and keys[1:] == WORD_EMBEDDINGS:
            norm = jnp.sqrt(jnp.sum(jnp.square(g.astype(jnp.float32))))
            return p + (epsilon / jnp.maximum(norm, 1e-12)) * g
        return p

    return jax.tree_util.tree_map_with_path(move, params, grads)


def train_step(state: TrainState, batch: dict, rng: jax.Array, *, options: LossOptions):
    """One optimiser step.

    Args:
      state: the TrainState (donated).
      batch: arrays of ``data.batching`` for the global batch [B, L] (rows split over every device).
      rng: the run's base key; the step's dropout key is ``fold_in(rng, state.step)``.
      options: the loss's static options (bound with ``functools.partial``). With
        ``adversarial_epsilon`` > 0 the gradient is that of the loss plus that of the loss
        at the word embeddings moved in the adversarial direction
        (:func:`perturb_word_embeddings`; a second forward and backward pass, with another
        dropout key); with ``adversarial_consistency`` w > 0 too, that second loss adds
        w * :func:`~jointre_jax.model.losses.ner_consistency` of its NER logits against the
        first pass's. The metrics are those of the first.
    Returns:
      (new state, metrics: dict of scalar sums ``ner_loss_sum``, ``ner_count``,
      ``re_loss_sum``, ``re_pairs`` and the scalar ``loss``).
    """
    dropout_rng = jax.random.fold_in(rng, state.step)

    def loss_fn(params, key, reference=None):
        outputs = state.apply_fn(
            {"params": params},
            batch,
            deterministic=False,
            label_source=options.label_source,
            tables=(options.re_table,),
            rngs={"dropout": key},
        )
        terms = loss_terms(outputs, batch, options, jax.random.fold_in(key, 2))
        loss = total_loss(terms, options.ner_weight, options.re_weight)
        if reference is not None:
            consistency = ner_consistency(outputs["ner_logits"], reference, batch, options)
            loss = loss + options.adversarial_consistency * consistency
        return loss, (terms, outputs.get("ner_logits"))

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, (terms, ner_logits)), grads = grad_fn(state.params, dropout_rng)
    if options.adversarial_epsilon:
        moved = perturb_word_embeddings(state.params, grads, options.adversarial_epsilon)
        reference = ner_logits if options.adversarial_consistency else None
        _, adversarial = grad_fn(moved, jax.random.fold_in(dropout_rng, 1), reference)
        grads = jax.tree.map(jnp.add, grads, adversarial)
    return state.apply_gradients(grads=grads), {**terms, "loss": loss}


def mean_log_probs(logits: list) -> jax.Array:
    """Log of the members' mean class probabilities, from each member's logits [..., C]: what
    decoding reads as the ensemble's logits (its softmax is the mean). One member: its logits,
    unchanged."""
    if len(logits) == 1:
        return logits[0]
    probs = [jax.nn.softmax(x.astype(jnp.float32), -1) for x in logits]
    return jnp.log(sum(probs) / len(probs))


def predict_step(params, batch: dict, *, model: JointModel) -> dict:
    """Predictions of a batch (N = entity slots):

    * ``entities``: the decoded entity table (``start``, ``end``, ``type``, ``mask``,
      ``score`` [B, N], ``overflow`` [B]); the gold table for a model without NER;
    * with RE: ``re_labels`` int32 [B, N, N] (best relation label between decoded entities),
      ``re_probs`` float32 [B, N, N] (its probability), ``gold_re_labels`` int32 [B, N, N]
      (best label between the gold entities of the batch: RE among gold entities).

    ``params``: one model's parameters, or a tuple of several (an ensemble of runs of one
    config, e.g. seeds): each member encodes the batch; entities are decoded from the mean of
    their NER probabilities; each member scores the relations between those entities, and the
    decision reads the mean of their relation probabilities.
    """
    members = params if isinstance(params, tuple) else (params,)
    stages = [model.apply({"params": p}, batch, method=JointModel.encode) for p in members]
    has_re = model.method != "ner"
    ner_logits = None
    if model.method != "re":
        ner_logits = mean_log_probs([stage["ner_logits"] for stage in stages])
    if ner_logits is None:
        entities = gold_as_decoded(batch)
    else:
        entities = model.scheme.decode(
            ner_logits, batch["word_mask"], model.max_entities, batch.get("word_segment")
        )
    out = {"entities": entities}
    if has_re:
        labels = model.entity_labels(ner_logits, batch, "predicted")

        def relations(table):  # (label int32 [B, N, N], its probability): the mean's decision
            logits = [
                model.apply(
                    {"params": p},
                    stage["pair_words"],
                    table,
                    labels,
                    method=JointModel.relation_logits,
                )
                for p, stage in zip(members, stages, strict=True)
            ]
            probs = jax.nn.softmax(mean_log_probs(logits).astype(jnp.float32), -1)
            label, prob = decide(probs, model.scheme.threshold)
            return label.astype(jnp.int32), prob

        out["re_labels"], out["re_probs"] = relations(entities)
        out["gold_re_labels"] = relations(gold_table(batch))[0]
    return out


# ------------------------------------------------------------------------- construction
def make_mesh(config) -> Mesh:
    """The ``(data, fsdp)`` device mesh of ``config`` (see :mod:`jointre_jax.parallel`)."""
    data = config.data
    sizes = (data.batch_size, data.eval_batch_size)  # rows of a batch
    if data.get("packing", False):
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
):
    """The JointModel that ``config.model`` describes (``config.model.max_entities`` must be
    resolved: see :func:`resolve_sizes`). ``mask_token_id``: the tokenizer's [MASK], which
    training with ``model.word_masking`` needs (prediction never masks)."""
    if config.model.negative_sampling == "incremental" and config.model.method != "joint":
        raise ValueError("negative_sampling='incremental' needs method='joint'")
    if config.model.get("span_context", False) and not (
        config.model.ner_decoder == "span" and config.model.span_pooling_dim
    ):
        raise ValueError(
            "model.span_context feeds the span-content term: it needs model.ner_decoder='span' "
            "and model.span_pooling_dim > 0"
        )
    if int(config.model.get("span_conv_layers", 0)) and config.model.ner_decoder != "span":
        raise ValueError(
            "model.span_conv_layers convolves the span table: it needs model.ner_decoder='span'"
        )
    if packing.example_length(config) > bert.max_position_embeddings:
        raise ValueError(
            f"data.max_length + data.context_length = {packing.example_length(config)} exceeds the "
            f"encoder's {bert.max_position_embeddings} positions"
        )
    if not 0.0 <= float(config.model.get("word_masking", 0.0)) < 1.0:
        raise ValueError(f"model.word_masking must be in [0, 1): {config.model.word_masking}")
    return JointModel(
        encoder_config=bert,
        scheme=scheme,
        num_relations=num_relations + scheme.extra_relations,
        method=config.model.method,
        re_option=config.model.re_option,
        label_embedding_dim=config.model.ner_label_embedding_dim,
        pair_hidden_dim=config.model.pair_hidden_dim,
        span_hidden_dim=config.model.span_hidden_dim,
        max_entities=int(config.model.max_entities),
        dropout_rate=config.model.dropout_rate,
        word_features=str(config.model.word_features),
        layer_mix=bool(config.model.layer_mix),
        word_lstm_dim=int(config.model.word_lstm_dim),
        span_pooling_dim=int(config.model.span_pooling_dim),
        span_context=bool(config.model.get("span_context", False)),
        span_conv_layers=int(config.model.get("span_conv_layers", 0)),
        span_conv_dim=int(config.model.get("span_conv_dim", 64)),
        casing_embedding_dim=int(config.model.get("casing_embedding_dim", 0)),
        word_masking=float(config.model.get("word_masking", 0.0)),
        mask_token_id=int(mask_token_id),
        dtype=jnp.dtype(config.model.compute_dtype),
    )


def loss_options(config, scheme: EntityScheme) -> LossOptions:
    """The static loss options of ``config``."""
    if config.model.get("adversarial_consistency", 0.0) and config.model.method == "re":
        raise ValueError("model.adversarial_consistency compares NER distributions: not for re")
    return LossOptions(
        scheme=scheme,
        negative_sampling=str(config.model.negative_sampling),
        label_source=str(config.model.train_label_source),
        ner_weight=float(config.model.ner_loss_weight),
        re_weight=float(config.model.re_loss_weight),
        boundary_smoothing=float(config.model.get("boundary_smoothing", 0.0)),
        span_negative_keep=float(config.model.get("span_negative_keep", 1.0)),
        adversarial_epsilon=float(config.model.get("adversarial_epsilon", 0.0)),
        adversarial_consistency=float(config.model.get("adversarial_consistency", 0.0)),
        distillation_weight=float(config.model.get("distillation_weight", 0.0)),
    )


def encoder_depth(path: tuple[str, ...], num_layers: int) -> int:
    """Depth of a pre-trained encoder parameter: 0 for the embeddings, i + 1 for layer i,
    ``num_layers`` for the pooler (it reads the top layer). ``path``: keys below the encoder."""
    if path[0] == "embeddings":
        return 0
    if path[:2] == ("encoder", "layer"):
        return int(path[2]) + 1
    return num_layers


def warmup_linear_decay(peak: float, total_steps: int, warmup_fraction: float):
    """The learning rate: linear from 0 to ``peak`` over ``warmup_fraction`` of
    ``total_steps`` (at least one step), then linear to 0 at ``total_steps``."""
    warmup = max(int(warmup_fraction * total_steps), 1)
    return optax.join_schedules(
        [
            optax.linear_schedule(0.0, peak, warmup),
            optax.linear_schedule(peak, 0.0, max(total_steps - warmup, 1)),
        ],
        [warmup],
    )


def create_optimizer(config, total_steps: int, num_layers: int = 0) -> optax.GradientTransformation:
    """AdamW, linear warmup over ``warmup_fraction`` of the steps, then linear decay to 0.

    The encoders take ``optim.learning_rate``; the new heads ``optim.head_learning_rate``
    (0: the same). With ``optim.layer_decay`` d < 1 (layer-wise learning-rate decay, Clark et
    al. 2020) an encoder parameter at depth k (:func:`encoder_depth`, 0 = embeddings) of a
    ``num_layers``-layer encoder takes ``learning_rate * d ** (num_layers - k)``: the top
    layer the full rate, the embeddings the least.
    """
    fraction = config.optim.warmup_fraction

    def adamw(peak):
        schedule = warmup_linear_decay(peak, total_steps, fraction)
        return optax.adamw(schedule, weight_decay=config.optim.weight_decay)

    peak = float(config.optim.learning_rate)
    head_peak = float(config.optim.get("head_learning_rate", 0.0) or peak)
    decay = float(config.optim.get("layer_decay", 1.0))
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"optim.layer_decay {decay} not in (0, 1]")
    if decay < 1.0 and num_layers < 1:
        raise ValueError("optim.layer_decay needs the encoder's num_layers")
    if head_peak == peak and decay == 1.0:
        return optax.chain(optax.clip_by_global_norm(config.optim.grad_clip_norm), adamw(peak))

    def label(path, _):
        keys = path_keys(path)
        if keys[0] not in ENCODERS:
            return "head"
        if decay == 1.0:
            return "encoder"
        return f"encoder_{num_layers - encoder_depth(keys[1:], num_layers)}"

    # Without decay: "encoder" and "head". With it, "encoder_e" holds the encoders' parameters
    # e layers below the top (rate peak * decay ** e).
    rates = {"head": adamw(head_peak)}
    if decay == 1.0:
        rates["encoder"] = adamw(peak)
    else:
        rates.update({f"encoder_{e}": adamw(peak * decay**e) for e in range(num_layers + 1)})
    update = optax.multi_transform(
        rates, lambda params: jax.tree_util.tree_map_with_path(label, params)
    )
    return optax.chain(optax.clip_by_global_norm(config.optim.grad_clip_norm), update)


def dummy_batch(length: int = 8, rows: int = 1, entities: int = 2) -> dict:
    """A batch of zeros of the given shape, for initialisation."""
    return {
        "input_ids": jnp.zeros((rows, length), jnp.int32),
        "input_mask": jnp.ones((rows, length), bool),
        "word_index": jnp.zeros((rows, length), jnp.int32),
        "word_end_index": jnp.zeros((rows, length), jnp.int32),
        "word_casing": jnp.zeros((rows, length), jnp.int32),
        "word_mask": jnp.ones((rows, length), bool),
        "ner_labels": jnp.zeros((rows, length), jnp.int32),
        "entity_start": jnp.zeros((rows, entities), jnp.int32),
        "entity_end": jnp.ones((rows, entities), jnp.int32),
        "entity_type": jnp.ones((rows, entities), jnp.int32),
        "relations": jnp.zeros((rows, entities, entities), jnp.int32),
    }


def init_params(model: JointModel, rng):
    """Fresh parameters of every part of ``model``."""
    return model.init(rng, dummy_batch(), label_source="gold", tables=("gold",))["params"]


def create_params(config, model: JointModel, weights_dir, mesh: Mesh):
    """Parameters with pre-trained encoder weights merged, created directly on their shardings
    (pre-trained weights placed shard by shard; the others from a jitted init whose outputs
    carry the shardings of :func:`parallel.state_shardings`).

    The jitted init returns only the parameters that no pre-trained weight replaces, so XLA
    drops the random initialisation of the encoder: compiling and running it costs what the
    new heads cost. Their values are those of a full init (same key, same per-module streams).
    """
    key = jax.random.key(config.seed)
    abstract = jax.eval_shape(functools.partial(init_params, model), key)
    shardings = parallel.state_shardings(abstract, mesh, config.sharding.fsdp_min_size)
    merged = abstract
    if weights_dir is not None:
        weights = load_weights(weights_dir)
        for prefix in model.encoder_prefixes():
            merged = merge_pretrained(merged, weights, prefix)
    flat, treedef = jax.tree.flatten(merged)
    fresh_at = [i for i, leaf in enumerate(flat) if not isinstance(leaf, np.ndarray)]
    flat_shardings = jax.tree.leaves(shardings)

    def init_fresh(key):
        leaves = jax.tree.leaves(init_params(model, key))
        return [leaves[i] for i in fresh_at]

    fresh = jax.jit(init_fresh, out_shardings=[flat_shardings[i] for i in fresh_at])(key)
    leaves = list(flat)
    for i, value in zip(fresh_at, fresh, strict=True):
        leaves[i] = value
    for i, leaf in enumerate(leaves):
        if isinstance(leaf, np.ndarray):
            leaves[i] = parallel.put_global(leaf, flat_shardings[i])
    return jax.tree.unflatten(treedef, leaves)


def create_state(config, model: JointModel, weights_dir, total_steps: int, mesh: Mesh):
    """TrainState (parameters of :func:`create_params`, AdamW moments) on its shardings."""
    params = create_params(config, model, weights_dir, mesh)
    tx = create_optimizer(config, total_steps, model.encoder_config.num_hidden_layers)

    ema_decay = float(config.optim.get("ema_decay", 0.0))
    if not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"optim.ema_decay {ema_decay} not in [0, 1)")

    def new_state(params):
        if ema_decay:
            ema = jax.tree.map(jnp.copy, params)
            state = EmaTrainState.create(
                apply_fn=model.apply, params=params, tx=tx, ema_params=ema, ema_decay=ema_decay
            )
        else:
            state = TrainState.create(apply_fn=model.apply, params=params, tx=tx)
        # A strict (not weak-typed) int32 step: restored checkpoints have one, and a weak-typed
        # step would make jit compile every shape again after a restore.
        return state.replace(step=jnp.zeros((), jnp.int32))

    abstract_state = jax.eval_shape(new_state, params)
    shardings = parallel.state_shardings(abstract_state, mesh, config.sharding.fsdp_min_size)
    return jax.jit(new_state, out_shardings=shardings)(params)


def jit_train_step(mesh: Mesh, state, options: LossOptions):
    """``train_step`` with ``options`` bound, jitted with explicit shardings on ``mesh`` (the
    state keeps its shardings and is donated; batches are split over every device; metrics
    come back replicated)."""
    state_sharding = jax.tree.map(lambda x: x.sharding, state)
    return jax.jit(
        functools.partial(train_step, options=options),
        in_shardings=(state_sharding, parallel.batch_sharding(mesh), parallel.replicated(mesh)),
        out_shardings=(state_sharding, parallel.replicated(mesh)),
        donate_argnums=0,
    )


def jit_predict_step(mesh: Mesh, params, model: JointModel):
    """``predict_step(params, batch)`` of ``model`` jitted on ``mesh``; predictions come back
    replicated, so every process can read them."""
    param_sharding = jax.tree.map(lambda x: x.sharding, params)
    return jax.jit(
        functools.partial(predict_step, model=model),
        in_shardings=(param_sharding, parallel.batch_sharding(mesh)),
        out_shardings=parallel.replicated(mesh),
    )


def params_mesh(params) -> Mesh:
    """The mesh that ``params``' arrays live on."""
    return jax.tree.leaves(params)[0].sharding.mesh


def host_rows(batcher: Batcher, planned) -> dict:
    """This process's rows of a planned batch (numpy)."""
    rows = batcher.local_rows(jax.process_index(), jax.process_count())
    return batcher.build(planned, rows)


def resolve_sizes(config, examples) -> None:
    """Sets the static sizes left at 0 that the training ``examples`` decide (in place; the
    run saves them in config.json, so inference builds the same shapes): with
    ``data.packing`` the rows per batch and the entity slots per row
    (:func:`jointre_jax.data.packing.resolve`), else the entity slots per example."""
    if config.data.get("packing", False):
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
