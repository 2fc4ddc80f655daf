"""Length-bucketed batches with static shapes and masks.

Every batch of a bucket has the shape ``[batch_size, bucket_length]`` (the last batch of a
bucket is filled with empty rows whose ``row_mask`` is False), so the train step compiles once
per bucket. The plan of an epoch (which examples go in which batch, in which order) depends only
on the seed and the epoch, so every process of a multi-host job computes the same plan and
materialises only its own rows: ``rows [p * B / P, (p + 1) * B / P)`` of each global batch.

Batch arrays (B = rows of this process, L = row length, N = ``max_entities``). A row holds
one example here, or several (its *segments*) in a packed batch (:mod:`.packing`); every
index below counts within the row. Words have L slots too (an example never has more words
than wordpieces):

* ``input_ids`` int32 [B, L]; ``input_mask`` bool [B, L]: real wordpieces incl. [CLS]/[SEP];
* ``segment_ids`` int32 [B, L]: 1-based segment of each real wordpiece (0: padding), so
  attention stays inside a segment; ``position_ids`` int32 [B, L]: position within the segment;
* ``word_index`` int32 [B, L]: wordpiece index of each word's first wordpiece (0 past the last
  word); ``word_end_index`` int32 [B, L]: that of its last wordpiece; ``word_mask`` bool
  [B, L]: real words; ``word_segment`` int32 [B, L]: each word's segment (0: no word);
  ``word_casing`` int32 [B, L]: each word's casing class (:data:`.tokenization.CASINGS`;
  0: no word);
* the label scheme's NER targets (:meth:`jointre_jax.labels.EntityScheme.targets`): for BIO
  ``ner_labels`` int32 [B, L], one tag per word (0 past the last word);
* the gold entity table: ``entity_start``/``entity_end`` int32 [B, N] word span [start, end),
  ``entity_type`` int32 [B, N] 1 + type id (0: empty slot), in the example's entity order (a
  packed row: its segments' tables one after the other); ``entity_overflow`` int32 [B]: gold
  entities beyond N (left out of the table, counted);
* ``relations`` int32 [B, N, N]: relation label id from table entity i to j, 0 = none;
* ``example_index`` int32 [B]: index into the split's example list of the row's first
  segment, -1 for filler rows; ``row_mask`` bool [B];
* with a teacher's span tables (``soft_targets``, :mod:`jointre_jax.distillation`):
  ``ner_soft_targets`` float32 [B, L, L, C], the teacher's distribution of each candidate
  span (i, j inclusive), zeros elsewhere.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np

from jointre_jax.data.encode import Example
from jointre_jax.data.tokenization import casing_class
from jointre_jax.labels import BioScheme, EntityScheme, place_span_table


def word_ends(example: Example) -> np.ndarray:
    """Wordpiece index of each word's last wordpiece, int32 [w]: every wordpiece of the
    criterion belongs to a word, so a word ends where the next begins (the last word before
    the criterion's [SEP], :attr:`Example.sep`)."""
    starts = np.asarray(example.word_starts, np.int64)
    return (np.append(starts[1:], example.sep) - 1).astype(np.int32)


def word_casing(example: Example) -> np.ndarray:
    """The casing class of each word of ``example`` (:func:`.tokenization.casing_class`),
    int32 [w]."""
    words = np.asarray(example.words).reshape(-1, 2)
    return np.array([casing_class(example.text[a:b]) for a, b in words], np.int32)


def bucket_for(length: int, boundaries: Sequence[int]) -> int:
    """Smallest boundary >= ``length``; ValueError when the example is longer than all."""
    for boundary in boundaries:
        if length <= boundary:
            return int(boundary)
    raise ValueError(f"example of {length} wordpieces exceeds the largest bucket {boundaries[-1]}")


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where an example sits in its batch row: row, 1-based segment, example index, the
    row's token, word and entity-slot offsets of its first token, word and entity, and
    whether it is the row's last segment."""

    row: int
    segment: int
    index: int
    tokens: int
    words: int
    entities: int
    last: bool


@dataclasses.dataclass(frozen=True)
class PlannedBatch:
    """One global batch: its row length and example indices (-1 = none).

    ``indices``: int32 [rows] (one example a row), or [rows, segments] for packed batches
    (the examples of each row in order, -1 after the last).
    """

    length: int
    indices: np.ndarray

    def segments(self, rows: slice = slice(None)) -> list[list[int]]:
        """The example indices of each row of ``rows``, in order."""
        indices = self.indices[rows]
        if indices.ndim == 1:
            return [[int(i)] if i >= 0 else [] for i in indices]
        return [[int(i) for i in row if i >= 0] for row in indices]


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
      soft_targets: a teacher's span table of each example, float [w, W, C]
        (:func:`jointre_jax.labels.span_table`), or None.
    """

    def __init__(
        self,
        examples: Sequence[Example],
        boundaries: Sequence[int],
        batch_size: int,
        seed: int = 0,
        scheme: EntityScheme | None = None,
        max_entities: int = 0,
        soft_targets: Sequence[np.ndarray] | None = None,
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
        if soft_targets is not None and len(soft_targets) != len(examples):
            raise ValueError(f"{len(soft_targets)} soft targets for {len(examples)} examples")
        self.soft_targets = soft_targets
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
        segments = planned.segments(rows)
        size, length, slots = len(segments), planned.length, self.max_entities
        zeros = lambda *shape: np.zeros((size, *shape), np.int32)  # noqa: E731
        batch = {
            "input_ids": zeros(length),
            "input_mask": np.zeros((size, length), bool),
            "segment_ids": zeros(length),
            "position_ids": zeros(length),
            "word_index": zeros(length),
            "word_end_index": zeros(length),
            "word_mask": np.zeros((size, length), bool),
            "word_segment": zeros(length),
            "word_casing": zeros(length),
            "entity_start": zeros(slots),
            "entity_end": zeros(slots),
            "entity_type": zeros(slots),
            "entity_overflow": zeros(),
            "relations": zeros(slots, slots),
            "example_index": np.array([row[0] if row else -1 for row in segments], np.int32),
            "row_mask": np.array([bool(row) for row in segments]),
        }
        probe = self.scheme.targets((), 0, length)  # the scheme's target arrays, one per word
        batch.update({k: np.zeros((size, *v.shape), v.dtype) for k, v in probe.items()})
        if self.soft_targets is not None:
            classes = self.soft_targets[0].shape[-1] if len(self.soft_targets) else 1
            batch["ner_soft_targets"] = np.zeros((size, length, length, classes), np.float32)
        for place in self._offsets(segments):
            self._place(batch, place, length)
        return batch

    def _offsets(self, segments: list[list[int]]):
        """:class:`Placement` of every example of ``segments`` (rows of example indices):
        the one owner of where a segment's tokens, words and entity slots begin in its row."""
        for row, members in enumerate(segments):
            tokens = words = entities = 0
            for segment, index in enumerate(members, start=1):
                ex = self.examples[index]
                last = segment == len(members)
                yield Placement(row, segment, index, tokens, words, entities, last)
                tokens, words = tokens + ex.length, words + ex.num_words
                entities = min(entities + len(ex.entities), self.max_entities)

    def _place(self, batch, place: Placement, length: int) -> None:
        """Writes the example of ``place`` into its row as its segment, from the row's token,
        word and entity-slot offsets on."""
        row, segment, ex = place.row, place.segment, self.examples[place.index]
        tokens, words, entities = place.tokens, place.words, place.entities
        slots = self.max_entities
        n, w = ex.length, ex.num_words
        if tokens + n > length:
            raise ValueError(f"segment of {n} wordpieces overruns a row of {length} at {tokens}")
        t, v = slice(tokens, tokens + n), slice(words, words + w)
        batch["input_ids"][row, t] = ex.input_ids
        batch["input_mask"][row, t] = True
        batch["segment_ids"][row, t] = segment
        batch["position_ids"][row, t] = np.arange(n)
        batch["word_index"][row, v] = np.asarray(ex.word_starts) + tokens
        batch["word_end_index"][row, v] = word_ends(ex) + tokens
        batch["word_mask"][row, v] = True
        batch["word_segment"][row, v] = segment
        batch["word_casing"][row, v] = word_casing(ex)
        table = ex.entities[: slots - entities]
        batch["entity_overflow"][row] += len(ex.entities) - len(table)
        for i, span in enumerate(table, start=entities):
            batch["entity_start"][row, i] = span.start + words
            batch["entity_end"][row, i] = span.end + words
            batch["entity_type"][row, i] = span.label + 1
        for head, tail, label in ex.relations:
            if head < len(table) and tail < len(table):
                batch["relations"][row, entities + head, entities + tail] = label
        for key, value in self.scheme.targets(ex.entities, w, w).items():
            if value.ndim != 1:
                raise ValueError(f"NER target {key!r} is not one value per word: {value.shape}")
            batch[key][row, v] = value
        if self.soft_targets is not None:
            place_span_table(batch["ner_soft_targets"][row], self.soft_targets[place.index], words)

    def example_offsets(self, planned: PlannedBatch, rows: slice = slice(None)):
        """:class:`Placement` of every example of the rows ``rows`` of a planned batch: where
        its words and gold entities sit in its row, and whether it is the row's last."""
        return self._offsets(planned.segments(rows))

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
    """Real vs padded wordpieces of a plan (bucketed or packed), and of one example a row
    padded to the largest length.

    Returns a dict: batches, real_tokens, padded_slots, real_token_fraction, padding_waste,
    fixed_length, fixed_padding_waste (every example alone in a row of the largest length).
    """
    real = int(batcher.lengths.sum())
    slots = int(sum(p.length * len(p.indices) for p in plan))  # rows x row length
    fixed = batcher.boundaries[-1]
    fixed_slots = len(batcher.examples) * fixed
    return {
        "batches": len(plan),
        "real_tokens": real,
        "padded_slots": slots,
        "real_token_fraction": real / slots if slots else 1.0,
        "padding_waste": 1 - real / slots if slots else 0.0,
        "fixed_length": fixed,
        "fixed_padding_waste": 1 - real / fixed_slots if fixed_slots else 0.0,
    }
