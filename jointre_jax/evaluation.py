"""Decoding of model outputs into entities and relations, and the P/R/F1 scorers.

Scores count against the *encoded* gold: the entities and relations the data pipeline kept
(see the data report for what the BIO encoding could not represent). Counts are integers
aggregated over the whole split; precision, recall and F1 are computed once at the end.

* NER: strict (span and type), micro and per type.
* RE gs-based: relations predicted among the gold entity anchors.
* RE end-to-end: relations among predicted entities; ``strict`` needs both spans, both types
  and the relation type right, ``boundaries`` both spans and the relation type.
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np

from jointre_jax.data.encode import Example


@dataclasses.dataclass(frozen=True)
class PredictedEntity:
    """An entity predicted in an example: wordpiece span [start, end), type id, characters."""

    start: int
    end: int
    label: int
    char_start: int
    char_end: int


def bio_to_spans(tags: np.ndarray, length: int) -> list[tuple[int, int, int]]:
    """(start, end, type id) spans of BIO tag ids over wordpieces 1..length-2 (seqeval rules)."""
    spans, current = [], None
    for i in range(1, length - 1):
        tag = int(tags[i])
        kind = (tag - 1) // 2 if tag else -1
        inside = tag > 0 and (tag - 1) % 2 == 1
        if current and inside and kind == current[2]:
            current[1] = i + 1
            continue
        if current:
            spans.append(tuple(current))
        current = [i, i + 1, kind] if tag else None
    if current:
        spans.append(tuple(current))
    return spans


def decode_example(example: Example, tags: np.ndarray, relations_out=None, anchor: str = "first"):
    """Entities and relations predicted for one example.

    Args:
      tags: int [L] predicted BIO tag ids (padded length L >= example.length), or None for a
        model without NER: the example's gold entities are then the predicted ones.
      relations_out: None, or (labels int [L, L] best relation label of each anchor pair,
        probs float [L, L] its probability).
    Returns:
      (entities: list[PredictedEntity], relations: list[(head index, tail index, label, score)])
      where a relation is kept when its best label is not "none" (0).
    """
    if tags is None:
        tags = example.ner_tags
    entities = [
        PredictedEntity(s, e, k, int(example.offsets[s][0]), int(example.offsets[e - 1][1]))
        for s, e, k in bio_to_spans(tags, example.length)
    ]
    relations = []
    if relations_out is not None and len(entities) > 1:
        labels, probs = relations_out
        anchors = np.array([e.start if anchor == "first" else e.end - 1 for e in entities])
        best = labels[np.ix_(anchors, anchors)]  # [E, E]
        score = probs[np.ix_(anchors, anchors)]
        for h, t in zip(*np.nonzero(best), strict=True):
            if h != t:
                relations.append((int(h), int(t), int(best[h, t]), float(score[h, t])))
    return entities, relations


def gold_pair_predictions(example: Example, relation_labels: np.ndarray, anchor: str = "first"):
    """(head, tail, label) predicted between the example's gold entities (gs-based RE).

    ``relation_labels``: int [L, L] best relation label of each anchor pair.
    """
    anchors = [example.anchor(i, anchor) for i in range(len(example.entities))]
    out = []
    for h, a in enumerate(anchors):
        for t, b in enumerate(anchors):
            label = int(relation_labels[a, b])
            if h != t and label:
                out.append((h, t, label))
    return out


class Counts:
    """True positives, false positives and false negatives per type; add, then score."""

    def __init__(self):
        self.tp, self.fp, self.fn = (collections.Counter() for _ in range(3))

    def add(self, predicted, gold, type_of) -> None:
        """Counts two sets of hashable items; ``type_of(item)`` names the type of an item."""
        predicted, gold = set(predicted), set(gold)
        for item in predicted & gold:
            self.tp[type_of(item)] += 1
        for item in predicted - gold:
            self.fp[type_of(item)] += 1
        for item in gold - predicted:
            self.fn[type_of(item)] += 1

    @staticmethod
    def _prf(tp: int, fp: int, fn: int) -> dict:
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}

    def scores(self, types=None) -> dict:
        """Micro P/R/F1, macro F1 over ``types`` (default: every type seen), per type."""
        types = (
            list(types) if types is not None else sorted(set(self.tp) | set(self.fp) | set(self.fn))
        )
        per_type = {t: self._prf(self.tp[t], self.fp[t], self.fn[t]) for t in types}
        total = self._prf(sum(self.tp.values()), sum(self.fp.values()), sum(self.fn.values()))
        total["macro_f1"] = (
            float(np.mean([s["f1"] for s in per_type.values()])) if per_type else 0.0
        )
        total["per_type"] = per_type
        return total


class Scorer:
    """Accumulates NER, RE gs-based and RE end-to-end counts over a split's examples."""

    def __init__(self, entity_types, relation_labels, anchor: str = "first"):
        self.entity_types = list(entity_types)
        self.relation_labels = list(relation_labels)
        self.anchor = anchor
        self.ner = Counts()
        self.re_gs = Counts()
        self.re_e2e_strict = Counts()
        self.re_e2e_boundaries = Counts()

    def add(self, key, example: Example, tags, relations_out=None):
        """Scores one example; ``key`` identifies it (e.g. its index) so items never collide.

        ``tags``: int [L] predicted BIO ids, or None for a model without NER (gold entities
        are then used as the predicted ones). ``relations_out``: (labels [L, L], probs [L, L]).
        """
        entities, relations = decode_example(example, tags, relations_out, self.anchor)
        name = lambda label: self.entity_types[label]  # noqa: E731
        rel_name = lambda label: self.relation_labels[label]  # noqa: E731
        gold_entities = {(key, s.start, s.end, s.label) for s in example.entities}
        self.ner.add(
            {(key, e.start, e.end, e.label) for e in entities},
            gold_entities,
            lambda item: name(item[3]),
        )
        if relations_out is None:
            return
        gold_rel = {(key, h, t, label) for h, t, label in example.relations}
        self.re_gs.add(
            {
                (key, h, t, label)
                for h, t, label in gold_pair_predictions(example, relations_out[0], self.anchor)
            },
            gold_rel,
            lambda item: rel_name(item[3]),
        )

        def triples(spans, rels, with_types):
            out = set()
            for h, t, label in rels:
                a, b = spans[h], spans[t]
                head = (a.start, a.end, a.label) if with_types else (a.start, a.end)
                tail = (b.start, b.end, b.label) if with_types else (b.start, b.end)
                out.add((key, head, tail, label))
            return out

        predicted = [(h, t, label) for h, t, label, _ in relations]
        for counts, typed in ((self.re_e2e_strict, True), (self.re_e2e_boundaries, False)):
            counts.add(
                triples(entities, predicted, typed),
                triples(example.entities, example.relations, typed),
                lambda item: rel_name(item[3]),
            )

    def results(self) -> dict:
        """{"ner", "re_gs", "re_e2e", "re_e2e_boundaries"}: each micro P/R/F1 + per_type."""
        relations = self.relation_labels[1:]
        return {
            "ner": self.ner.scores(self.entity_types),
            "re_gs": self.re_gs.scores(relations),
            "re_e2e": self.re_e2e_strict.scores(relations),
            "re_e2e_boundaries": self.re_e2e_boundaries.scores(relations),
        }
