"""One predict-and-decode path: examples in, entities and relations of each example out.

Training's evaluation, the ``evaluate`` CLI, extraction and the demo all call
:meth:`Predictor.predict`. The device decodes entities and scores their relations
(:func:`jointre_jax.steps.predict_step`); here the entity tables become whole-word entities
with character offsets into the example's text.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from jointre_jax import parallel, runtime, steps
from jointre_jax.data.batching import Batcher
from jointre_jax.data.encode import Example
from jointre_jax.data.packing import make_batcher
from jointre_jax.labels import fragment_link_label, merge_fragments


@dataclasses.dataclass(frozen=True)
class PredictedEntity:
    """A predicted entity: word span [start, end) of its example, type id, characters
    ``text[char_start:char_end]`` of the example (whole words), the decoder's probability.

    A discontinuous entity (``model.discontinuous``) also lists its ``fragments``: word spans
    [(start, end)] and ``char_fragments`` [(char start, char end)] in text order; ``start`` to
    ``end`` is then their extent. Empty for a contiguous entity.
    """

    start: int
    end: int
    label: int
    char_start: int
    char_end: int
    score: float = 1.0
    fragments: tuple[tuple[int, int], ...] = ()
    char_fragments: tuple[tuple[int, int], ...] = ()

    @property
    def word_spans(self) -> tuple[tuple[int, int], ...]:
        """Its word span(s): the fragments, or the one span."""
        return self.fragments or ((self.start, self.end),)

    @property
    def char_spans(self) -> tuple[tuple[int, int], ...]:
        """Its character span(s) in the example's text: the fragments, or the one span."""
        return self.char_fragments or ((self.char_start, self.char_end),)


@dataclasses.dataclass
class Prediction:
    """What the model predicts for one example.

    ``relations``: (head entity index, tail entity index, label id >= 1, probability) into
    ``entities``; ``gold_relations``: (head, tail, label) between the example's gold entities
    (None for a model without RE); ``overflow``: decoded entities that did not fit the table.
    """

    entities: list[PredictedEntity]
    relations: list[tuple[int, int, int, float]]
    gold_relations: list[tuple[int, int, int]] | None
    overflow: int = 0


def decode_row(
    example: Example, out: dict, row: int, words: int = 0, entities: int = 0, last: bool = True
) -> Prediction:
    """The :class:`Prediction` of ``example`` from row ``row`` of ``predict_step``'s arrays.

    A packed row holds several examples: this one's words begin at word ``words`` of the row
    and its gold entities at slot ``entities``; its decoded entities are those inside its
    words. The decoded entities that did not fit the row's table are the row's last ones (the
    table is in (start, end) order): they count as the overflow of the row's ``last`` example.
    """
    table = {k: v[row] for k, v in out["entities"].items()}
    inside = (table["start"] >= words) & (table["end"] <= words + example.num_words)
    slots = np.flatnonzero(table["mask"] & inside)
    found = []
    for slot in slots:
        start, end = int(table["start"][slot]) - words, int(table["end"][slot]) - words
        found.append(
            PredictedEntity(
                start,
                end,
                int(table["type"][slot]) - 1,
                int(example.words[start, 0]),
                int(example.words[end - 1, 1]),
                float(table["score"][slot]),
            )
        )
    relations, gold_relations = [], None
    if "re_labels" in out:
        labels, probs = out["re_labels"][row], out["re_probs"][row]
        for h, a in enumerate(slots):
            for t, b in enumerate(slots):
                if h != t and labels[a, b]:
                    relations.append((h, t, int(labels[a, b]), float(probs[a, b])))
        gold = out["gold_re_labels"][row]
        count = min(len(example.entities), gold.shape[0] - entities)
        gold_relations = [
            (h, t, int(gold[entities + h, entities + t]))
            for h in range(count)
            for t in range(count)
            if h != t and gold[entities + h, entities + t]
        ]
    overflow = int(table["overflow"]) if last else 0
    return Prediction(found, relations, gold_relations, overflow)


def read_fragments(prediction: Prediction, scheme, link_label: int) -> Prediction:
    """``prediction`` with fragments and their links read back into discontinuous entities
    (:func:`jointre_jax.labels.merge_fragments`); a fragment on no chain is no entity. A
    discontinuous entity's characters are its fragments' and its score is its least probable
    fragment's."""
    found = prediction.entities
    merged, relations, first = merge_fragments(
        [(e.start, e.end) for e in found],
        [e.label for e in found],
        prediction.relations,
        scheme.num_types,
        link_label,
    )
    by_span = {(e.start, e.end): e for e in found}  # one class per span: unique
    entities = []
    for (fragments, label), i in zip(merged, first, strict=True):
        if len(fragments) == 1:
            entities.append(found[i])
            continue
        parts = [by_span[span] for span in fragments]
        chars = tuple((e.char_start, e.char_end) for e in parts)
        entities.append(
            PredictedEntity(
                fragments[0][0],
                fragments[-1][1],
                label,
                chars[0][0],
                chars[-1][1],
                min(e.score for e in parts),
                fragments,
                chars,
            )
        )
    return dataclasses.replace(prediction, entities=entities, relations=relations)


class Predictor:
    """A model and its parameters, ready to predict examples.

    Args:
      config: the run's config (packed rows or length buckets, prediction batch size).
      model: the JointModel (its ``max_entities`` is the table size).
      params: its parameters, on their shardings; or a tuple of several runs' (an ensemble,
        :func:`jointre_jax.steps.predict_step`).
    """

    def __init__(self, config, model, params):
        self.config = config
        self.model = model
        self.params = params
        self.predict_fn = steps.jit_predict_step(parallel.params_mesh(params), params, model)

    def batcher(self, examples: Sequence[Example]) -> Batcher:
        """Batcher of ``examples`` for prediction: packed rows (``data.eval_pack_rows``) or
        length buckets (``data.eval_batch_size``), as the run's config says."""
        return make_batcher(self.config, examples, self.model.scheme, training=False)

    def predict(
        self, examples: Sequence[Example], desc: str | None = None
    ) -> Iterator[tuple[int, Prediction]]:
        """(example index, Prediction) for every example, in the evaluation plan's order
        (longest first, or packing order). ``desc`` names a progress bar (None: no bar)."""
        batcher = self.batcher(examples)
        sharding = parallel.batch_sharding(parallel.params_mesh(self.params))
        scheme = self.model.scheme
        link = fragment_link_label(self.model.num_relations - scheme.extra_relations)
        for planned in tqdm(batcher.eval_plan(), desc=desc, leave=False, disable=desc is None):
            batch = parallel.global_batch(runtime.host_rows(batcher, planned), sharding)
            out = jax.device_get(self.predict_fn(self.params, batch))
            for place in batcher.example_offsets(planned):
                prediction = decode_row(
                    examples[place.index], out, place.row, place.words, place.entities, place.last
                )
                if scheme.fragments:
                    prediction = read_fragments(prediction, scheme, link)
                yield place.index, prediction
