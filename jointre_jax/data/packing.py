"""Sequence packing: several examples share one row of fixed length, so a run compiles one
training shape and one prediction shape.

The examples of a row are its *segments* (``segment_ids``, ``position_ids`` and the offset
indices of :mod:`.batching`): attention stays inside a segment, positions restart in each,
spans and relation pairs never cross two, so a packed example gets the logits it gets alone
(``tests/test_packing.py``).

**Rows.** :func:`pack` fills rows of ``length`` wordpieces best-fit decreasing: examples
longest first (ties in a seeded random order), each into the fullest row it still fits, both
in wordpieces and in entity slots (the row's gold entity table holds ``max_entities``). On
Chia the rows are over 99% real wordpieces.

**Plans.** A :class:`PackedBatcher` packs its examples once, from its seed. Each training epoch
shuffles the rows (seed, epoch) and groups them ``rows`` at a time, so every epoch has the same
number of steps and a resumed epoch replays the same batches; only the last batch of an epoch
has empty rows. Prediction takes the rows in packing order. Every process computes the same
plan and builds only its own rows (:meth:`Batcher.local_rows`).

**Sizes** (:func:`resolve`, saved with the run): rows per training batch so that a batch holds
about ``data.batch_size`` examples (likewise ``data.eval_batch_size`` for prediction), rounded
up to a multiple of the devices, and entity slots per row ``model.max_entities``.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import numpy as np

from jointre_jax.data.batching import Batcher, PlannedBatch, entity_slots
from jointre_jax.data.encode import Example
from jointre_jax.errors import UserError
from jointre_jax.labels import EntityScheme


def pack(lengths, entities, length: int, slots: int, seed: int = 0) -> list[list[int]]:
    """Rows of example indices, best-fit decreasing (see the module docstring).

    Args:
      lengths: int [n] wordpieces of each example (each at most ``length``).
      entities: int [n] gold entities of each example.
      length: wordpieces per row.
      slots: entity slots per row; an example with more entities than that gets a row of its
        own (its table is cut at ``slots`` and the rest counted as overflow).
      seed: orders examples of equal length.
    Returns:
      rows, each the indices of its examples in packing order; every example exactly once.
    """
    lengths = np.asarray(lengths, np.int64)
    entities = np.asarray(entities, np.int64)
    if len(lengths) and lengths.max() > length:
        raise ValueError(f"an example of {lengths.max()} wordpieces exceeds rows of {length}")
    tie = np.random.default_rng([int(seed), 7]).permutation(len(lengths))
    order = np.lexsort((tie, -lengths))  # longest first, ties in seeded order
    rows: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (free wordpieces, row id), ascending
    free_slots: list[int] = []
    for index in order:
        need, ents = int(lengths[index]), int(entities[index])
        at = bisect.bisect_left(room, (need, -1))
        while at < len(room) and free_slots[room[at][1]] < ents:
            at += 1  # fits in wordpieces, not in entity slots: a roomier row
        if at < len(room):
            free, row = room.pop(at)
        else:
            free, row = length, len(rows)
            rows.append([])
            free_slots.append(slots)
        rows[row].append(int(index))
        free_slots[row] -= ents
        if free - need > 0 and free_slots[row] >= 0:
            bisect.insort(room, (free - need, row))
    return rows


def mean_length(examples: Sequence[Example]) -> float:
    """Mean wordpieces of ``examples`` (1 for none)."""
    return float(np.mean([ex.length for ex in examples])) if examples else 1.0


def rows_for(batch_size: int, mean_length: float, length: int, multiple: int = 1) -> int:
    """Rows of ``length`` that hold about ``batch_size`` examples of ``mean_length``
    wordpieces (at least one), rounded up to a multiple of ``multiple`` (the devices)."""
    rows = max(1, round(batch_size * mean_length / length))
    return -(-rows // multiple) * multiple


def row_slots(examples: Sequence[Example], length: int, multiple: int = 8) -> int:
    """Entity slots of a packed row: twice the gold entities of a full row at the examples'
    mean density (room for what the decoder finds), and at least the most of one example;
    rounded up to a multiple of ``multiple``."""
    tokens = sum(ex.length for ex in examples)
    found = sum(len(ex.entities) for ex in examples)
    dense = int(np.ceil(2 * length * found / tokens)) if tokens else 0
    return max(entity_slots(examples, multiple), -(-dense // multiple) * multiple)


def example_length(config) -> int:
    """The most wordpieces an example can have: ``data.max_length`` + ``data.context_length``."""
    return int(config.data.max_length) + int(config.data.context_length)


def row_length(config) -> int:
    """``data.pack_length`` (0: :func:`example_length`); a UserError when shorter than that,
    since every example must fit a row."""
    data = config.data
    longest = example_length(config)
    length = int(data.pack_length) or longest
    if length < longest:
        raise UserError(
            f"data.pack_length={length} is shorter than data.max_length + data.context_length "
            f"= {longest}: every example must fit a row; set --config.data.pack_length to at "
            "least that (or lower --config.data.max_length or context_length too)"
        )
    return length


def resolve(config, examples: Sequence[Example], devices: int) -> None:
    """Sets the packing sizes left at 0 in ``config`` (in place) from the training
    ``examples``: ``data.pack_length`` (:func:`example_length`), ``data.pack_rows``,
    ``data.eval_pack_rows`` and ``model.max_entities`` (see the module docstring)."""
    data = config.data
    with config.unlocked():
        data.pack_length = row_length(config)
        mean = mean_length(examples)
        if not data.pack_rows:
            data.pack_rows = rows_for(data.batch_size, mean, data.pack_length, devices)
        if not data.eval_pack_rows:
            data.eval_pack_rows = rows_for(data.eval_batch_size, mean, data.pack_length, devices)
        if not config.model.max_entities:
            config.model.max_entities = row_slots(examples, data.pack_length)


class PackedBatcher(Batcher):
    """Plans and builds packed batches (see the module docstring).

    Args:
      examples: the split's examples.
      length: wordpieces per row.
      rows: rows per global batch (``batch_size`` of :class:`Batcher` counts rows here).
      seed: packing and shuffling seed.
      scheme: the label scheme whose NER targets the batches carry.
      max_entities: entity slots per row (0: :func:`row_slots`).
      soft_targets: a teacher's span table of each example (:class:`Batcher`), or None.
    """

    def __init__(
        self,
        examples: Sequence[Example],
        length: int,
        rows: int,
        seed: int = 0,
        scheme: EntityScheme | None = None,
        max_entities: int = 0,
        soft_targets: Sequence[np.ndarray] | None = None,
    ):
        slots = int(max_entities) or row_slots(examples, length)
        super().__init__(examples, (int(length),), rows, seed, scheme, slots, soft_targets)
        counts = [len(ex.entities) for ex in examples]
        self.rows = pack(self.lengths, counts, int(length), slots, self.seed)
        width = max((len(r) for r in self.rows), default=1)
        self.table = np.full((len(self.rows), width), -1, np.int32)  # [rows, segments]
        for r, members in enumerate(self.rows):
            self.table[r, : len(members)] = members

    def _plan(self, order: np.ndarray) -> list[PlannedBatch]:
        length, size = self.boundaries[-1], self.batch_size
        plans = []
        for start in range(0, len(order), size):
            block = np.full((size, self.table.shape[1]), -1, np.int32)
            chosen = self.table[order[start : start + size]]
            block[: len(chosen)] = chosen
            plans.append(PlannedBatch(length, block))
        return plans

    def epoch_plan(self, epoch: int) -> list[PlannedBatch]:
        """The packed rows in a random order of (seed, epoch), ``rows`` a batch."""
        rng = np.random.default_rng([self.seed, int(epoch)])
        return self._plan(rng.permutation(len(self.rows)))

    def eval_plan(self) -> list[PlannedBatch]:
        """The packed rows in packing order, ``rows`` a batch."""
        return self._plan(np.arange(len(self.rows)))

    def steps_per_epoch(self) -> int:
        """Batches in every epoch plan: ceil(packed rows / rows per batch)."""
        return -(-len(self.rows) // self.batch_size)


def make_batcher(
    config, examples: Sequence[Example], scheme, training: bool, soft_targets=None
) -> Batcher:
    """The batcher ``config`` asks for: packed rows (``data.packing``) or length buckets, of
    the training (``training``, seeded by ``config.seed``) or the prediction batch size;
    ``soft_targets``: a teacher's span tables of the examples (:class:`Batcher`)."""
    data = config.data
    seed = int(config.seed) if training else 0
    slots = int(config.model.max_entities)
    if data.packing:
        length = row_length(config)
        rows = int(data.pack_rows if training else data.eval_pack_rows)
        if not rows:  # sizes not resolved (a config never trained): from these examples
            size = data.batch_size if training else data.eval_batch_size
            rows = rows_for(size, mean_length(examples), length)
        return PackedBatcher(examples, length, rows, seed, scheme, slots, soft_targets)
    if max(data.bucket_boundaries) < example_length(config):
        raise UserError(
            f"data.bucket_boundaries end at {max(data.bucket_boundaries)}, below data.max_length "
            f"+ data.context_length = {example_length(config)}: add a bucket that long"
        )
    size = data.batch_size if training else data.eval_batch_size
    return Batcher(examples, data.bucket_boundaries, size, seed, scheme, slots, soft_targets)
