"""Length-bucketed batches with static shapes and masks.

Every batch of a bucket has the shape ``[batch_size, bucket_length]`` (the last batch of a
bucket is filled with empty rows whose ``row_mask`` is False), so the train step compiles once
per bucket. The plan of an epoch (which examples go in which batch, in which order) depends only
on the seed and the epoch, so every process of a multi-host job computes the same plan and
materialises only its own rows: ``rows [p * B / P, (p + 1) * B / P)`` of each global batch.

Batch arrays (B = rows of this process, L = bucket length):

* ``input_ids`` int32 [B, L]; ``input_mask`` bool [B, L]: real wordpieces incl. [CLS]/[SEP];
* ``label_mask`` bool [B, L]: wordpieces that carry an NER label (no specials, no padding);
* ``ner_labels`` int32 [B, L]: BIO tag ids (0 where masked);
* ``entity_start``/``entity_end`` int32 [B, L]: at the anchor wordpiece of each gold entity,
  its wordpiece span [start, end); -1 elsewhere; ``entity_type`` int32 [B, L]: 1 + type id at
  anchors, 0 elsewhere;
* ``relations`` int32 [B, L, L]: relation label id of (head anchor, tail anchor), 0 = none;
* ``example_index`` int32 [B]: index into the split's example list, -1 for filler rows;
  ``row_mask`` bool [B].
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np

from jointre_jax.data.encode import Example


def bucket_for(length: int, boundaries: Sequence[int]) -> int:
    """Smallest boundary >= ``length``; ValueError when the example is longer than all."""
    for boundary in boundaries:
        if length <= boundary:
            return int(boundary)
    raise ValueError(f"example of {length} wordpieces exceeds the largest bucket {boundaries[-1]}")


@dataclasses.dataclass(frozen=True)
class PlannedBatch:
    """One global batch: its bucket length and example indices (-1 = filler row)."""

    length: int
    indices: np.ndarray  # int32 [global batch size]


class Batcher:
    """Plans and builds batches of a list of examples.

    Args:
      examples: the split's examples.
      boundaries: ascending bucket lengths; the last must hold the longest example.
      batch_size: global batch size (rows over all processes).
      anchor: "first" or "last" wordpiece of an entity carries its relations.
      seed: shuffling seed; the plan of epoch e uses ``(seed, e)``.
    """

    def __init__(
        self,
        examples: Sequence[Example],
        boundaries: Sequence[int],
        batch_size: int,
        anchor: str = "first",
        seed: int = 0,
    ):
        if list(boundaries) != sorted(set(boundaries)) or not boundaries:
            raise ValueError(f"bucket boundaries must be ascending and unique: {boundaries}")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.examples = examples
        self.boundaries = tuple(int(b) for b in boundaries)
        self.batch_size = int(batch_size)
        self.anchor = anchor
        self.seed = int(seed)
        self.lengths = np.array([ex.length for ex in examples], np.int64)
        self.buckets = np.array([bucket_for(n, self.boundaries) for n in self.lengths], np.int64)

    # -------------------------------------------------------------------- plans
    def _batch(self, members: np.ndarray, length: int | None = None) -> PlannedBatch:
        indices = np.full(self.batch_size, -1, np.int32)
        indices[: len(members)] = members
        if length is None:
            length = bucket_for(int(self.lengths[members].max()), self.boundaries)
        return PlannedBatch(int(length), indices)

    def epoch_plan(self, epoch: int) -> list[PlannedBatch]:
        """Training plan of ``epoch``: ceil(N / batch_size) batches in random order.

        Examples are shuffled within their bucket; a bucket's leftover (fewer than a batch) is
        carried into the next longer bucket, so only the last batch of the epoch has filler
        rows and no example is dropped.
        """
        rng = np.random.default_rng([self.seed, int(epoch)])
        batches: list[PlannedBatch] = []
        carry = np.zeros(0, np.int64)
        for length in self.boundaries:
            pool = np.concatenate([carry, rng.permutation(np.flatnonzero(self.buckets == length))])
            full = len(pool) // self.batch_size * self.batch_size
            for start in range(0, full, self.batch_size):
                batches.append(self._batch(pool[start : start + self.batch_size], length))
            carry = pool[full:]
        if len(carry):
            batches.append(self._batch(carry))
        order = rng.permutation(len(batches))
        return [batches[i] for i in order]

    def eval_plan(self) -> list[PlannedBatch]:
        """Evaluation plan: every example once, longest first (stable), no shuffling.

        Each batch is padded to the bucket of its longest example, so the number of shapes
        stays at most the number of buckets; the one partial batch holds the shortest examples.
        """
        order = np.argsort(-self.lengths, kind="stable")
        return [
            self._batch(order[start : start + self.batch_size])
            for start in range(0, len(order), self.batch_size)
        ]

    def steps_per_epoch(self) -> int:
        """Batches in every epoch plan: ceil(N / batch_size)."""
        return -(-len(self.examples) // self.batch_size)

    # ------------------------------------------------------------------- batches
    def local_rows(self, process_index: int = 0, process_count: int = 1) -> slice:
        """Rows of a global batch that process ``process_index`` of ``process_count`` owns."""
        if self.batch_size % process_count:
            raise ValueError(
                f"batch size {self.batch_size} not divisible by {process_count} processes"
            )
        if not 0 <= process_index < process_count:
            raise ValueError(f"process index {process_index} not in [0, {process_count})")
        per_process = self.batch_size // process_count
        return slice(process_index * per_process, (process_index + 1) * per_process)

    def build(self, planned: PlannedBatch, rows: slice = slice(None)) -> dict[str, np.ndarray]:
        """Arrays of the rows ``rows`` of a planned batch (see module docstring)."""
        indices = planned.indices[rows]
        size, length = len(indices), planned.length
        batch = {
            "input_ids": np.zeros((size, length), np.int32),
            "input_mask": np.zeros((size, length), bool),
            "label_mask": np.zeros((size, length), bool),
            "ner_labels": np.zeros((size, length), np.int32),
            "entity_start": np.full((size, length), -1, np.int32),
            "entity_end": np.full((size, length), -1, np.int32),
            "entity_type": np.zeros((size, length), np.int32),
            "relations": np.zeros((size, length, length), np.int32),
            "example_index": indices.astype(np.int32),
            "row_mask": indices >= 0,
        }
        for row, index in enumerate(indices):
            if index < 0:
                continue
            ex = self.examples[index]
            n = ex.length
            batch["input_ids"][row, :n] = ex.input_ids
            batch["input_mask"][row, :n] = True
            batch["label_mask"][row, 1 : n - 1] = True
            batch["ner_labels"][row, :n] = ex.ner_tags
            anchors = [ex.anchor(i, self.anchor) for i in range(len(ex.entities))]
            for anchor, span in zip(anchors, ex.entities, strict=True):
                batch["entity_start"][row, anchor] = span.start
                batch["entity_end"][row, anchor] = span.end
                batch["entity_type"][row, anchor] = span.label + 1
            for head, tail, label in ex.relations:
                batch["relations"][row, anchors[head], anchors[tail]] = label
        return batch

    def iterate(
        self,
        plan: Sequence[PlannedBatch],
        process_index: int = 0,
        process_count: int = 1,
        start_step: int = 0,
    ) -> Iterator[dict[str, np.ndarray]]:
        """This process's rows of each batch of ``plan``, from ``start_step`` on (resume)."""
        rows = self.local_rows(process_index, process_count)
        for planned in plan[start_step:]:
            yield self.build(planned, rows)


def padding_stats(batcher: Batcher, plan: Sequence[PlannedBatch]) -> dict:
    """Real vs padded wordpieces of a plan, and of the same batches padded to the largest bucket.

    Returns a dict: batches, real_tokens, padded_slots, real_token_fraction, padding_waste,
    fixed_length, fixed_padding_waste (all rows of ceil(N / B) batches at the largest bucket).
    """
    real = int(batcher.lengths.sum())
    slots = int(sum(p.length * len(p.indices) for p in plan))
    fixed = batcher.boundaries[-1]
    fixed_batches = -(-len(batcher.examples) // batcher.batch_size)
    fixed_slots = fixed_batches * batcher.batch_size * fixed
    return {
        "batches": len(plan),
        "real_tokens": real,
        "padded_slots": slots,
        "real_token_fraction": real / slots if slots else 1.0,
        "padding_waste": 1 - real / slots if slots else 0.0,
        "fixed_length": fixed,
        "fixed_padding_waste": 1 - real / fixed_slots if fixed_slots else 0.0,
    }
