"""Training and evaluation loop: ``train_and_evaluate(config, workdir)``.

* ``train_step(state, batch, rng)`` is pure and module-level, jitted once per length bucket with
  explicit shardings (batch split over every device; state replicated, or FSDP-sharded with
  ``config.sharding.fsdp`` > 1, see :mod:`jointre_jax.parallel`) and ``donate_argnums=0``;
  dropout keys are ``fold_in(rng, state.step)``.
* AdamW with linear warmup and linear decay, global-norm gradient clipping.
* Every epoch: dev evaluation, the best parameters kept by ``config.best_metric``, a line in
  ``workdir/metrics.jsonl``. At the end: test scores of the best parameters in
  ``workdir/metrics.json``.
* orbax checkpoints in ``workdir/checkpoints`` (latest, with the best-so-far bookkeeping) and
  ``workdir/best``; a killed run resumes from its workdir at the exact step and, since the data
  plan and dropout depend only on (seed, epoch, step), ends with the same result.
"""

from __future__ import annotations

import json
import logging
import pathlib
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax.training import train_state
from jax.sharding import Mesh
from tqdm.auto import tqdm

from jointre_jax import parallel
from jointre_jax.data.batching import Batcher
from jointre_jax.data.corpus import load_split, make_encoder
from jointre_jax.evaluation import Scorer
from jointre_jax.model.bert import BertConfig
from jointre_jax.model.joint import JointModel
from jointre_jax.model.losses import loss_terms, total_loss
from jointre_jax.model.pretrained import load_weights, merge_pretrained, resolve_encoder

log = logging.getLogger(__name__)
TERMS = ("ner_loss_sum", "ner_tokens", "re_loss_sum", "re_pairs")


class TrainState(train_state.TrainState):
    """Params, optimiser state and step, plus the static options of the loss."""

    negative_sampling: str = flax.struct.field(pytree_node=False, default="gs-based")
    anchor: str = flax.struct.field(pytree_node=False, default="first")
    label_source: str = flax.struct.field(pytree_node=False, default="gold")
    ner_weight: float = flax.struct.field(pytree_node=False, default=1.0)
    re_weight: float = flax.struct.field(pytree_node=False, default=1.0)


def train_step(state: TrainState, batch: dict, rng: jax.Array):
    """One optimiser step.

    Args:
      state: the TrainState (donated).
      batch: arrays of ``data.batching`` for the global batch [B, L] (rows split over every device).
      rng: the run's base key; the step's dropout key is ``fold_in(rng, state.step)``.
    Returns:
      (new state, metrics: dict of scalar sums ``ner_loss_sum``, ``ner_tokens``,
      ``re_loss_sum``, ``re_pairs`` and the scalar ``loss``).
    """
    dropout_rng = jax.random.fold_in(rng, state.step)

    def loss_fn(params):
        outputs = state.apply_fn(
            {"params": params},
            batch,
            deterministic=False,
            label_source=state.label_source,
            rngs={"dropout": dropout_rng},
        )
        terms = loss_terms(outputs, batch, state.negative_sampling, state.anchor)
        return total_loss(terms, state.ner_weight, state.re_weight), terms

    (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return state.apply_gradients(grads=grads), {**terms, "loss": loss}


def predict_step(state: TrainState, batch: dict):
    """Predictions of a batch: ``ner_tags`` int32 [B, L] (when the model has NER),
    ``re_labels`` int32 [B, L, L] and ``re_probs`` float32 [B, L, L] (when it has RE)."""
    outputs = state.apply_fn({"params": state.params}, batch, label_source="predicted")
    out = {}
    if "ner_logits" in outputs:
        out["ner_tags"] = jnp.argmax(outputs["ner_logits"], -1).astype(jnp.int32)
    if "re_logits" in outputs:
        probs = jax.nn.softmax(outputs["re_logits"].astype(jnp.float32), -1)
        out["re_labels"] = jnp.argmax(probs, -1).astype(jnp.int32)
        out["re_probs"] = jnp.max(probs, -1)
    return out


# ------------------------------------------------------------------------- construction
def make_mesh(config) -> Mesh:
    """The ``(data, fsdp)`` device mesh of ``config`` (see :mod:`jointre_jax.parallel`)."""
    return parallel.make_mesh(
        config.num_devices,
        config.sharding.fsdp,
        (config.data.batch_size, config.data.eval_batch_size),
    )


def encoder_config(config) -> tuple[BertConfig, pathlib.Path | None]:
    """(BertConfig, weights directory or None) of ``config.model``.

    ``config.model.pretrained=False`` builds a randomly initialised encoder from the encoder
    directory's config.json (e.g. the shipped demo encoder).
    """
    directory = resolve_encoder(str(config.model.encoder))
    bert = BertConfig.from_json(directory / "config.json")
    return bert, (directory if config.model.pretrained else None)


def create_model(config, schema, bert: BertConfig) -> JointModel:
    """The JointModel that ``config.model`` describes."""
    if config.model.negative_sampling == "incremental" and config.model.method != "joint":
        raise ValueError("negative_sampling='incremental' needs method='joint'")
    return JointModel(
        encoder_config=bert,
        num_bio_tags=schema.num_bio_tags,
        num_relations=schema.num_relation_labels,
        method=config.model.method,
        re_option=config.model.re_option,
        label_embedding_dim=config.model.ner_label_embedding_dim,
        pair_hidden_dim=config.model.pair_hidden_dim,
        dropout_rate=config.model.dropout_rate,
        dtype=jnp.dtype(config.model.compute_dtype),
    )


def create_optimizer(config, total_steps: int) -> optax.GradientTransformation:
    """AdamW, linear warmup over ``warmup_fraction`` of the steps, then linear decay to 0."""
    warmup = int(config.optim.warmup_fraction * total_steps)
    schedule = optax.join_schedules(
        [
            optax.linear_schedule(0.0, config.optim.learning_rate, max(warmup, 1)),
            optax.linear_schedule(config.optim.learning_rate, 0.0, max(total_steps - warmup, 1)),
        ],
        [max(warmup, 1)],
    )
    return optax.chain(
        optax.clip_by_global_norm(config.optim.grad_clip_norm),
        optax.adamw(schedule, weight_decay=config.optim.weight_decay),
    )


def dummy_batch(length: int = 8, rows: int = 1) -> dict:
    """A batch of zeros of the given shape, for initialisation."""
    return {
        "input_ids": jnp.zeros((rows, length), jnp.int32),
        "input_mask": jnp.ones((rows, length), bool),
        "ner_labels": jnp.zeros((rows, length), jnp.int32),
    }


def create_state(config, model: JointModel, weights_dir, total_steps: int, mesh: Mesh):
    """TrainState with pre-trained encoder weights merged, created directly on its shardings.

    Fresh parameters and the optimiser state are initialised by a jitted function whose
    outputs carry the shardings of :func:`parallel.state_shardings`, so no device ever holds
    an array it does not own; pre-trained weights are placed shard by shard.
    """
    tx = create_optimizer(config, total_steps)
    key = jax.random.key(config.seed)

    def init_params(rng):
        return model.init(rng, dummy_batch())["params"]

    def new_state(params):
        state = TrainState.create(
            apply_fn=model.apply,
            params=params,
            tx=tx,
            negative_sampling=config.model.negative_sampling,
            anchor=config.data.anchor,
            label_source=config.model.train_label_source,
            ner_weight=config.model.ner_loss_weight,
            re_weight=config.model.re_loss_weight,
        )
        # A strict (not weak-typed) int32 step: restored checkpoints have one, and a weak-typed
        # step would make jit compile every shape again after a restore.
        return state.replace(step=jnp.zeros((), jnp.int32))

    abstract_params = jax.eval_shape(init_params, key)
    abstract_state = jax.eval_shape(new_state, abstract_params)
    shardings = parallel.state_shardings(abstract_state, mesh, config.sharding.fsdp_min_size)
    params = jax.jit(init_params, out_shardings=shardings.params)(key)
    if weights_dir is not None:
        weights = load_weights(weights_dir)
        merged = abstract_params
        for prefix in model.encoder_prefixes():
            merged = merge_pretrained(merged, weights, prefix)
        params = jax.tree.map(
            lambda new, fresh, sharding: (
                parallel.put_global(new, sharding) if isinstance(new, np.ndarray) else fresh
            ),
            merged,
            params,
            shardings.params,
        )
    return jax.jit(new_state, out_shardings=shardings)(params)


def jit_steps(mesh: Mesh, state):
    """(train_step, predict_step) jitted with explicit shardings on ``mesh``.

    The state keeps the shardings it was created with (replicated, or FSDP-split); batches are
    split over every device; metrics and predictions come back replicated, so every process
    can read them.
    """
    replicated = parallel.replicated(mesh)
    batch_sharding = parallel.batch_sharding(mesh)
    state_sharding = jax.tree.map(lambda x: x.sharding, state)
    train = jax.jit(
        train_step,
        in_shardings=(state_sharding, batch_sharding, replicated),
        out_shardings=(state_sharding, replicated),
        donate_argnums=0,
    )
    predict = jax.jit(
        predict_step, in_shardings=(state_sharding, batch_sharding), out_shardings=replicated
    )
    return train, predict


def state_mesh(state) -> Mesh:
    """The mesh that ``state``'s arrays live on."""
    return jax.tree.leaves(state.params)[0].sharding.mesh


def host_rows(batcher: Batcher, planned) -> dict:
    """This process's rows of a planned batch (numpy)."""
    rows = batcher.local_rows(jax.process_index(), jax.process_count())
    return batcher.build(planned, rows)


# ---------------------------------------------------------------------------- evaluation
def eval_batcher(config, examples) -> Batcher:
    """Batcher of ``examples`` for evaluation and prediction (``data.eval_batch_size``)."""
    data = config.data
    return Batcher(examples, data.bucket_boundaries, data.eval_batch_size, data.anchor)


def predictions(predict, state, batcher: Batcher, desc: str | None = "eval"):
    """Predictions for every example of ``batcher``, in its evaluation plan's order.

    Yields (example index, tags int [L] or None without NER, (re_labels [L, L], re_probs
    [L, L]) or None without RE); filler rows are skipped. ``desc`` None hides the progress bar.
    """
    sharding = parallel.batch_sharding(state_mesh(state))
    for planned in tqdm(batcher.eval_plan(), desc=desc, leave=False, disable=desc is None):
        batch = parallel.global_batch(host_rows(batcher, planned), sharding)
        out = jax.device_get(predict(state, batch))
        for row, index in enumerate(planned.indices):
            if index < 0:
                continue
            tags = out["ner_tags"][row] if "ner_tags" in out else None
            rels = (out["re_labels"][row], out["re_probs"][row]) if "re_labels" in out else None
            yield int(index), tags, rels


def evaluate(predict, state, batcher: Batcher, schema, anchor: str, desc: str = "eval") -> dict:
    """Scores of ``state`` on every example of ``batcher`` (see evaluation.Scorer)."""
    scorer = Scorer(schema.entity_types, schema.relation_labels, anchor)
    for index, tags, rels in predictions(predict, state, batcher, desc):
        scorer.add(index, batcher.examples[index], tags, rels)
    return scorer.results()


def _dev_f1s(results: dict) -> dict:
    """The per-epoch log's F1 fields of dev ``results``."""
    return {f"dev_{k}_f1": results[k]["f1"] for k in ("ner", "re_gs", "re_e2e")}


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


# ------------------------------------------------------------------------- checkpoints
def checkpoint_manager(directory: pathlib.Path, keep: int = 1) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    return ocp.CheckpointManager(directory.absolute(), options=options)


def save(manager, step: int, state, meta: dict) -> None:
    manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
    )
    manager.wait_until_finished()


def restore(manager, state) -> tuple[TrainState, dict]:
    """The latest (state, meta) of ``manager``, restored onto ``state``'s shardings."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    restored = manager.restore(
        manager.latest_step(),
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
        ),
    )
    return restored["state"], restored["meta"]


# ---------------------------------------------------------------------------- main loop
def train_and_evaluate(config, workdir: str) -> dict:
    """Trains the model of ``config`` in ``workdir``; returns the test scores (metrics.json)."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    is_main = jax.process_index() == 0
    if is_main:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=1))
    encoder = make_encoder(config)
    train_data = load_split(config, config.data.train_split, encoder)
    dev_data = load_split(config, config.data.eval_split, encoder)
    schema = train_data.schema
    data = config.data
    batcher = Batcher(
        train_data.examples, data.bucket_boundaries, data.batch_size, data.anchor, config.seed
    )
    dev_batcher = eval_batcher(config, dev_data.examples)
    steps_per_epoch = batcher.steps_per_epoch()
    total_steps = steps_per_epoch * config.num_epochs

    bert, weights_dir = encoder_config(config)
    model = create_model(config, schema, bert)
    mesh = make_mesh(config)
    log.info("%s", parallel.describe(mesh))
    state = create_state(config, model, weights_dir, total_steps, mesh)
    train, predict = jit_steps(mesh, state)
    sharding = parallel.batch_sharding(mesh)
    latest = checkpoint_manager(workdir / "checkpoints")
    best = checkpoint_manager(workdir / "best")
    meta = {"best_metric": None, "best_epoch": None}
    if latest.latest_step() is not None:
        state, meta = restore(latest, state)
        log.info("resumed from step %d of %d", int(state.step), total_steps)
    rng = jax.random.key(config.seed + 1)
    step = int(state.step)
    log_path = workdir / "metrics.jsonl"
    start_epoch = step // steps_per_epoch
    writer = _tensorboard(workdir, is_main)
    if is_main:  # keep the lines of the epochs the restored state has completed
        _truncate_log(log_path, start_epoch)
    if step == 0 and config.eval_before_training:  # the baseline the scores rise from
        initial = evaluate(predict, state, dev_batcher, schema, data.anchor, "dev (initial)")
        _append_log(log_path, is_main, {"epoch": 0, "step": 0, **_dev_f1s(initial)})
    for epoch in range(start_epoch, config.num_epochs):
        plan = batcher.epoch_plan(epoch)
        offset = step - epoch * steps_per_epoch
        sums = {k: 0.0 for k in TERMS}
        pending = None  # metrics are read one step late, so the host never waits on the device
        started = time.time()
        bar = tqdm(
            total=steps_per_epoch, initial=offset, desc=f"epoch {epoch + 1}/{config.num_epochs}"
        )
        for host_batch in batcher.iterate(plan, jax.process_index(), jax.process_count(), offset):
            state, metrics = train(state, parallel.global_batch(host_batch, sharding), rng)
            if pending is not None:
                _accumulate(sums, pending, bar)
            pending = metrics
            step += 1
            bar.update(1)
            if config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0:
                save(latest, step, state, meta)
        if pending is not None:
            _accumulate(sums, pending, bar)
        bar.close()
        dev = evaluate(predict, state, dev_batcher, schema, data.anchor, "dev")
        value = metric_value(dev, best_metric_name(config))
        if meta["best_metric"] is None or value > meta["best_metric"]:
            meta = {"best_metric": value, "best_epoch": epoch + 1}
            save(best, step, state, meta)
        record = {
            "epoch": epoch + 1,
            "step": step,
            "seconds": round(time.time() - started, 1),
            "train_ner_loss": sums["ner_loss_sum"] / max(sums["ner_tokens"], 1),
            "train_re_loss": sums["re_loss_sum"] / max(sums["re_pairs"], 1),
            **_dev_f1s(dev),
            "best_epoch": meta["best_epoch"],
        }
        log.info("%s", record)
        _append_log(log_path, is_main, record)
        if writer is not None:
            for key, value in record.items():
                if isinstance(value, float):
                    writer.add_scalar(key, value, step)
            writer.flush()
        save(latest, step, state, meta)
    test_data = load_split(config, config.data.test_split, encoder)
    test_batcher = eval_batcher(config, test_data.examples)
    if best.latest_step() is not None:
        state, meta = restore(best, state)
    results = evaluate(predict, state, test_batcher, schema, data.anchor, "test")
    results["best_epoch"] = meta["best_epoch"]
    results["dev_" + best_metric_name(config)] = meta["best_metric"]
    if is_main:
        (workdir / "metrics.json").write_text(json.dumps(results, indent=1))
    return results


def _tensorboard(workdir: pathlib.Path, is_main: bool):
    """A tensorboardX SummaryWriter on ``workdir/tensorboard`` if installed (process 0)."""
    if not is_main:
        return None
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(workdir / "tensorboard"))


def _truncate_log(path: pathlib.Path, completed_epochs: int) -> None:
    """Drops lines of epochs after ``completed_epochs`` (written before a kill)."""
    if path.exists():
        lines = [x for x in path.read_text().splitlines() if x.strip()]
        kept = [x for x in lines if json.loads(x)["epoch"] <= completed_epochs]
        path.write_text("".join(x + "\n" for x in kept) if completed_epochs else "")


def _append_log(path: pathlib.Path, is_main: bool, record: dict) -> None:
    if is_main:
        with path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def _accumulate(sums: dict, metrics, bar) -> None:
    values = jax.device_get(metrics)
    for key in TERMS:
        sums[key] += float(values[key])
    bar.set_postfix(loss=f"{float(values['loss']):.3f}", refresh=False)
