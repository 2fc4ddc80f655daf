"""Losses and the RE pair masks, vectorised for jit; everything returns sums and denominators.

BIO tag ids follow ``data.schema``: 0 = O, ``1 + 2k`` = B-k, ``2 + 2k`` = I-k. Spans are decoded
as seqeval does by default: ``I-x`` continues an entity only right after ``B-x`` or ``I-x``;
otherwise it starts a new one.

RE negatives (``negative_sampling``):

* ``gs-based``: every ordered pair of distinct gold entity anchors; the target is the gold
  relation label or "none";
* ``incremental``: the gold relation pairs, plus every ordered pair of distinct *predicted*
  entity anchors as a negative: both entities predicted correctly (span and type) and
  unrelated, or either predicted wrongly. A pair that is a gold relation stays a positive.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

NEGATIVE_SAMPLING = ("gs-based", "incremental")


def decode_bio(tags, label_mask, anchor: str = "first"):
    """Predicted entities at their anchor wordpiece.

    Args:
      tags: int [B, L] BIO tag ids; label_mask: bool [B, L] (False positions count as O).
      anchor: "first" or "last" wordpiece of the entity.
    Returns:
      dict of [B, L] arrays: ``anchor`` bool, ``start``/``end`` int32 wordpiece span [start,
      end) (-1 off anchors), ``type`` int32 1 + entity type id (0 off anchors).
    """
    tags = jnp.where(label_mask, tags, 0)
    length = tags.shape[-1]
    kind = jnp.where(tags > 0, (tags - 1) // 2 + 1, 0)  # 1 + type id, 0 for O
    is_inside = (tags > 0) & ((tags - 1) % 2 == 1)
    previous = jnp.pad(kind, ((0, 0), (1, 0)))[:, :-1]
    continues = is_inside & (previous == kind)
    starts = (tags > 0) & ~continues
    positions = jnp.arange(length)
    breaks = jnp.where(continues, length, positions)  # first non-continuing position from i on
    next_break = jax.lax.cummin(
        jnp.pad(breaks, ((0, 0), (0, 1)), constant_values=length), axis=1, reverse=True
    )
    ends = next_break[:, 1:]  # for a start at i: first k > i that does not continue it
    if anchor == "first":
        return {
            "anchor": starts,
            "start": jnp.where(starts, positions, -1).astype(jnp.int32),
            "end": jnp.where(starts, ends, -1).astype(jnp.int32),
            "type": jnp.where(starts, kind, 0).astype(jnp.int32),
        }
    if anchor != "last":
        raise ValueError(f"anchor {anchor!r} not in ('first', 'last')")
    # Move each entity from its start i to its last wordpiece end - 1 (one-hot [B, L, L]).
    moves = starts[:, :, None] & (ends[:, :, None] - 1 == positions[None, None, :])
    at_last = moves.any(axis=1)
    gather = lambda values: jnp.einsum("bik,bi->bk", moves.astype(jnp.int32), values)  # noqa: E731
    return {
        "anchor": at_last,
        "start": jnp.where(at_last, gather(jnp.broadcast_to(positions, tags.shape)), -1).astype(
            jnp.int32
        ),
        "end": jnp.where(at_last, gather(ends), -1).astype(jnp.int32),
        "type": jnp.where(at_last, gather(kind), 0).astype(jnp.int32),
    }


def relation_pairs(batch, predicted=None, negative_sampling: str = "gs-based"):
    """Pairs the RE loss is computed on, and their targets.

    Args:
      batch: arrays of ``data.batching`` (``entity_type``, ``entity_start``, ``entity_end``,
        ``relations``, ``row_mask``).
      predicted: ``decode_bio`` output (needed for incremental).
      negative_sampling: "gs-based" or "incremental" (see module docstring).
    Returns:
      (mask bool [B, L, L], targets int32 [B, L, L]).
    """
    if negative_sampling not in NEGATIVE_SAMPLING:
        raise ValueError(f"negative_sampling {negative_sampling!r} not in {NEGATIVE_SAMPLING}")
    length = batch["relations"].shape[-1]
    distinct = ~jnp.eye(length, dtype=bool)[None]
    rows = batch["row_mask"][:, None, None]
    relations = batch["relations"]
    if negative_sampling == "gs-based":
        gold = batch["entity_type"] > 0
        mask = gold[:, :, None] & gold[:, None, :] & distinct & rows
        return mask, jnp.where(mask, relations, 0)
    anchors = predicted["anchor"]
    predicted_pairs = anchors[:, :, None] & anchors[:, None, :] & distinct
    positives = relations > 0
    mask = (positives | predicted_pairs) & rows
    return mask, jnp.where(mask & positives, relations, 0)


def correct_entities(batch, predicted):
    """bool [B, L]: a predicted entity whose anchor, span and type equal a gold entity's."""
    return (
        predicted["anchor"]
        & (predicted["type"] == batch["entity_type"])
        & (predicted["start"] == batch["entity_start"])
        & (predicted["end"] == batch["entity_end"])
    )


def masked_cross_entropy(logits, labels, mask):
    """(sum of cross-entropy over ``mask``, number of masked-in positions), both float32."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    mask = mask.astype(jnp.float32)
    return jnp.sum(losses * mask), jnp.sum(mask)


def loss_terms(outputs, batch, negative_sampling: str = "gs-based", anchor: str = "first"):
    """Sums and denominators of the NER and RE losses of one batch.

    Returns a dict with ``ner_loss_sum``, ``ner_tokens``, ``re_loss_sum``, ``re_pairs`` (the
    absent half of a standalone model is 0).
    """
    zero = jnp.zeros((), jnp.float32)
    terms = {"ner_loss_sum": zero, "ner_tokens": zero, "re_loss_sum": zero, "re_pairs": zero}
    label_mask = batch["label_mask"] & batch["row_mask"][:, None]
    if "ner_logits" in outputs:
        terms["ner_loss_sum"], terms["ner_tokens"] = masked_cross_entropy(
            outputs["ner_logits"], batch["ner_labels"], label_mask
        )
    if "re_logits" in outputs:
        predicted = None
        if negative_sampling == "incremental":
            tags = jnp.argmax(jax.lax.stop_gradient(outputs["ner_logits"]), axis=-1)
            predicted = decode_bio(tags, label_mask, anchor)
        mask, targets = relation_pairs(batch, predicted, negative_sampling)
        terms["re_loss_sum"], terms["re_pairs"] = masked_cross_entropy(
            outputs["re_logits"], targets, mask
        )
    return terms


def total_loss(terms, ner_weight: float = 1.0, re_weight: float = 1.0):
    """Joint loss = ner_weight * mean NER loss + re_weight * mean RE loss (scalar)."""
    ner = terms["ner_loss_sum"] / jnp.maximum(terms["ner_tokens"], 1.0)
    re = terms["re_loss_sum"] / jnp.maximum(terms["re_pairs"], 1.0)
    return ner_weight * ner + re_weight * re
