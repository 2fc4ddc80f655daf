"""Task-adaptive pretraining of the encoder: masked-LM training on the train split's text.

Gururangan et al. (2020, "Don't stop pretraining") continue an encoder's pre-training
objective on the unlabelled text of the task's own training set before fine-tuning it. Here
the text is the train split's criteria exactly as training reads them (the config's data,
tokenizer and packed rows; no labels, and no dev or test text), and the objective is
whole-word masked language modelling: in each row about ``rate`` of the real wordpieces are
predicted, whole words at a time (a word is the project's word: ``word_index`` to
``word_end_index``), 80% of them replaced by [MASK], 10% by a random wordpiece, 10% kept.

The masked-LM head is BERT's (a dense layer, the activation and a LayerNorm, then the word
embedding table, transposed, and a bias). Encoders shipped without one (sentence-transformer
models such as the MiniLM) get a fresh head; ``head_steps`` steps train it alone, the encoder
frozen, before both train together. The result is a folder that ``config.model.encoder`` can
name: ``flax_model.msgpack`` (FlaxBertModel's layout), the source's ``config.json`` and
tokenizer files, and ``adaptation.json`` (what was done, with the losses).

The loop is the training loop (:class:`jointre_jax.train.Loop`), with the state made by
:func:`jointre_jax.state.shard_state` and the step jitted by :func:`jointre_jax.steps.jit_step`
on the config's ``(data, fsdp)`` mesh; this module keeps only its loss, its data and its
masks. Each process builds its own rows, the plan is deterministic per (seed, epoch) and the
masks per (seed, step, process), orbax checkpoints come every ``checkpoint_every`` steps and
at each epoch's end (with the settings: another schedule never resumes them), so a killed run
resumes at its step and ends with the same encoder; ``metrics.jsonl`` gets a line per epoch:
the mean training loss and the held-out loss, that of the ``config.data.eval_split`` criteria
(read, never trained on) with masks chosen once, the same for every epoch, seed and encoder
(:func:`heldout_batches`).
"""

from __future__ import annotations

import functools
import json
import pathlib
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization
from flax.training import train_state
from jax.experimental import multihost_utils

from jointre_jax import optim, parallel, runtime, steps, validation
from jointre_jax import state as state_lib
from jointre_jax.checkpoints import checkpoint_manager, restore_latest
from jointre_jax.data.corpus import load_split, make_encoder
from jointre_jax.data.packing import PackedBatcher, mean_length, row_length, rows_for
from jointre_jax.errors import UserError
from jointre_jax.model.bert import ACTIVATIONS, BertConfig, BertModel
from jointre_jax.model.pretrained import load_weights, merge_pretrained
from jointre_jax.train import Loop, truncate_log

TOKENIZER_FILES = (
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
)


class MaskedLM(nn.Module):
    """BERT with its masked-LM head, scoring chosen positions only.

    ``batch``: ``input_ids`` int [B, T], ``input_mask`` bool [B, T], optionally the packed
    rows' ``segment_ids`` and ``position_ids`` [B, T], and ``target_index`` int [B, M]: the
    positions to score. Returns logits [B, M, vocab] (float32).
    """

    config: BertConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, batch: dict, deterministic: bool = True):
        c = self.config
        encoder = BertModel(c, self.dtype, name="encoder")
        packing = {k: batch.get(k) for k in ("segment_ids", "position_ids")}
        hidden = encoder(
            batch["input_ids"], batch["input_mask"], deterministic=deterministic, **packing
        )
        chosen = jnp.take_along_axis(hidden, batch["target_index"][..., None], axis=1)
        init = nn.initializers.normal(c.initializer_range)  # BERT's, as for a fresh head there
        chosen = nn.Dense(c.hidden_size, dtype=self.dtype, kernel_init=init, name="transform")(
            chosen
        )
        chosen = ACTIVATIONS[c.hidden_act](chosen)
        chosen = nn.LayerNorm(c.layer_norm_eps, dtype=self.dtype, name="transform_norm")(chosen)
        table = encoder.variables["params"]["embeddings"]["word_embeddings"]["embedding"]
        bias = self.param("output_bias", nn.initializers.zeros, (c.vocab_size,), jnp.float32)
        logits = jnp.einsum("bmd,vd->bmv", chosen, table.astype(self.dtype))
        return logits.astype(jnp.float32) + bias


def choose_targets(
    batch: dict, rng: np.random.Generator, rate: float, targets: int, vocab_size: int, mask_id: int
) -> dict:
    """The masked copy of a host batch, with the positions to predict (whole words).

    In each row, words are taken in a random order while the wordpieces taken stay within
    ``round(rate * real wordpieces)`` (at least one word, if the row has any) and ``targets``;
    each taken wordpiece becomes [MASK] (80%), a random wordpiece (10%) or stays (10%).

    Returns a dict with ``input_ids`` (masked), ``input_mask``, ``segment_ids``,
    ``position_ids``, ``target_index`` and ``target_ids`` int [B, targets] and
    ``target_weight`` float [B, targets] (1 at a real target).
    """
    ids = np.array(batch["input_ids"], copy=True)
    rows = ids.shape[0]
    index = np.zeros((rows, targets), np.int32)
    wanted = np.zeros((rows, targets), np.int32)
    weight = np.zeros((rows, targets), np.float32)
    for r in range(rows):
        words = np.flatnonzero(batch["word_mask"][r])
        budget = min(targets, int(round(rate * int(batch["input_mask"][r].sum()))))
        taken: list[int] = []
        for w in rng.permutation(words):
            first, last = int(batch["word_index"][r, w]), int(batch["word_end_index"][r, w])
            size = last - first + 1
            if len(taken) + size > max(budget, size if not taken else 0):
                continue
            taken.extend(range(first, last + 1))
        taken = taken[:targets]
        n = len(taken)
        index[r, :n], wanted[r, :n], weight[r, :n] = taken, ids[r, taken], 1.0
        draw = rng.random(n)
        swap = rng.integers(0, vocab_size, n)
        ids[r, taken] = np.where(draw < 0.8, mask_id, np.where(draw < 0.9, swap, ids[r, taken]))
    out = {k: batch[k] for k in ("input_mask", "segment_ids", "position_ids")}
    return {
        **out,
        "input_ids": ids,
        "target_index": index,
        "target_ids": wanted,
        "target_weight": weight,
    }


def masked_lm_loss(logits, batch: dict):
    """(sum of the targets' cross-entropies, number of targets): logits [B, M, V]."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["target_ids"])
    return jnp.sum(losses * batch["target_weight"]), jnp.sum(batch["target_weight"])


def masked_lm_sums(params, batch: dict, *, apply_fn) -> dict:
    """The held-out sums of ``batch`` (no dropout): ``loss_sum`` and ``targets``."""
    total, count = masked_lm_loss(apply_fn({"params": params}, batch), batch)
    return {"loss_sum": total, "targets": count}


def heldout_batches(
    config, encoder, length: int, rows: int, rate: float, targets: int, vocab_size: int
) -> list[dict]:
    """This process's rows of the masked held-out batches: the criteria of
    ``config.data.eval_split`` packed in order, ``rows`` a batch, their targets chosen once by
    :func:`choose_targets` from (batch, process) alone, so that every epoch, seed and adapted
    encoder is scored on the same masks. Empty without an eval split."""
    split = config.data.eval_split
    if not split:
        return []
    examples = load_split(config, split, encoder).examples
    if not examples:
        return []
    batcher = PackedBatcher(examples, length, rows, 0, encoder.scheme)
    process, mask_id = jax.process_index(), int(encoder.tokenizer.mask_token_id)
    hosts = batcher.iterate(batcher.eval_plan(), process, jax.process_count())
    return [
        choose_targets(
            host, np.random.default_rng([12, i, process]), rate, targets, vocab_size, mask_id
        )
        for i, host in enumerate(hosts)
    ]


def after_steps(steps: int, inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """``inner`` from update ``steps`` on; before that zero updates and ``inner``'s state left
    untouched, so that its Adam moments and bias correction start when the parameters first
    move (as PyTorch's AdamW starts them at a parameter's first gradient), not with a
    correction for steps that had no gradient: after 200 of them that would scale a steady
    gradient's updates by up to 2.9 (13 steps on), still 1.65 a hundred steps on."""

    def init(params):
        return (jnp.zeros((), jnp.int32), inner.init(params))

    def update(updates, state, params=None):
        count, inner_state = state
        moved, moved_state = inner.update(updates, inner_state, params)
        frozen = count < steps
        updates = jax.tree.map(lambda u: jnp.where(frozen, jnp.zeros_like(u), u), moved)
        inner_state = jax.tree.map(
            lambda old, new: jnp.where(frozen, old, new), inner_state, moved_state
        )
        return updates, (count + 1, inner_state)

    return optax.GradientTransformation(init, update)


def adaptation_optimizer(
    schedule, weight_decay: float, head_steps: int
) -> optax.GradientTransformation:
    """AdamW with the global gradient norm clipped at 1, ``schedule`` over every step, and
    the encoder (the ``encoder`` subtree) frozen for ``head_steps`` steps: its gradients are
    zeroed first (the clip sees the head's alone) and its Adam state starts when it moves
    (:func:`after_steps`); the head trains from the first step."""

    def labels(params):
        return {k: jax.tree.map(lambda _, k=k: k == "encoder", v) for k, v in params.items()}

    adamw = optax.chain(optax.scale_by_adam(), optax.add_decayed_weights(weight_decay))
    return optax.chain(
        optax.partition(  # no gradient into the clip while frozen
            {True: after_steps(head_steps, optax.identity()), False: optax.identity()}, labels
        ),
        optax.clip_by_global_norm(1.0),
        optax.partition({True: after_steps(head_steps, adamw), False: adamw}, labels),
        optax.scale_by_learning_rate(schedule),
    )


def adaptation_step(state: train_state.TrainState, batch: dict, rng):
    """One optimiser step on the mean masked-LM loss of ``batch`` (the optimiser of
    :func:`adaptation_optimizer` keeps the encoder frozen at first)."""
    dropout = jax.random.fold_in(rng, state.step)

    def loss_fn(params):
        logits = state.apply_fn(
            {"params": params}, batch, deterministic=False, rngs={"dropout": dropout}
        )
        total, count = masked_lm_loss(logits, batch)
        return total / jnp.maximum(count, 1.0), (total, count)

    (loss, (total, count)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return state.apply_gradients(grads=grads), {"loss_sum": total, "targets": count, "loss": loss}


def adapt_encoder(
    config,
    out: pathlib.Path,
    *,
    epochs: int,
    learning_rate: float,
    batch_size: int = 32,
    rate: float = 0.15,
    head_steps: int = 200,
    warmup: float = 0.06,
    weight_decay: float = 0.01,
    checkpoint_every: int = 500,
) -> dict:
    """Adapts ``config.model.encoder`` to the text of ``config.data.train_split`` (see the
    module docstring) and writes the adapted encoder's folder to ``out``; returns the
    summary written to ``out/adaptation.json``. ``batch_size``: criteria per step (about)."""
    validation.validate(config)
    out = pathlib.Path(out)
    encoder = make_encoder(config)
    data = load_split(config, config.data.train_split, encoder)
    bert, weights_dir = runtime.encoder_config(config)
    if weights_dir is None:
        raise UserError(
            f"adapting {config.model.encoder} needs its pre-trained weights: "
            "config.model.pretrained is False"
        )
    length = row_length(config)
    devices = int(config.num_devices) or jax.device_count()
    rows = rows_for(batch_size, mean_length(data.examples), length, devices)
    mesh = parallel.make_mesh(config.num_devices, config.sharding.fsdp, (rows,))
    batcher = PackedBatcher(data.examples, length, rows, int(config.seed), encoder.scheme)
    steps_per_epoch = batcher.steps_per_epoch()
    total_steps = steps_per_epoch * epochs
    targets = max(1, int(np.ceil(rate * length)))
    tokenizer = encoder.tokenizer
    if tokenizer.mask_token_id is None:
        raise UserError(f"the tokenizer of {config.model.encoder} has no mask token to train with")

    model = MaskedLM(bert)
    dummy = {
        "input_ids": np.zeros((1, 8), np.int32),
        "input_mask": np.ones((1, 8), bool),
        "target_index": np.zeros((1, 2), np.int32),
    }
    params = jax.jit(model.init)(jax.random.key(int(config.seed)), dummy)["params"]
    weights = load_weights(weights_dir)
    params = merge_pretrained(params, weights, prefix=("encoder",))
    head = pretrained_head(weights_dir)
    if head is not None:
        params = {**params, **head}
    schedule = optim.warmup_linear_decay(learning_rate, total_steps, warmup)
    tx = adaptation_optimizer(schedule, weight_decay, head_steps)

    def new_state(params):
        return train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)

    state = state_lib.shard_state(new_state, params, mesh, config.sharding.fsdp_min_size)
    shardings = jax.tree.map(lambda x: x.sharding, state)
    batch_sharding = parallel.batch_sharding(mesh)
    step_fn = steps.jit_step(adaptation_step, mesh, state)
    process = jax.process_index()
    is_main = process == 0
    heldout = heldout_batches(config, encoder, length, rows, rate, targets, bert.vocab_size)
    sums_fn = jax.jit(
        functools.partial(masked_lm_sums, apply_fn=model.apply),
        in_shardings=(shardings.params, batch_sharding),
        out_shardings=parallel.replicated(mesh),
    )

    def heldout_loss(params) -> float | None:
        total = np.zeros(2)
        for batch in heldout:
            values = jax.device_get(sums_fn(params, parallel.global_batch(batch, batch_sharding)))
            total += (float(values["loss_sum"]), float(values["targets"]))
        return total[0] / total[1] if total[1] else None

    settings = {
        "source": str(config.model.encoder),
        "corpus": str(config.data.dir),
        "epochs": epochs,
        "learning_rate": learning_rate,
        "rows_per_step": rows,
        "mask_rate": rate,
        "head_steps": head_steps,
        "seed": int(config.seed),
    }
    resumed, carried = restore_latest(out / "checkpoints", state), None
    if resumed is not None:
        state, meta = resumed
        if meta.get("settings") != settings:  # another schedule: not a resumption
            raise UserError(
                f"{out} holds an adaptation with other settings ({meta.get('settings')}); "
                f"give another --out, or the same settings ({settings})"
            )
        carried = meta.get("epoch_sums")  # of the epoch the step falls in
        if isinstance(carried, list):  # saved before the shared loop: [loss_sum, targets]
            carried = dict(zip(("loss_sum", "targets"), carried, strict=True))
    manager = checkpoint_manager(out / "checkpoints", keep=2)
    log_path = out / "metrics.jsonl"
    if is_main:
        truncate_log(log_path, int(state.step) // steps_per_epoch)

    def masked(host, step):  # this process's rows, its words to predict chosen
        masks = np.random.default_rng([int(config.seed), 11, step, process])
        return choose_targets(
            host, masks, rate, targets, bert.vocab_size, int(tokenizer.mask_token_id)
        )

    def end_epoch(epoch, step, state, sums):
        loss = sums["loss_sum"] / max(sums["targets"], 1)
        fields = {"masked_lm_loss": loss, "heldout_masked_lm_loss": heldout_loss(state.params)}
        return fields, {"settings": settings}

    loop = Loop(
        step_fn, batcher, epochs, jax.random.key(int(config.seed) + 1), ("loss_sum", "targets"),
        manager, {"settings": settings}, checkpoint_every, log_path, end_epoch, prepare=masked,
        desc="adapt",
    )  # fmt: skip
    state = loop.run(state, carried)
    step = int(state.step)
    summary = {
        **settings,
        "split": str(config.data.train_split),
        "criteria": len(data.examples),
        "steps_per_epoch": steps_per_epoch,
        "steps": step,
        "criteria_per_step": batch_size,
        "fresh_head": head is None,
        "devices": mesh.size,
        "heldout_split": str(config.data.eval_split) if heldout else None,
    }
    lines = log_path.read_text().splitlines() if is_main else []  # every epoch, resumed too
    records = [json.loads(x) for x in lines if x.strip()]
    summary["epoch_losses"] = [x["masked_lm_loss"] for x in records]
    summary["heldout_losses"] = [x.get("heldout_masked_lm_loss") for x in records]
    encoder_params = multihost_utils.process_allgather(state.params["encoder"], tiled=True)
    if is_main:
        export_encoder(encoder_params, weights_dir, out, summary)
    return summary


def pretrained_head(directory: pathlib.Path) -> dict | None:
    """BERT's masked-LM head (``cls.predictions``) of ``directory/model.safetensors`` in
    :class:`MaskedLM`'s layout, or None when there is none (a sentence-transformer model, or
    weights in another file): the head then starts fresh. Only the head's tensors are read
    (the encoder's came through ``load_weights``)."""
    path = pathlib.Path(directory) / "model.safetensors"
    if not path.exists():
        return None
    from safetensors import safe_open

    p = "cls.predictions."
    with safe_open(str(path), framework="numpy") as f:
        names = f.keys()  # a safe_open handle is not iterable
        raw = {k: f.get_tensor(k) for k in names if k.startswith(p)}
    if p + "transform.dense.weight" not in raw:
        return None
    norm = {k: raw.get(f"{p}transform.LayerNorm.{k}") for k in ("weight", "gamma", "bias", "beta")}
    return {
        "transform": {
            "kernel": raw[p + "transform.dense.weight"].T,
            "bias": raw[p + "transform.dense.bias"],
        },
        "transform_norm": {
            "scale": norm["weight"] if norm["weight"] is not None else norm["gamma"],
            "bias": norm["bias"] if norm["bias"] is not None else norm["beta"],
        },
        "output_bias": raw[p + "bias"],
    }


def export_encoder(
    encoder_params: dict, source: pathlib.Path, out: pathlib.Path, summary: dict
) -> None:
    """Writes an encoder folder that ``config.model.encoder`` can name: the parameters (whole
    arrays on the host) as ``flax_model.msgpack`` (FlaxBertModel's layout), ``source``'s
    config.json and tokenizer files, and ``summary`` as ``adaptation.json``."""
    out.mkdir(parents=True, exist_ok=True)
    tree = jax.tree.map(np.asarray, jax.device_get(encoder_params))
    (out / "flax_model.msgpack").write_bytes(serialization.msgpack_serialize(tree))
    for name in ("config.json", *TOKENIZER_FILES):
        if (pathlib.Path(source) / name).exists():
            shutil.copy(pathlib.Path(source) / name, out / name)
    (out / "adaptation.json").write_text(json.dumps(summary, indent=1))
