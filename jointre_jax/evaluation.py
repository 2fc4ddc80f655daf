"""The P/R/F1 scorers of predictions, against two golds.

* **Encoded gold** (:class:`Scorer`): the entities and relations the data pipeline kept in the
  examples (what the label scheme can hold; the data report says how much of the annotation
  that is). NER strict (word span and type), micro and per type; RE among gold entities; RE
  end-to-end among predicted entities, ``strict`` (both spans, both types and the relation
  type) and ``boundaries`` (both spans and the relation type).
* **Corpus gold** (:class:`CorpusGold`, :class:`CorpusScorer`): every entity and relation of
  the kept types as written in the ``.ann`` files: discontinuous, nested, overlapping and
  cross-line entities included, OR groups expanded as the schema says. A predicted entity
  matches when its type and its character span(s) equal a gold one; whatever the encoding
  cannot represent counts as a miss. This is the gold to compare with other systems.

Counts are integers aggregated over the whole split; precision, recall and F1 are computed once
at the end.
"""

from __future__ import annotations

import collections

import numpy as np

from jointre_jax.data.brat import Document
from jointre_jax.data.encode import Example
from jointre_jax.data.schema import Schema
from jointre_jax.labels import fragment_link_label, merge_fragments
from jointre_jax.predictor import Prediction


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
    """Accumulates NER, RE among gold entities and RE end-to-end counts against the encoded
    gold of a split's examples."""

    def __init__(self, entity_types, relation_labels):
        self.entity_types = list(entity_types)
        self.relation_labels = list(relation_labels)
        self.ner = Counts()
        self.re_gs = Counts()
        self.re_e2e_strict = Counts()
        self.re_e2e_boundaries = Counts()
        self.overflow = 0

    def gold(self, example: Example):
        """The encoded gold of ``example``: entities [(word spans, type id)] and relations
        [(head, tail, label)] into them; discontinuous entities read back from their fragments
        and links (``model.discontinuous``), the links left out."""
        num_types = len(self.entity_types)
        if all(e.label < num_types for e in example.entities):
            return [(((e.start, e.end),), e.label) for e in example.entities], example.relations
        spans = [(e.start, e.end) for e in example.entities]
        labels = [e.label for e in example.entities]
        link = fragment_link_label(len(self.relation_labels))
        entities, relations, _ = merge_fragments(spans, labels, example.relations, num_types, link)
        return entities, relations

    def add(self, key, example: Example, prediction: Prediction) -> None:
        """Scores one example; ``key`` identifies it (e.g. its index) so items never collide."""
        self.overflow += prediction.overflow
        entities = [(e.word_spans, e.label) for e in prediction.entities]
        gold_entities, gold_relations = self.gold(example)
        name = lambda label: self.entity_types[label]  # noqa: E731
        rel_name = lambda label: self.relation_labels[label]  # noqa: E731
        self.ner.add(
            {(key, spans, label) for spans, label in entities},
            {(key, spans, label) for spans, label in gold_entities},
            lambda item: name(item[2]),
        )
        if prediction.gold_relations is None:
            return
        # Among gold entities (a discontinuous one stands at its first fragment), links aside.
        link = fragment_link_label(len(self.relation_labels))
        self.re_gs.add(
            {(key, h, t, lab) for h, t, lab in prediction.gold_relations if lab != link},
            {(key, h, t, lab) for h, t, lab in example.relations if lab != link},
            lambda item: rel_name(item[3]),
        )

        def triples(items, rels, with_types):
            """(key, head, tail, label): head and tail are (word spans, type), or the spans."""
            side = (lambda i: items[i]) if with_types else (lambda i: items[i][0])  # noqa: E731
            return {(key, side(h), side(t), label) for h, t, label, *_ in rels}

        for counts, typed in ((self.re_e2e_strict, True), (self.re_e2e_boundaries, False)):
            counts.add(
                triples(entities, prediction.relations, typed),
                triples(gold_entities, gold_relations, typed),
                lambda item: rel_name(item[3]),
            )

    def results(self) -> dict:
        """{"ner", "re_gs", "re_e2e", "re_e2e_boundaries"}: each micro P/R/F1 + per_type, and
        ``entity_overflow``: decoded entities beyond the table's slots (not scored)."""
        relations = self.relation_labels[1:]
        return {
            "ner": self.ner.scores(self.entity_types),
            "re_gs": self.re_gs.scores(relations),
            "re_e2e": self.re_e2e_strict.scores(relations),
            "re_e2e_boundaries": self.re_e2e_boundaries.scores(relations),
            "entity_overflow": self.overflow,
        }


def entity_key(doc_text: str, entity) -> tuple[tuple[int, int], ...]:
    """The character span(s) of a gold entity as scored: its fragments, or one span when the
    text between its fragments is exactly its mention (a lossless merge, as the encoder does)."""
    if len(entity.fragments) > 1 and doc_text[entity.start : entity.end] == entity.text:
        return ((entity.start, entity.end),)
    return tuple(entity.fragments)


class CorpusGold:
    """Every entity and relation of the kept types of some documents, as scored keys.

    Entities: ``(doc_id, type, spans)``; relations: ``(doc_id, label name, head entity key,
    tail entity key)``. Duplicate annotations collapse into one key.
    """

    def __init__(self, schema: Schema):
        self.schema = schema
        self.entities: set = set()
        self.relations: set = set()
        self.documents: set[str] = set()

    def restricted(self, doc_ids) -> CorpusGold:
        """The gold of the documents ``doc_ids`` only."""
        doc_ids = set(doc_ids)
        out = CorpusGold(self.schema)
        out.documents = self.documents & doc_ids
        out.entities = {e for e in self.entities if e[0] in doc_ids}
        out.relations = {r for r in self.relations if r[0] in doc_ids}
        return out

    def add_document(self, doc: Document) -> None:
        """Adds the gold of one document (read leniently: entities with problems count too)."""
        self.documents.add(doc.doc_id)
        keys = {}
        for entity in doc.entities.values():
            label = self.schema.entity_type_id(entity.type)
            if label is None:
                continue
            keys[entity.id] = (self.schema.entity_types[label], entity_key(doc.text, entity))
            self.entities.add((doc.doc_id, *keys[entity.id]))
        names = self.schema.relation_labels
        pairs = []
        for rel in doc.relations:
            label = self.schema.relation_label(rel.type, group=False)
            if label is not None:
                pairs.append((rel.arg1, rel.arg2, label))
        for group in doc.groups:
            label = self.schema.relation_label(group.type, group=True)
            if label is not None:
                pairs += [(h, t, label) for h, t in self.schema.expand_group(doc, group.members)]
        for head, tail, label in pairs:
            if head in keys and tail in keys and head != tail:
                self.relations.add((doc.doc_id, names[label], keys[head], keys[tail]))

    def to_dict(self) -> dict:
        return {
            "documents": len(self.documents),
            "entities": len(self.entities),
            "relations": len(self.relations),
        }


class CorpusScorer:
    """Scores predictions of examples against a :class:`CorpusGold` (character offsets in
    each document: an example's ``line_start`` plus the entity's offsets in its line)."""

    def __init__(self, gold: CorpusGold):
        self.gold = gold
        self.entities: set = set()
        self.relations_strict: set = set()
        self.relations_boundaries: set = set()

    def add(self, example: Example, prediction: Prediction) -> None:
        types = self.gold.schema.entity_types
        names = self.gold.schema.relation_labels
        keys = [
            (
                types[e.label],
                tuple((example.line_start + a, example.line_start + b) for a, b in e.char_spans),
            )
            for e in prediction.entities
        ]
        relations = [(names[label], keys[h], keys[t]) for h, t, label, _ in prediction.relations]
        self.add_keys(example.doc_id, keys, relations)

    def add_keys(self, doc_id: str, entities, relations) -> None:
        """Adds predictions already keyed: ``entities`` as ``(type, spans)`` (character spans
        in the document), ``relations`` as ``(relation type, head entity, tail entity)``."""
        self.entities.update((doc_id, *key) for key in entities)
        for name, head, tail in relations:
            self.relations_strict.add((doc_id, name, head, tail))
            self.relations_boundaries.add((doc_id, name, head[1], tail[1]))

    def results(self) -> dict:
        """{"ner", "re_e2e", "re_e2e_boundaries", "gold"} against the corpus gold."""
        ner, strict, bounds = Counts(), Counts(), Counts()
        ner.add(self.entities, self.gold.entities, lambda item: item[1])
        strict.add(self.relations_strict, self.gold.relations, lambda item: item[1])
        gold_bounds = {(d, r, h[1], t[1]) for d, r, h, t in self.gold.relations}
        bounds.add(self.relations_boundaries, gold_bounds, lambda item: item[1])
        relations = self.gold.schema.relation_labels[1:]
        return {
            "ner": ner.scores(self.gold.schema.entity_types),
            "re_e2e": strict.scores(relations),
            "re_e2e_boundaries": bounds.scores(relations),
            "gold": self.gold.to_dict(),
        }


def evaluate(predictor, examples, schema: Schema, corpus_gold=None, desc="eval") -> dict:
    """Scores of ``predictor`` on ``examples`` against the encoded gold, and with
    ``corpus_gold`` also against the corpus gold (the ``corpus`` block)."""
    scorer = Scorer(schema.entity_types, schema.relation_labels)
    corpus = CorpusScorer(corpus_gold) if corpus_gold is not None else None
    for index, prediction in predictor.predict(examples, desc):
        scorer.add(index, examples[index], prediction)
        if corpus is not None:
            corpus.add(examples[index], prediction)
    results = scorer.results()
    if corpus is not None:
        results["corpus"] = corpus.results()
    return results
