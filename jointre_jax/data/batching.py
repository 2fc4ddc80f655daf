"""Length-bucketed batches with static shapes and masks.

Every batch of a bucket has the shape ``[batch_size, bucket_length]`` (the last batch of a
bucket is filled with empty rows whose ``row_mask`` is False), so the train step compiles once
per bucket. The plan of an epoch (which examples go in which batch, in which order) depends only
on the seed and the epoch, so every process of a multi-host job computes the same plan and
materialises only its own rows: ``rows [p * B / P, (p + 1) * B / P)`` of each global batch.

Batch arrays (B = rows of this process, L = bucket length, N = ``max_entities``). Words have
L slots too (an example never has more words than wordpieces):

* ``input_ids`` int32 [B, L]; ``input_mask`` bool [B, L]: real wordpieces incl. [CLS]/[SEP];
* ``word_index`` int32 [B, L]: wordpiece index of each word's first wordpiece (0 past the last
  word); ``word_end_index`` int32 [B, L]: that of its last wordpiece; ``word_mask`` bool
  [B, L]: real words;
* the label scheme's NER targets (:meth:`jointre_jax.labels.EntityScheme.targets`): for BIO
  ``ner_labels`` int32 [B, L], one tag per word (0 past the last word);
* the gold entity table: ``entity_start``/``entity_end`` int32 [B, N] word span [start, end),
  ``entity_type`` int32 [B, N] 1 + type id (0: empty slot), in the example's entity order;
  ``entity_overflow`` int32 [B]: gold entities beyond N (left out of the table, counted);
* ``relations`` int32 [B, N, N]: relation label id from table entity i to j, 0 = none;
* ``example_index`` int32 [B]: index into the split's example list, -1 for filler rows;
  ``row_mask`` bool [B].
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np

from jointre_jax.data.encode import Example
from jointre_jax.labels import BioScheme, EntityScheme


def word_ends(example: Example) -> np.ndarray:
    """Wordpiece index of each word's last wordpiece, int32 [w]: every wordpiece between
    [CLS] and [SEP] belongs to a word, so a word ends where the next begins (the last word
    before [SEP])."""
    starts = np.asarray(example.word_starts, np.int64)
    return (np.append(starts[1:], example.length - 1) - 1).astype(np.int32)


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
      seed: shuffling seed; the plan of epoch e uses ``(seed, e)``.
      scheme: the label scheme whose NER targets the batches carry (default BIO).
      max_entities: N, the slots of the entity table (default: the most entities of any
        example, rounded up to a multiple of 8).
    """

    def __init__(
        self,
        examples: Sequence[Example],
        boundaries: Sequence[int],
        batch_size: int,
        seed: int = 0,
        scheme: EntityScheme | None = None,
        max_entities: int = 0,
    ):
        if list(boundaries) != sorted(set(boundaries)) or not boundaries:
            raise ValueError(f"bucket boundaries must be ascending and unique: {boundaries}")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.examples = examples
        self.boundaries = tuple(int(b) for b in boundaries)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.scheme = scheme if scheme is not None else BioScheme(1)
        self.max_entities = int(max_entities) or entity_slots(examples)
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
        size, length, slots = len(indices), planned.length, self.max_entities
        batch = {
            "input_ids": np.zeros((size, length), np.int32),
            "input_mask": np.zeros((size, length), bool),
            "word_index": np.zeros((size, length), np.int32),
            "word_end_index": np.zeros((size, length), np.int32),
            "word_mask": np.zeros((size, length), bool),
            "entity_start": np.zeros((size, slots), np.int32),
            "entity_end": np.zeros((size, slots), np.int32),
            "entity_type": np.zeros((size, slots), np.int32),
            "entity_overflow": np.zeros(size, np.int32),
            "relations": np.zeros((size, slots, slots), np.int32),
            "example_index": indices.astype(np.int32),
            "row_mask": indices >= 0,
        }
        targets = {}
        for row, index in enumerate(indices):
            if index < 0:
                continue
            ex = self.examples[index]
            n, w = ex.length, ex.num_words
            batch["input_ids"][row, :n] = ex.input_ids
            batch["input_mask"][row, :n] = True
            batch["word_index"][row, :w] = ex.word_starts
            batch["word_end_index"][row, :w] = word_ends(ex)
            batch["word_mask"][row, :w] = True
            table = ex.entities[:slots]
            batch["entity_overflow"][row] = len(ex.entities) - len(table)
            for i, span in enumerate(table):
                batch["entity_start"][row, i] = span.start
                batch["entity_end"][row, i] = span.end
                batch["entity_type"][row, i] = span.label + 1
            for head, tail, label in ex.relations:
                if head < slots and tail < slots:
                    batch["relations"][row, head, tail] = label
            for key, value in self.scheme.targets(ex.entities, w, length).items():
                targets.setdefault(key, np.zeros((size, *value.shape), value.dtype))[row] = value
        if not targets:  # every row a filler: the arrays still need their shapes
            probe = self.scheme.targets((), 0, length)
            targets = {k: np.zeros((size, *v.shape), v.dtype) for k, v in probe.items()}
        batch.update(targets)
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


def entity_slots(examples: Sequence[Example], multiple: int = 8) -> int:
    """The most entities of any example, rounded up to a multiple of ``multiple`` (at least
    ``multiple``): the static size N of the entity tables."""
    most = max((len(ex.entities) for ex in examples), default=0)
    return max(multiple, -(-most // multiple) * multiple)


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
