"""Majority votes of saved extractions, and their scores against the corpus gold.

An ensemble whose members never share a machine: each run writes its extraction of the same
documents (``jointre extract --format=jsonl``, gzipped or not), and the vote keeps
each entity (its type and character spans) and each relation (its type and its two entities)
that at least ``min_votes`` of the runs predict (default: a strict majority). The ensemble of
``--ensemble`` (mean probabilities, :func:`jointre_jax.steps.predict_step`) needs every
member's parameters in one process; a vote needs only the members' outputs, which are small
enough to keep beside the results they gave.

A relation the vote keeps always has both of its entities kept: every run that predicts the
relation predicts its two entities. A kept relation's score is the mean of the scores of the
runs that predict it.

:func:`score` counts an extraction against the corpus gold exactly as the ``corpus`` block of
``evaluate`` counts the same run's predictions (:class:`~jointre_jax.evaluation.CorpusScorer`,
the same keys).
"""

from __future__ import annotations

import collections
import dataclasses
import gzip
import json
import pathlib
from collections.abc import Sequence

from jointre_jax.data.corpus import find_documents, read_or_skip, read_split_ids
from jointre_jax.data.schema import Schema
from jointre_jax.errors import UserError
from jointre_jax.evaluation import CorpusGold, CorpusScorer
from jointre_jax.extraction import Entity, Relation

# The fields of a criterion of extract's jsonl output that a vote reads.
CRITERION_FIELDS = ("doc_id", "line", "start", "end", "text", "entities", "relations")
ENTITY_FIELDS = ("id", "type", "start", "end", "text")
RELATION_FIELDS = ("type", "head", "tail", "score")


def read_extraction(path: str | pathlib.Path) -> list[dict]:
    """The criteria of one ``extract --format=jsonl`` file (``*.gz``: gzipped), in file order.

    A line that is not such a criterion (not JSON, a field missing, a relation naming an
    entity the criterion lacks) stops with the file and line.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise UserError(f"{path}: extraction file not found")
    opener = gzip.open if path.suffix == ".gz" else open
    criteria = []
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if line.strip():
                    criteria.append(_criterion(json.loads(line), path, number))
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError) as err:
        raise UserError(f"{path}: not a UTF-8 jsonl file (or a broken .gz): {err}") from err
    except json.JSONDecodeError as err:
        raise UserError(f"{path}:{number}: not JSON: {err.msg}") from err
    return criteria


def _criterion(record, path, number: int) -> dict:
    """``record`` checked as a criterion of extract's jsonl (see :func:`read_extraction`)."""

    def need(item, fields, what):
        missing = [k for k in fields if not isinstance(item, dict) or k not in item]
        if missing:
            raise UserError(
                f"{path}:{number}: {what} lacks {', '.join(missing)} (expected the jsonl of "
                "python -m jointre_jax.tools.extract --format=jsonl)"
            )

    need(record, CRITERION_FIELDS, "criterion")
    for entity in record["entities"]:
        need(entity, ENTITY_FIELDS, "an entity")
    ids = [e["id"] for e in record["entities"]]
    if len(set(ids)) != len(ids):
        raise UserError(f"{path}:{number}: two entities of the criterion share an id")
    for relation in record["relations"]:
        need(relation, RELATION_FIELDS, "a relation")
        for end in ("head", "tail"):
            if relation[end] not in ids:
                raise UserError(
                    f"{path}:{number}: relation {relation['type']} names {end} "
                    f"{relation[end]!r}, which is no entity of its criterion"
                )
    return record


def entity_key(entity: dict) -> tuple[str, tuple[tuple[int, int], ...]]:
    """``(type, spans)`` of an extracted entity: its ``fragments``, or its one span."""
    spans = entity.get("fragments") or [[entity["start"], entity["end"]]]
    return entity["type"], tuple((int(a), int(b)) for a, b in spans)


def criterion_keys(criterion: dict) -> tuple[list, list]:
    """(entity keys, relation keys ``(type, head key, tail key)``) of one criterion."""
    keys = {e["id"]: entity_key(e) for e in criterion["entities"]}
    relations = [(r["type"], keys[r["head"]], keys[r["tail"]]) for r in criterion["relations"]]
    return list(keys.values()), relations


def majority(runs: int) -> int:
    """The votes of a strict majority of ``runs``."""
    return runs // 2 + 1


def vote(
    runs: Sequence[list[dict]], min_votes: int | None = None, names: Sequence[str] = ()
) -> list[dict]:
    """The voted extraction of several runs' extractions of the same documents.

    Args:
      runs: each run's criteria (:func:`read_extraction`), the same criteria in the same order.
      min_votes: how many runs must predict an entity or relation (default: a majority).
      names: a name for each run (its file), for errors.
    Returns:
      criteria in the form of extract's jsonl: each run's first criterion fields, the kept
      entities (sorted by spans, then type; numbered T1, T2, ... through each document) and
      the kept relations (score: the mean over the runs that predict it).
    """
    names = list(names) or [f"run {k + 1}" for k in range(len(runs))]
    if not runs:
        raise UserError("a vote needs at least one extraction")
    min_votes = majority(len(runs)) if min_votes is None else min_votes
    if not 1 <= min_votes <= len(runs):
        raise UserError(f"min_votes {min_votes} not in [1, {len(runs)}] for {len(runs)} runs")
    where = lambda c: (c["doc_id"], c["line"], c["start"], c["end"])  # noqa: E731
    for name, run in zip(names[1:], runs[1:], strict=True):
        if [where(c) for c in run] != [where(c) for c in runs[0]]:
            raise UserError(
                f"{name}: its criteria (doc_id, line, offsets) differ from those of {names[0]}: "
                "a vote needs extractions of the same documents with the same input"
            )
    voted, numbered = [], collections.Counter()
    for criteria in zip(*runs, strict=True):
        entities, relations = collections.Counter(), collections.Counter()
        texts, scores = {}, collections.defaultdict(list)  # the first text, every score
        for criterion in criteria:
            keys, rels = criterion_keys(criterion)
            entities.update(set(keys))
            for key, entity in zip(keys, criterion["entities"], strict=True):
                texts.setdefault(key, entity["text"])
            relations.update(set(rels))
            for rel, relation in zip(rels, criterion["relations"], strict=True):
                scores[rel].append(float(relation["score"]))
        out = {k: v for k, v in criteria[0].items() if k not in ("entities", "relations")}
        doc, ids = out["doc_id"], {}
        out["entities"] = []
        kept = sorted((k for k, n in entities.items() if n >= min_votes), key=lambda k: k[::-1])
        for kind, spans in kept:
            numbered[doc] += 1
            ids[kind, spans] = f"T{numbered[doc]}"
            entity = Entity.from_spans(ids[kind, spans], kind, spans, texts[kind, spans])
            out["entities"].append(entity.to_dict())
        out["relations"] = [
            dataclasses.asdict(
                Relation(kind, ids[head], ids[tail], _mean(scores[kind, head, tail]))
            )
            for (kind, head, tail), n in sorted(relations.items(), key=_relation_order)
            if n >= min_votes
        ]
        voted.append(out)
    return voted


def _mean(scores: list[float]) -> float:
    """The mean of a kept relation's scores, to 4 decimals as ``extract`` writes a score."""
    return round(sum(scores) / len(scores), 4)


def _relation_order(item):
    (kind, head, tail), _ = item
    return head[::-1], tail[::-1], kind


def corpus_gold(
    schema: Schema, brat_dir, split_file=None, lenient: bool = True
) -> tuple[CorpusGold, list[str]]:
    """(the corpus gold of ``brat_dir``'s documents, restricted to ``split_file``'s when given;
    the messages of documents that could not be read, skipped as ``evaluate`` skips them in
    lenient mode)."""
    ids = read_split_ids(split_file) if split_file else None
    gold, skipped = CorpusGold(schema), []
    for path in find_documents(brat_dir, ids, split_file):
        doc, problem = read_or_skip(path, lenient)
        if doc is None:
            skipped.append(problem)
        else:
            gold.add_document(doc)
    return gold, skipped


def score(criteria: Sequence[dict], gold: CorpusGold, name: str = "the extraction") -> dict:
    """Scores of an extraction against ``gold`` (``CorpusScorer.results``: ``ner``,
    ``re_e2e``, ``re_e2e_boundaries``, ``gold``). Documents the gold lacks, or gold documents
    with entities that the extraction lacks (another split?), are an error naming ``name``."""
    extracted = {c["doc_id"] for c in criteria}
    unknown = sorted(extracted - gold.documents)
    if unknown:
        raise UserError(
            f"{name}: {len(unknown)} document(s) not in the gold, e.g. {unknown[0]!r}: score an "
            "extraction against the folder and split it was extracted from"
        )
    missing = sorted({e[0] for e in gold.entities} - extracted)
    if missing:
        raise UserError(
            f"{name}: lacks {len(missing)} gold document(s) that hold entities, e.g. "
            f"{missing[0]!r}: was it extracted from another split?"
        )
    scorer = CorpusScorer(gold)
    for criterion in criteria:
        scorer.add_keys(criterion["doc_id"], *criterion_keys(criterion))
    return scorer.results()
