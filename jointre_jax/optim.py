"""The optimiser: AdamW with linear warmup and linear decay, global-norm clipping.

The new heads may take their own peak learning rate (``optim.head_learning_rate``) and the
encoder's layers decayed ones (``optim.layer_decay``, Clark et al. 2020): parameters are
labelled by where they sit (:func:`path_keys` under :data:`ENCODERS`, :func:`encoder_depth`)
and each label gets its own AdamW (``optax.multi_transform``).
"""

from __future__ import annotations

import jax
import optax

ENCODERS = ("encoder", "re_encoder")  # top-level parameter groups holding pre-trained BERTs


def path_keys(path) -> tuple[str, ...]:
    """The keys of a parameter's tree path (``tree_map_with_path``), e.g. ("encoder", ...)."""
    return tuple(getattr(k, "key", str(k)) for k in path)


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
    head_peak = float(config.optim.head_learning_rate or peak)
    decay = float(config.optim.layer_decay)  # in (0, 1]: jointre_jax.validation
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
