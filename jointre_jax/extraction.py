"""From raw criteria text to entities and relations: ``Extractor.load(MODEL).extract(texts)``.

A text is one document: every non-blank line is a criterion (``\\n``, ``\\r\\n`` or ``\\r``
breaks; blank lines give nothing). A line longer than the model's maximum length is cut into
windows at word boundaries (never truncated); each window is predicted on its own and their
entities are merged back into the line, so relations only join entities of one window.
Offsets are character (code point) offsets into the text exactly as given: CRLF, tabs, Unicode
and trailing spaces included, so ``text[start:end] == entity.text`` holds for every contiguous
entity (a discontinuous one joins its ``fragments``' slices by single spaces).

Entities are whole words (the tokenizer's pre-tokenized words): an entity never begins or ends
inside a word. Batches are the run's packed rows (one shape; a run trained before packing:
its length buckets), so a long-lived ``Extractor`` compiles each shape once and reuses it for
every later call.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Iterable, Sequence

from jointre_jax import inference
from jointre_jax.data import trials
from jointre_jax.data.accounting import Accounting
from jointre_jax.data.brat import Document


@dataclasses.dataclass(frozen=True)
class Entity:
    """An extracted entity: ``text[start:end]`` of its document, of type ``type``.

    A discontinuous one (``model.discontinuous``) lists its ``fragments`` [[start, end]] in
    the document, in text order; ``start``/``end`` are then their extent and ``text`` their
    slices joined by single spaces, as BRAT writes it. Empty for a contiguous entity.
    """

    id: str
    type: str
    start: int
    end: int
    text: str
    fragments: tuple[tuple[int, int], ...] = ()

    @classmethod
    def from_spans(cls, entity_id: str, kind: str, spans, text: str) -> Entity:
        """The entity of character ``spans`` [(start, end)] in text order: one span, a
        contiguous entity; more, its fragments."""
        spans = tuple((int(a), int(b)) for a, b in spans)
        fragments = spans if len(spans) > 1 else ()
        return cls(entity_id, kind, spans[0][0], spans[-1][1], text, fragments)

    @property
    def spans(self) -> tuple[tuple[int, int], ...]:
        """Its character span(s) in the document: the fragments, or the one span."""
        return self.fragments or ((self.start, self.end),)

    def to_dict(self) -> dict:
        """JSON-ready dict of the fields above (``fragments`` as [[start, end]])."""
        return {**dataclasses.asdict(self), "fragments": [list(s) for s in self.fragments]}


@dataclasses.dataclass(frozen=True)
class Relation:
    """``type`` from entity ``head`` to entity ``tail`` (ids), with the model's probability."""

    type: str
    head: str
    tail: str
    score: float


@dataclasses.dataclass
class Criterion:
    """One criterion line of a document and what was extracted from it."""

    doc_id: str
    line: int  # 1-based line number in the document
    start: int  # character offset of the line in the document
    end: int
    text: str
    entities: list[Entity] = dataclasses.field(default_factory=list)
    relations: list[Relation] = dataclasses.field(default_factory=list)
    windows: int = 1  # > 1: the line was longer than the model's maximum length
    nct_id: str = ""  # the trial of a ClinicalTrials.gov record ("" for plain text)
    section: str = "none"  # "inclusion", "exclusion" or "none" (plain text: "none")

    def to_dict(self) -> dict:
        """JSON-ready dict: the fields above, entities and relations as dicts (an entity's
        ``fragments`` as [[start, end]], empty when it is contiguous)."""
        out = dataclasses.asdict(self)
        out["entities"] = [entity.to_dict() for entity in self.entities]
        return out


@dataclasses.dataclass
class DocumentExtraction:
    """Every criterion of one input document, and the document's text."""

    doc_id: str
    text: str
    criteria: list[Criterion]

    @property
    def entities(self) -> list[Entity]:
        return [e for c in self.criteria for e in c.entities]

    @property
    def relations(self) -> list[Relation]:
        return [r for c in self.criteria for r in c.relations]


class Extractor:
    """A trained run, ready to extract: ``extract(texts)`` -> ``list[DocumentExtraction]``."""

    def __init__(self, config, predictor, encoder):
        if config.model.method == "re":
            raise ValueError(
                "a standalone RE model needs gold entities; extraction from raw text needs a "
                "model with NER (method joint, ner or pipeline)"
            )
        self.config, self.predictor, self.encoder = config, predictor, encoder
        self.schema = encoder.schema

    @classmethod
    def load(cls, model: str | pathlib.Path, num_devices: int | None = None, members=()):
        """The model ``model`` names: a model folder (``jointre export``), its hub id, or a
        training run's folder (its best checkpoint). With ``members``, more models of its
        config: their ensemble (see :func:`jointre_jax.inference.load_run`)."""
        return cls(*inference.load_run(model, num_devices, None, tuple(members)))

    from_workdir = load  # the name of the days when only run folders loaded

    def extract(
        self, texts: str | Sequence[str], doc_ids: Sequence[str] | None = None, progress=False
    ) -> list[DocumentExtraction]:
        """Entities and relations of each text (one document each; see the module docstring).

        Args:
          texts: a string or a list of strings.
          doc_ids: a name for each text (default "0", "1", ...), used in BRAT/JSON output.
          progress: show a progress bar over batches.
        """
        if isinstance(texts, str):
            texts = [texts]
        doc_ids = list(doc_ids) if doc_ids is not None else [str(i) for i in range(len(texts))]
        if len(doc_ids) != len(texts):
            raise ValueError(f"{len(doc_ids)} doc_ids for {len(texts)} texts")
        return self.extract_encoded(texts, doc_ids, *self.encode(texts, doc_ids), progress)

    def extract_encoded(
        self, texts: Sequence[str], doc_ids: Sequence[str], examples, owners, progress=False
    ) -> list[DocumentExtraction]:
        """``extract`` from what ``encode(texts, doc_ids)`` returned: the model and the decoding
        only (the benchmark times the two halves of one pass)."""
        results = [DocumentExtraction(d, t, []) for d, t in zip(doc_ids, texts, strict=True)]
        if not examples:
            return results
        desc = "extracting" if progress else None
        decoded = dict(self.predictor.predict(examples, desc))
        numbered = [0] * len(texts)  # entities numbered so far in each document
        for index, example in enumerate(examples):
            owner = owners[index]
            numbered[owner] += self._add(results[owner], example, numbered[owner], decoded[index])
        return results

    def encode(self, texts: Sequence[str], doc_ids: Sequence[str]) -> tuple[list, list[int]]:
        """The model's examples of every criterion line of ``texts`` (long lines windowed), and
        for each example the index of the text it came from. No model is run."""
        examples, owners = [], []
        for number, (doc_id, text) in enumerate(zip(doc_ids, texts, strict=True)):
            doc = Document(doc_id, text, txt_path="", ann_path="")
            for example in self.encoder.encode_document(doc, Accounting()):
                examples.append(example)
                owners.append(number)
        return examples, owners

    def _add(self, result: DocumentExtraction, example, numbered: int, prediction) -> int:
        """Adds one example's predictions to ``result``, numbering its entities from
        T``numbered + 1``; returns how many entities it added."""
        criteria = result.criteria
        if not criteria or criteria[-1].line != example.line:
            start = example.line_start
            end = start + len(example.text)
            criteria.append(Criterion(result.doc_id, example.line, start, end, example.text))
        else:
            criteria[-1].windows += 1
        criterion = criteria[-1]
        ids = []
        for number, entity in enumerate(prediction.entities, start=numbered + 1):
            spans = [(criterion.start + a, criterion.start + b) for a, b in entity.char_spans]
            text = " ".join(result.text[a:b] for a, b in spans)
            kind = self.schema.entity_types[entity.label]
            entity_id = f"T{number}"
            criterion.entities.append(Entity.from_spans(entity_id, kind, spans, text))
            ids.append(entity_id)
        for head, tail, label, score in prediction.relations:
            kind = self.schema.relation_labels[label]
            criterion.relations.append(Relation(kind, ids[head], ids[tail], round(score, 4)))
        return len(ids)


def extract_trials(extractor: Extractor, records, progress=False) -> list[DocumentExtraction]:
    """Entities and relations of ClinicalTrials.gov records (:mod:`jointre_jax.data.trials`): one
    DocumentExtraction per record (``doc_id`` its NCT id, ``text`` its criteria string), one
    Criterion per criterion found, with its ``section`` and its ``start``/``end`` (and every
    entity's) as offsets into the record's criteria string."""
    spans = [trials.split_criteria(r.criteria) for r in records]
    texts = [trials.model_text(r.criteria, s) for r, s in zip(records, spans, strict=True)]
    results = extractor.extract(texts, [r.nct_id for r in records], progress)
    for record, found, result in zip(records, spans, results, strict=True):
        by_line = {c.start + len(c.text) - len(c.text.lstrip()): c for c in result.criteria}
        criteria = []
        for span in found:
            criterion = by_line.pop(span.start, None)
            if criterion is None:  # a criterion of spaces only: nothing to predict
                criterion = Criterion(record.nct_id, 0, span.start, span.end, "")
            criterion.start, criterion.end = span.start, span.end
            criterion.text = record.criteria[span.start : span.end]
            criterion.nct_id, criterion.section = record.nct_id, span.section
            criterion.line = span.line
            criterion.entities = [
                dataclasses.replace(e, text=record.criteria[e.start : e.end])
                for e in criterion.entities
            ]
            criteria.append(criterion)
        assert not by_line, f"{record.nct_id}: criteria the splitter did not find"
        result.text, result.criteria = record.criteria, criteria
    return results


def iter_records(extractions: Iterable[DocumentExtraction]):
    """Every criterion of ``extractions`` in order."""
    for extraction in extractions:
        yield from extraction.criteria
