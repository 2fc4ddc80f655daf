"""What DuckDB and PostgreSQL stores share: the schema, the run's identity, chunks as
transactions, resuming, and the totals. A backend (:mod:`~jointre_jax.store.duck`,
:mod:`~jointre_jax.store.postgres`) only connects, runs statements and inserts rows."""

from __future__ import annotations

import contextlib
import dataclasses

from jointre_jax import __version__
from jointre_jax.errors import UserError
from jointre_jax.store import schema


class SqlStore:
    """A database output: one run's rows, written a chunk per transaction.

    Subclasses define ``execute(sql, params=())`` (statements use ``?`` placeholders),
    ``fetchall(sql, params=())``, ``insert(table, columns, rows)`` (bulk, inside the open
    transaction) and ``transaction()`` (a context manager: commit on exit, roll back on an
    error); ``lock_schema()`` serialises concurrent schema creation where writers can race.
    """

    name: str  # the output as the user gave it, for messages

    def lock_schema(self) -> None:
        """Nothing to serialise by default (one writer per DuckDB file)."""

    def open(self, identity: schema.RunIdentity) -> None:
        """Creates the schema where it is missing and registers ``identity``; a store made by
        another run (model, config, input, chunking) is refused by name."""
        with self.transaction():
            self.lock_schema()
            for statement in schema.ddl():
                self.execute(statement)
            found = self.fetchall(
                "SELECT model, model_digest, config_digest, input, chunk_records, lenient, "
                "schema_version FROM runs"
            )
            if not found:
                self.execute(
                    "INSERT INTO runs (run_key, model, model_digest, config_digest, input, "
                    "chunk_records, lenient, version, schema_version) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (identity.key, identity.model, identity.model_digest, identity.config_digest,
                     identity.input, identity.chunk_records, identity.lenient, __version__,
                     schema.SCHEMA_VERSION),
                )  # fmt: skip
                return
        *fields, version = found[0]
        if version != schema.SCHEMA_VERSION:
            raise UserError(f"--output={self.name} has schema version {version}, this project "
                            f"writes {schema.SCHEMA_VERSION}: choose a new output")  # fmt: skip
        theirs = schema.RunIdentity(*fields)
        if theirs.key != identity.key:
            raise UserError(
                f"--output={self.name} holds the rows of another run: "
                + "; ".join(identity.differences(theirs))
                + ". Its rows are never mixed with this run's: choose another --output, or "
                "delete it to start again"
            )

    def committed(self) -> dict[int, str]:
        """{chunk index: input digest} of every committed chunk (of every shard)."""
        return dict(self.fetchall("SELECT chunk, digest FROM chunks"))

    def write(self, chunk, extractions, shard: int, num_shards: int) -> dict[str, int]:
        """Writes a chunk's rows, its skipped records and its ``chunks`` row in one
        transaction: after a crash, a chunk is all there or not at all. Returns its counts."""
        rows = schema.rows(extractions, chunk.index)
        rows["skipped"] = [(chunk.index, s.source, s.reason, s.message) for s in chunk.skips]
        counts = schema.counts(extractions)
        with self.transaction():
            for table, table_rows in rows.items():
                if table_rows:
                    self.insert(table, schema.COLUMNS[table], table_rows)
            self.insert("chunks", schema.CHUNK_COLUMNS, [(
                chunk.index, shard, num_shards, chunk.first_entry, len(chunk.entries),
                len(chunk.records), len(chunk.skips), counts["criteria"], counts["entities"],
                counts["relations"], chunk.digest,
            )])  # fmt: skip
        return counts

    def finish(self, shard: int, num_shards: int, chunks: int) -> None:
        """Records that ``shard`` of ``num_shards`` went through the whole input (``chunks``
        chunks in all)."""
        with self.transaction():
            self.execute("DELETE FROM shards WHERE shard = ? AND num_shards = ?",
                         (shard, num_shards))  # fmt: skip
            self.execute("INSERT INTO shards (shard, num_shards, chunks) VALUES (?, ?, ?)",
                         (shard, num_shards, chunks))  # fmt: skip

    def totals(self) -> Totals:
        """What the store holds now, over every shard."""
        (chunks, entries, records, skipped, criteria, entities, relations), = self.fetchall(
            "SELECT count(*), coalesce(sum(entries), 0), coalesce(sum(records), 0), "
            "coalesce(sum(skipped), 0), coalesce(sum(criteria), 0), "
            "coalesce(sum(entities), 0), coalesce(sum(relations), 0) FROM chunks"
        )  # fmt: skip
        reasons = dict(self.fetchall("SELECT reason, count(*) FROM skipped GROUP BY reason"))
        return Totals(*(int(x) for x in (chunks, entries, records, skipped, criteria, entities,
                                          relations)), reasons)  # fmt: skip

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.connection.close()


@dataclasses.dataclass
class Totals:
    """Counts over a store's committed chunks."""

    chunks: int
    entries: int
    records: int
    skipped: int
    criteria: int
    entities: int
    relations: int
    reasons: dict
