"""The store's one schema (DuckDB and PostgreSQL), the identity of a run, and its rows.

Tables (offsets are character offsets into the record's criteria string; ``start_offset`` /
``end_offset`` because ``end`` is a reserved word in SQL):

* ``criteria``: one row per criterion. ``nct_id`` (the record's NCT id; for plain-text input,
  the document's name), ``ordinal`` (1-based, in text order), ``section`` (inclusion,
  exclusion, none), ``line`` (where it begins in the criteria text), ``start_offset``,
  ``end_offset``, ``text``, ``windows`` (> 1: longer than the model's maximum length),
  ``chunk``. Key (nct_id, ordinal).
* ``entities``: ``nct_id``, ``ordinal`` (its criterion), ``entity_id`` (T1, T2, ... in the
  record), ``type``, ``start_offset``, ``end_offset``, ``text``, ``fragments`` (JSON
  [[start, end], ...] of a discontinuous entity, else NULL). Key (nct_id, entity_id).
* ``relations``: ``nct_id``, ``ordinal``, ``type``, ``head`` and ``tail`` (entity ids),
  ``score`` (the model's probability). Key (nct_id, head, tail, type).
* ``runs``: the one run that made the store: ``model`` (its run folders), ``model_digest``
  (of its parameters), ``config_digest``, ``input``, ``chunk_records``, ``lenient``, the
  project ``version``, ``schema_version`` and ``started_at``.
* ``chunks``: each committed chunk: ``chunk``, the ``shard`` that wrote it, ``first_entry``,
  ``entries`` (records read, good or bad), ``records``, ``skipped``, ``criteria``,
  ``entities``, ``relations``, ``digest`` (of its input), ``committed_at``.
* ``skipped``: each record that ``--lenient`` skipped: ``chunk``, ``source`` (file and line,
  or table and row), ``reason``, ``message``.
* ``shards``: each shard that finished: ``shard``, ``num_shards``, ``chunks`` (of the whole
  input), ``finished_at``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

SCHEMA_VERSION = 1

TABLES = {
    "runs": """
        run_key TEXT PRIMARY KEY,
        model TEXT NOT NULL,
        model_digest TEXT NOT NULL,
        config_digest TEXT NOT NULL,
        input TEXT NOT NULL,
        chunk_records INTEGER NOT NULL,
        lenient BOOLEAN NOT NULL,
        version TEXT NOT NULL,
        schema_version INTEGER NOT NULL,
        started_at TIMESTAMPTZ NOT NULL DEFAULT CURRENT_TIMESTAMP""",
    "chunks": """
        chunk INTEGER PRIMARY KEY,
        shard INTEGER NOT NULL,
        num_shards INTEGER NOT NULL,
        first_entry BIGINT NOT NULL,
        entries INTEGER NOT NULL,
        records INTEGER NOT NULL,
        skipped INTEGER NOT NULL,
        criteria INTEGER NOT NULL,
        entities INTEGER NOT NULL,
        relations INTEGER NOT NULL,
        digest TEXT NOT NULL,
        committed_at TIMESTAMPTZ NOT NULL DEFAULT CURRENT_TIMESTAMP""",
    "criteria": """
        nct_id TEXT NOT NULL,
        ordinal INTEGER NOT NULL,
        section TEXT NOT NULL,
        line INTEGER NOT NULL,
        start_offset INTEGER NOT NULL,
        end_offset INTEGER NOT NULL,
        text TEXT NOT NULL,
        windows INTEGER NOT NULL,
        chunk INTEGER NOT NULL,
        PRIMARY KEY (nct_id, ordinal)""",
    "entities": """
        nct_id TEXT NOT NULL,
        ordinal INTEGER NOT NULL,
        entity_id TEXT NOT NULL,
        type TEXT NOT NULL,
        start_offset INTEGER NOT NULL,
        end_offset INTEGER NOT NULL,
        text TEXT NOT NULL,
        fragments TEXT,
        PRIMARY KEY (nct_id, entity_id)""",
    "relations": """
        nct_id TEXT NOT NULL,
        ordinal INTEGER NOT NULL,
        type TEXT NOT NULL,
        head TEXT NOT NULL,
        tail TEXT NOT NULL,
        score DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (nct_id, head, tail, type)""",
    "skipped": """
        chunk INTEGER NOT NULL,
        source TEXT NOT NULL,
        reason TEXT NOT NULL,
        message TEXT NOT NULL""",
    "shards": """
        shard INTEGER NOT NULL,
        num_shards INTEGER NOT NULL,
        chunks INTEGER NOT NULL,
        finished_at TIMESTAMPTZ NOT NULL DEFAULT CURRENT_TIMESTAMP,
        PRIMARY KEY (shard, num_shards)""",
}
# What the README's queries filter and join on (the keys index the rest).
INDEXES = {
    "criteria_section": "criteria (section)",
    "entities_criterion": "entities (nct_id, ordinal)",
    "entities_type": "entities (type, text)",
    "relations_criterion": "relations (nct_id, ordinal)",
    "relations_type": "relations (type)",
}
# The data tables' columns, in the order of the rows below.
COLUMNS = {
    "criteria": ("nct_id", "ordinal", "section", "line", "start_offset", "end_offset", "text",
                 "windows", "chunk"),
    "entities": ("nct_id", "ordinal", "entity_id", "type", "start_offset", "end_offset", "text",
                 "fragments"),
    "relations": ("nct_id", "ordinal", "type", "head", "tail", "score"),
    "skipped": ("chunk", "source", "reason", "message"),
}  # fmt: skip
CHUNK_COLUMNS = ("chunk", "shard", "num_shards", "first_entry", "entries", "records", "skipped",
                 "criteria", "entities", "relations", "digest")  # fmt: skip


def ddl() -> list[str]:
    """The statements that create the schema where it is missing (both backends)."""
    tables = [f"CREATE TABLE IF NOT EXISTS {name} ({body}\n)" for name, body in TABLES.items()]
    indexes = [f"CREATE INDEX IF NOT EXISTS {name} ON {on}" for name, on in INDEXES.items()]
    return tables + indexes


@dataclasses.dataclass(frozen=True)
class RunIdentity:
    """What makes a store's rows what they are; a store made by another is refused by name.

    ``model``: the run folder(s) (for the message); ``model_digest``: sha256 of the
    parameters; ``config_digest``: of the run's config less what cannot change a prediction
    (devices, sharding); ``input``: the input as given (a path resolved, a URL without its
    password, and its table); ``chunk_records``: records per chunk (chunks are the unit of
    resuming and sharding); ``lenient``."""

    model: str
    model_digest: str
    config_digest: str
    input: str
    chunk_records: int
    lenient: bool

    @property
    def key(self) -> str:
        """Digest of every field but ``model`` (a run moved to another folder is the same)."""
        fields = dataclasses.asdict(self)
        fields.pop("model")
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]

    def differences(self, other: RunIdentity) -> list[str]:
        """The fields (by name, with both values) in which ``other`` differs."""
        out = []
        for field in ("model_digest", "config_digest", "input", "chunk_records", "lenient"):
            mine, theirs = getattr(self, field), getattr(other, field)
            if mine != theirs:
                label = "model" if field == "model_digest" else field
                shown = f"{other.model} ({theirs[:12]})" if field == "model_digest" else theirs
                out.append(f"{label} {shown!s} (this run: {mine!s})")
        return out


def counts(extractions) -> dict[str, int]:
    """How many ``criteria``, ``entities`` and ``relations`` rows :func:`rows` gives."""
    criteria = [c for extraction in extractions for c in extraction.criteria]
    return {
        "criteria": len(criteria),
        "entities": sum(len(c.entities) for c in criteria),
        "relations": sum(len(c.relations) for c in criteria),
    }


def rows(extractions, chunk: int) -> dict[str, list[tuple]]:
    """The ``criteria``, ``entities`` and ``relations`` rows of a chunk's extractions
    (:class:`~jointre_jax.extraction.DocumentExtraction`), in text order."""
    out = {"criteria": [], "entities": [], "relations": []}
    for extraction in extractions:
        for ordinal, c in enumerate(extraction.criteria, start=1):
            nct_id = c.nct_id or extraction.doc_id
            out["criteria"].append((nct_id, ordinal, c.section, c.line, c.start, c.end, c.text,
                                    c.windows, chunk))  # fmt: skip
            for e in c.entities:
                fragments = json.dumps([list(s) for s in e.fragments]) if e.fragments else None
                out["entities"].append((nct_id, ordinal, e.id, e.type, e.start, e.end, e.text,
                                        fragments))  # fmt: skip
            for r in c.relations:
                out["relations"].append((nct_id, ordinal, r.type, r.head, r.tail, r.score))
    return out
