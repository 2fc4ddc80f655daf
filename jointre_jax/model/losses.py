"""Losses and the RE pair masks, vectorised for jit; everything returns sums and denominators.

NER (by label scheme, :mod:`jointre_jax.labels`):

* ``bio``: cross-entropy of each real word's tag;
* ``span``: cross-entropy of every candidate span (at most ``max_span_width`` words) against
  its gold class (1 + type, or 0 = no entity); with ``boundary_smoothing`` eps > 0, against
  soft targets instead (Zhu and Li, ACL 2022): each gold span keeps 1 - eps of its class and
  gives eps, in equal shares, to the candidate spans one boundary word away (start or end moved
  by one word) that are not gold entities themselves; with ``span_negative_keep`` p < 1, each
  step counts each negative candidate (its target "no entity" alone) with probability p and
  drops the others from the sum and the count (span negative sampling, Li et al., ICLR 2021:
  an entity the annotators left out is then rarely taught as "no entity"); with
  ``distillation_weight`` w > 0, each counted span's target is ``(1 - w) * gold + w *
  teacher`` (the batch's ``ner_soft_targets``, :mod:`jointre_jax.distillation`).

RE is scored between the entities of a table (:class:`~jointre_jax.model.joint.JointModel`),
negatives by ``negative_sampling``:

* ``gs-based``: every ordered pair of distinct gold entities; the target is the gold relation
  label or "none";
* ``incremental``: the gold relation pairs, plus every ordered pair of distinct entities the
  decoder predicts as a negative: both gold (span and type) and unrelated, or either not gold.
  A pair that is a gold relation stays a positive. The decoded entities are those inference
  would output (BIO: tags read as seqeval does; span: best non-crossing spans), from the NER
  logits without gradient.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from jointre_jax.labels import BioScheme, EntityScheme, gold_table
from jointre_jax.model.joint import gather

NEGATIVE_SAMPLING = ("gs-based", "incremental")
MAX_BOUNDARY_SMOOTHING = 0.25
# The four spans one boundary word away: (start shift, end shift).
_NEIGHBOURS = ((1, 0), (-1, 0), (0, 1), (0, -1))


@dataclasses.dataclass(frozen=True)
class LossOptions:
    """The static options of the training loss (bound to ``train_step`` with partial), named
    as in ``config.model`` (``configs/default.py`` says what each does); :meth:`from_config`
    reads them all. The defaults are the config's, for losses built by hand (tests)."""

    scheme: EntityScheme = dataclasses.field(default_factory=lambda: BioScheme(1))
    negative_sampling: str = "gs-based"
    train_label_source: str = "gold"
    ner_loss_weight: float = 1.0
    re_loss_weight: float = 1.0
    boundary_smoothing: float = 0.0
    span_negative_keep: float = 1.0
    # > 0: adversarial training on the word embeddings (steps.train_step), this the norm of
    # each encoder's perturbation.
    adversarial_epsilon: float = 0.0
    # > 0 (with adversarial_epsilon): the adversarial pass's loss also holds this weight times
    # :func:`ner_consistency` (its NER distributions against the clean pass's).
    adversarial_consistency: float = 0.0
    # > 0 (span decoder): the weight of the teacher's span distributions in each span's target
    # (the batch's ner_soft_targets, jointre_jax.distillation).
    distillation_weight: float = 0.0

    def __post_init__(self):
        if self.negative_sampling not in NEGATIVE_SAMPLING:
            raise ValueError(
                f"negative_sampling {self.negative_sampling!r} not in {NEGATIVE_SAMPLING}"
            )
        if not 0.0 <= self.boundary_smoothing <= MAX_BOUNDARY_SMOOTHING:
            raise ValueError(
                f"boundary_smoothing {self.boundary_smoothing} not in "
                f"[0, {MAX_BOUNDARY_SMOOTHING}] (a span has four neighbours: more could give "
                "a neighbour more than its whole target)"
            )
        if self.adversarial_epsilon < 0:
            raise ValueError(f"adversarial_epsilon {self.adversarial_epsilon} is negative")
        if self.adversarial_consistency < 0 or (
            self.adversarial_consistency and not self.adversarial_epsilon
        ):
            raise ValueError(
                f"adversarial_consistency {self.adversarial_consistency} must be >= 0, and > 0 "
                "only with adversarial_epsilon > 0 (it compares the adversarial pass with the "
                "clean one)"
            )
        if self.boundary_smoothing and not self.scheme.scores_spans:
            raise ValueError("boundary_smoothing needs the span decoder (model.ner_decoder)")
        if not 0.0 < self.span_negative_keep <= 1.0:
            raise ValueError(f"span_negative_keep {self.span_negative_keep} not in (0, 1]")
        if self.span_negative_keep < 1.0 and not self.scheme.scores_spans:
            raise ValueError("span_negative_keep needs the span decoder (model.ner_decoder)")
        if not 0.0 <= self.distillation_weight <= 1.0:
            raise ValueError(f"distillation_weight {self.distillation_weight} not in [0, 1]")
        if self.distillation_weight and not self.scheme.scores_spans:
            raise ValueError("distillation_weight needs the span decoder (model.ner_decoder)")

    @classmethod
    def from_config(cls, model, scheme: EntityScheme) -> LossOptions:
        """The loss options of ``config.model`` (every field but the scheme read from it)."""
        fields = [f for f in dataclasses.fields(cls) if f.name != "scheme"]
        return cls(scheme, **{f.name: type(f.default)(model[f.name]) for f in fields})

    @property
    def re_table(self) -> str:
        """The entity table the RE loss is computed on."""
        return "gold" if self.negative_sampling == "gs-based" else "incremental"


def masked_cross_entropy(logits, labels, mask):
    """(sum of cross-entropy over ``mask``, number of masked-in positions), both float32.
    ``labels``: int class ids shaped like ``logits`` without classes, or float distributions
    shaped like ``logits``."""
    logits = logits.astype(jnp.float32)
    if jnp.issubdtype(labels.dtype, jnp.floating):
        losses = optax.softmax_cross_entropy(logits, labels)
    else:
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    mask = mask.astype(jnp.float32)
    return jnp.sum(losses * mask), jnp.sum(mask)


def _shifted(x, di: int, dj: int):
    """y [B, L, L, ...] with y[b, i, j] = x[b, i - di, j - dj] (0 outside)."""
    length = x.shape[1]
    pad = [(0, 0), (max(di, 0), max(-di, 0)), (max(dj, 0), max(-dj, 0))]
    pad += [(0, 0)] * (x.ndim - 3)
    padded = jnp.pad(x, pad)
    i0, j0 = max(-di, 0), max(-dj, 0)
    return padded[:, i0 : i0 + length, j0 : j0 + length]


def smoothed_span_targets(targets, mask, num_classes: int, epsilon: float):
    """Soft span targets of boundary smoothing (see the module docstring).

    Args:
      targets: int32 [B, L, L] gold span classes (0 = no entity); mask: bool [B, L, L]
        candidate spans (:meth:`SpanScheme.span_mask`).
    Returns:
      float32 [B, L, L, C], each candidate's distribution: a gold span keeps 1 - eps of its
      class (all of it when no neighbour is a candidate); a neighbour of gold spans holds the
      sum of their shares in their classes; class 0 holds the rest everywhere.
    """
    gold = (targets > 0) & mask
    onehot = jax.nn.one_hot(targets, num_classes, dtype=jnp.float32)
    receives = (mask & ~gold).astype(jnp.float32)  # candidates that are no gold entity
    neighbours = sum(_shifted(receives, -di, -dj) for di, dj in _NEIGHBOURS)  # at each span
    share = jnp.where(gold & (neighbours > 0), epsilon / jnp.maximum(neighbours, 1.0), 0.0)
    given = onehot * share[..., None]  # [B, L, L, C] what each gold span gives a neighbour
    received = sum(_shifted(given, di, dj) for di, dj in _NEIGHBOURS) * receives[..., None]
    kept = onehot * (1.0 - jnp.where(share > 0, epsilon, 0.0))[..., None]
    soft = jnp.where(gold[..., None], kept, received)
    return soft.at[..., 0].set(1.0 - jnp.sum(soft[..., 1:], axis=-1))


def ner_targets(scheme: EntityScheme, batch):
    """(targets int32, mask bool) of the NER loss, shaped like ``ner_logits`` without classes."""
    rows = batch["row_mask"]
    if scheme.scores_spans:
        length = batch["word_mask"].shape[1]
        mask = scheme.span_mask(batch["word_mask"], batch.get("word_segment"))
        mask &= rows[:, None, None]
        return scheme.span_targets(gold_table(batch), length), mask
    return batch["ner_labels"], batch["word_mask"] & rows[:, None]


def relation_pairs(
    table, relations, row_mask, negative_sampling: str = "gs-based", word_segment=None
):
    """Pairs of a table's entities the RE loss is computed on, and their targets.

    Args:
      table: the model's ``table_gold`` (gs-based) or ``table_incremental`` [B, N'].
      relations: int32 [B, N, N] gold relation labels of the gold table (N <= N').
      row_mask: bool [B].
      word_segment: int [B, L] or None; packed rows pair only entities of one segment.
    Returns:
      (mask bool [B, N', N'], targets int32 [B, N', N']).
    """
    if negative_sampling not in NEGATIVE_SAMPLING:
        raise ValueError(f"negative_sampling {negative_sampling!r} not in {NEGATIVE_SAMPLING}")
    size, gold_size = table["mask"].shape[1], relations.shape[1]
    relations = jnp.pad(relations, ((0, 0), (0, size - gold_size), (0, size - gold_size)))
    distinct = ~jnp.eye(size, dtype=bool)[None]
    if word_segment is not None:  # the segment of each entity's first word
        segment = gather(word_segment, table["start"])
        distinct = distinct & (segment[:, :, None] == segment[:, None, :])
    rows = row_mask[:, None, None]
    if negative_sampling == "gs-based":
        real = table["mask"]
        mask = real[:, :, None] & real[:, None, :] & distinct & rows
        return mask, jnp.where(mask, relations, 0)
    found = table["predicted"] & table["mask"]
    positives = relations > 0
    mask = (positives | (found[:, :, None] & found[:, None, :] & distinct)) & rows
    return mask, jnp.where(mask & positives, relations, 0)


def sampled_negatives(targets, mask, keep: float, rng):
    """``mask`` [B, L, L] without the negative candidates not drawn this step: a candidate
    whose target (int class, or soft distribution [..., C]) is "no entity" alone stays with
    probability ``keep``; every other candidate stays."""
    if jnp.issubdtype(targets.dtype, jnp.floating):
        negative = targets[..., 0] >= 1.0
    else:
        negative = targets == 0
    drawn = jax.random.bernoulli(rng, keep, mask.shape)
    return mask & (drawn | ~negative)


def distilled_targets(targets, teacher, weight: float):
    """float32 [B, L, L, C]: ``(1 - weight) * targets + weight * teacher``; ``targets``: int
    classes [B, L, L] (read as one-hot) or distributions [B, L, L, C]; ``teacher`` [B, L, L, C]."""
    teacher = teacher.astype(jnp.float32)
    if not jnp.issubdtype(targets.dtype, jnp.floating):
        targets = jax.nn.one_hot(targets, teacher.shape[-1], dtype=jnp.float32)
    return (1.0 - weight) * targets + weight * teacher


def loss_terms(outputs, batch, options: LossOptions, rng=None):
    """Sums and denominators of the NER and RE losses of one batch.

    Returns a dict with ``ner_loss_sum``, ``ner_count``, ``re_loss_sum``, ``re_pairs`` (the
    absent half of a standalone model is 0). ``rng``: the key of span negative sampling
    (needed only with ``options.span_negative_keep`` < 1).
    """
    zero = jnp.zeros((), jnp.float32)
    terms = {"ner_loss_sum": zero, "ner_count": zero, "re_loss_sum": zero, "re_pairs": zero}
    if "ner_logits" in outputs:
        targets, mask = ner_targets(options.scheme, batch)
        if options.boundary_smoothing:
            num_classes = outputs["ner_logits"].shape[-1]
            targets = smoothed_span_targets(targets, mask, num_classes, options.boundary_smoothing)
        if options.span_negative_keep < 1.0:
            if rng is None:
                raise ValueError("span_negative_keep < 1 needs an rng for loss_terms")
            mask = sampled_negatives(targets, mask, options.span_negative_keep, rng)
        if options.distillation_weight:
            targets = distilled_targets(
                targets, batch["ner_soft_targets"], options.distillation_weight
            )
        terms["ner_loss_sum"], terms["ner_count"] = masked_cross_entropy(
            outputs["ner_logits"], targets, mask
        )
    name = options.re_table
    if f"re_logits_{name}" in outputs:
        mask, targets = relation_pairs(
            outputs[f"table_{name}"],
            batch["relations"],
            batch["row_mask"],
            options.negative_sampling,
            batch.get("word_segment"),
        )
        terms["re_loss_sum"], terms["re_pairs"] = masked_cross_entropy(
            outputs[f"re_logits_{name}"], targets, mask
        )
    return terms


def ner_consistency(logits, reference, batch, options: LossOptions):
    """Mean KL(softmax(reference) || softmax(logits)) over the NER loss's positions (a scalar,
    float32): how far one pass's NER distributions ``logits`` lie from another's
    ``reference`` (same shape, held fixed: no gradient flows into it). The adversarial pass
    against the clean one is virtual adversarial training's smoothness term (Miyato et al.
    2017) and, with the two dropout masks, R-Drop's (Liang et al. 2021)."""
    _, mask = ner_targets(options.scheme, batch)
    reference = jax.nn.softmax(jax.lax.stop_gradient(reference).astype(jnp.float32))
    divergence = optax.kl_divergence(jax.nn.log_softmax(logits.astype(jnp.float32)), reference)
    mask = mask.astype(jnp.float32)
    return jnp.sum(divergence * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def total_loss(terms, ner_weight: float = 1.0, re_weight: float = 1.0):
    """Joint loss = ner_weight * mean NER loss + re_weight * mean RE loss (scalar)."""
    ner = terms["ner_loss_sum"] / jnp.maximum(terms["ner_count"], 1.0)
    re = terms["re_loss_sum"] / jnp.maximum(terms["re_pairs"], 1.0)
    return ner_weight * ner + re_weight * re
