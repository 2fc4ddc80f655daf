"""The training state: flax's TrainState (or :class:`EmaTrainState`), created on its shardings.

* :func:`create_params`: fresh parameters with the pre-trained encoder weights merged, created
  directly on their shardings (:func:`jointre_jax.parallel.state_shardings`);
* :func:`create_state`: the TrainState of those parameters and the optimiser of
  :mod:`jointre_jax.optim`; :func:`shard_state` builds any TrainState on its shardings (the
  masked-LM adaptation's too);
* ``optim.ema_decay`` > 0: the state also carries an exponential moving average of the
  parameters (:class:`EmaTrainState`), which evaluation, the best checkpoint's scores and
  inference use (:func:`eval_params`).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from flax.training import train_state
from jax.sharding import Mesh

from jointre_jax import optim, parallel
from jointre_jax.model.joint import JointModel
from jointre_jax.model.pretrained import load_weights, merge_pretrained

TrainState = train_state.TrainState
# The EMA decay of step t is min(ema_decay, (1 + t) / (EMA_WARMUP + t)): early steps, whose
# parameters are far from the later ones, are forgotten quickly (TensorFlow's num_updates).
EMA_WARMUP = 10.0


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
    return "ema_params" if config.optim.ema_decay else "params"


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


def shard_state(new_state, params, mesh: Mesh, fsdp_min_size: int):
    """``new_state(params)`` (a function that builds a TrainState from parameters) jitted onto
    the shardings of :func:`jointre_jax.parallel.state_shardings`: the state is created where
    it lives, never whole on one device. Training and the masked-LM adaptation both build
    their state here."""

    def strict(params):
        # A strict (not weak-typed) int32 step: restored checkpoints have one, and a weak-typed
        # step would make jit compile every shape again after a restore.
        return new_state(params).replace(step=jnp.zeros((), jnp.int32))

    shardings = parallel.state_shardings(jax.eval_shape(strict, params), mesh, fsdp_min_size)
    return jax.jit(strict, out_shardings=shardings)(params)


def create_state(config, model: JointModel, weights_dir, total_steps: int, mesh: Mesh):
    """TrainState (parameters of :func:`create_params`, AdamW moments) on its shardings."""
    params = create_params(config, model, weights_dir, mesh)
    tx = optim.create_optimizer(config, total_steps, model.encoder_config.num_hidden_layers)
    ema_decay = float(config.optim.ema_decay)

    def new_state(params):
        if ema_decay:
            ema = jax.tree.map(jnp.copy, params)
            return EmaTrainState.create(
                apply_fn=model.apply, params=params, tx=tx, ema_params=ema, ema_decay=ema_decay
            )
        return TrainState.create(apply_fn=model.apply, params=params, tx=tx)

    return shard_state(new_state, params, mesh, config.sharding.fsdp_min_size)
