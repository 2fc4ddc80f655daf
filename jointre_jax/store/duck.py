"""The embedded store: one DuckDB file (``--output=FILE.duckdb``), no server.

DuckDB lets one process write a file at a time, so shards of a job write one file each
(:func:`jointre_jax.store.shard_path`) and :func:`merge` joins them into one when all have
finished. Parquet is then one statement: ``COPY entities TO 'entities.parquet' (FORMAT parquet)``.
"""

from __future__ import annotations

import contextlib
import os
import pathlib

import duckdb
import numpy as np

from jointre_jax.errors import UserError
from jointre_jax.store import schema, shard_path
from jointre_jax.store.sql import SqlStore


def _connect(path: pathlib.Path, read_only: bool = False):
    try:
        return duckdb.connect(str(path), read_only=read_only)
    except duckdb.Error as err:
        first = str(err).splitlines()[0]
        raise UserError(f"--output={path}: not a DuckDB database it can open ({first})") from None


class DuckDBStore(SqlStore):
    """A DuckDB file; rows go in as column arrays (one scan per table and chunk)."""

    def __init__(self, path: str | pathlib.Path):
        self.path = pathlib.Path(path)
        self.name = str(path)
        self.connection = _connect(self.path)

    def execute(self, sql: str, params=()) -> None:
        self.connection.execute(sql, list(params))

    def fetchall(self, sql: str, params=()) -> list[tuple]:
        return self.connection.execute(sql, list(params)).fetchall()

    def insert(self, table: str, columns, rows) -> None:
        arrays = {
            name: np.array(values, dtype=object if any(isinstance(v, str | type(None))
                                                          for v in values) else None)
            for name, values in zip(columns, zip(*rows, strict=True), strict=True)
        }  # fmt: skip
        self.connection.register("chunk_rows", arrays)
        try:
            self.connection.execute(
                f"INSERT INTO {table} ({', '.join(columns)}) SELECT * FROM chunk_rows"
            )
        finally:
            self.connection.unregister("chunk_rows")

    def finish(self, shard: int, num_shards: int, chunks: int) -> None:
        """:meth:`SqlStore.finish`, then a checkpoint: the file holds every row, with no
        write-ahead log beside it; a failure (a full disk) is raised now, for
        :func:`jointre_jax.store.writing` to report, not lost in the closing."""
        super().finish(shard, num_shards, chunks)
        self.connection.execute("CHECKPOINT")

    @contextlib.contextmanager
    def transaction(self):
        self.connection.begin()
        try:
            yield
        except BaseException:
            with contextlib.suppress(duckdb.Error):
                self.connection.rollback()
            raise
        self.connection.commit()


def merge(path: str | pathlib.Path, num_shards: int) -> schema.RunIdentity:
    """Joins the shard files of ``path`` (:func:`jointre_jax.store.shard_path`) into
    ``path``: each must be of the same run and finished, and together they must hold every
    chunk once. The merged file is built beside and renamed into place; the shard files are
    then removed."""
    path = pathlib.Path(path)
    parts = [pathlib.Path(shard_path(str(path), i, num_shards)) for i in range(num_shards)]
    missing = [str(p) for p in parts if not p.is_file()]
    if missing:
        raise UserError(f"merge: no shard file {', '.join(missing)}: run those shards first")
    keys, expected = set(), None
    for shard, part in enumerate(parts):
        store = DuckDBStore(part)
        try:
            keys.add(store.fetchall("SELECT run_key FROM runs")[0][0])
            done = store.fetchall("SELECT chunks FROM shards WHERE shard = ? AND num_shards = ?",
                                  (shard, num_shards))  # fmt: skip
        finally:
            store.close()
        if not done:
            raise UserError(f"merge: {part} has not finished (shard {shard} of {num_shards}): "
                            "rerun that shard's command to complete it")  # fmt: skip
        expected = done[0][0]
    if len(keys) != 1:
        raise UserError(f"merge: the shard files of {path} were made by different runs")
    partial = path.with_name(f".{path.name}.merging")
    partial.unlink(missing_ok=True)
    target = DuckDBStore(partial)
    try:
        con = target.connection
        for statement in schema.ddl():
            con.execute(statement)
        for shard, part in enumerate(parts):
            quoted = str(part).replace("'", "''")
            con.execute(f"ATTACH '{quoted}' AS part (READ_ONLY)")
            tables = ["criteria", "entities", "relations", "skipped", "chunks", "shards"]
            if shard == 0:
                tables.insert(0, "runs")
            con.begin()
            for table in tables:
                con.execute(f"INSERT INTO {table} SELECT * FROM part.{table}")
            con.commit()
            con.execute("DETACH part")
        (chunks,) = con.execute("SELECT count(*) FROM chunks").fetchone()
        if chunks != expected:
            raise UserError(f"merge: the shards hold {chunks} chunks of {expected}")
        con.execute("DELETE FROM shards")
        con.execute("INSERT INTO shards (shard, num_shards, chunks) VALUES (0, 1, ?)", [expected])
        identity = schema.RunIdentity(*con.execute(
            "SELECT model, model_digest, config_digest, input, chunk_records, lenient FROM runs"
        ).fetchone())  # fmt: skip
        con.execute("CHECKPOINT")
    finally:
        target.close()
    os.replace(partial, path)
    for part in parts:
        part.unlink()
    return identity
