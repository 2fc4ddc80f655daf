"""Losses and the RE pair masks, vectorised for jit; everything returns sums and denominators.

NER (by label scheme, :mod:`jointre_jax.labels`):

* ``bio``: cross-entropy of each real word's tag;
* ``span``: cross-entropy of every candidate span (at most ``max_span_width`` words) against
  its gold class (1 + type, or 0 = no entity).

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

import jax.numpy as jnp
import optax

from jointre_jax.labels import BioScheme, EntityScheme, SpanScheme, gold_table
from jointre_jax.model.joint import gather

NEGATIVE_SAMPLING = ("gs-based", "incremental")


@dataclasses.dataclass(frozen=True)
class LossOptions:
    """The static options of the training loss (bound to ``train_step`` with partial)."""

    scheme: EntityScheme = dataclasses.field(default_factory=lambda: BioScheme(1))
    negative_sampling: str = "gs-based"
    label_source: str = "gold"
    ner_weight: float = 1.0
    re_weight: float = 1.0

    def __post_init__(self):
        if self.negative_sampling not in NEGATIVE_SAMPLING:
            raise ValueError(
                f"negative_sampling {self.negative_sampling!r} not in {NEGATIVE_SAMPLING}"
            )

    @property
    def re_table(self) -> str:
        """The entity table the RE loss is computed on."""
        return "gold" if self.negative_sampling == "gs-based" else "incremental"


def masked_cross_entropy(logits, labels, mask):
    """(sum of cross-entropy over ``mask``, number of masked-in positions), both float32."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    mask = mask.astype(jnp.float32)
    return jnp.sum(losses * mask), jnp.sum(mask)


def ner_targets(scheme: EntityScheme, batch):
    """(targets int32, mask bool) of the NER loss, shaped like ``ner_logits`` without classes."""
    rows = batch["row_mask"]
    if isinstance(scheme, SpanScheme):
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


def loss_terms(outputs, batch, options: LossOptions):
    """Sums and denominators of the NER and RE losses of one batch.

    Returns a dict with ``ner_loss_sum``, ``ner_count``, ``re_loss_sum``, ``re_pairs`` (the
    absent half of a standalone model is 0).
    """
    zero = jnp.zeros((), jnp.float32)
    terms = {"ner_loss_sum": zero, "ner_count": zero, "re_loss_sum": zero, "re_pairs": zero}
    if "ner_logits" in outputs:
        targets, mask = ner_targets(options.scheme, batch)
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


def total_loss(terms, ner_weight: float = 1.0, re_weight: float = 1.0):
    """Joint loss = ner_weight * mean NER loss + re_weight * mean RE loss (scalar)."""
    ner = terms["ner_loss_sum"] / jnp.maximum(terms["ner_count"], 1.0)
    re = terms["re_loss_sum"] / jnp.maximum(terms["re_pairs"], 1.0)
    return ner_weight * ner + re_weight * re
