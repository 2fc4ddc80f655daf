"""PostgreSQL: the store of teams and AACT users (``--output=postgresql://...``), and AACT's
``ctgov.eligibilities`` as input (``--input=postgresql://...``), through psycopg 3.

The store's tables live in their own schema (``--db_schema``, default ``jointre``) beside
AACT's ``ctgov``; every shard of a job writes to the same tables at once (each chunk is one
transaction, and the shards' chunks are distinct). Connection problems (no server, a wrong
password, a missing database or table) are one line before any work starts.
"""

from __future__ import annotations

import contextlib
import urllib.parse

import psycopg
from psycopg import sql

from jointre_jax.data import trials
from jointre_jax.errors import UserError
from jointre_jax.store.sql import SqlStore

DEFAULT_TABLE = "ctgov.eligibilities"
ITERSIZE = 2000  # rows a server-side cursor fetches at a time


def redacted(url: str) -> str:
    """``url`` without its password (for messages and the run's identity)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    netloc = f"{parts.username}:***@{host}" if parts.username else f"***@{host}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def connect(url: str, flag: str, autocommit: bool = True) -> psycopg.Connection:
    """A connection to ``url``, or a UserError naming the flag, the server and the reason."""
    try:
        return psycopg.connect(url, autocommit=autocommit, connect_timeout=10)
    except psycopg.Error as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise UserError(f"--{flag}={redacted(url)}: cannot connect: {reason}") from None


def _table_name(table: str) -> sql.Composable:
    return sql.Identifier(*table.split(".", 1))


class PostgresStore(SqlStore):
    """The store's tables in schema ``db_schema`` of the database at ``url``.

    ``lock_key``: while this store is open, no other process can hold the same key (a second
    writer of the same shard of the same run stops, naming it)."""

    def __init__(self, url: str, db_schema: str = "jointre"):
        self.name = redacted(url)
        self.connection = connect(url, "output")
        self.db_schema = db_schema
        with self.connection.transaction():
            self.connection.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                sql.Identifier(db_schema)))  # fmt: skip
        self.connection.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(db_schema)))

    def execute(self, statement: str, params=()) -> None:
        self.connection.execute(statement.replace("?", "%s"), tuple(params))

    def fetchall(self, statement: str, params=()) -> list[tuple]:
        return self.connection.execute(statement.replace("?", "%s"), tuple(params)).fetchall()

    def insert(self, table: str, columns, rows) -> None:
        statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
            sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns))
        )
        with self.connection.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(row)

    def transaction(self):
        return self.connection.transaction()

    def lock_schema(self) -> None:
        """Shards that start together create the schema one at a time."""
        self.execute("SELECT pg_advisory_xact_lock(hashtext(?))", (f"jointre:{self.db_schema}",))

    def hold_shard(self, run_key: str, shard: int, num_shards: int) -> None:
        """Takes this shard's session lock, or stops if another process holds it."""
        key = f"jointre:{self.db_schema}:{run_key}:{shard}/{num_shards}"
        (taken,) = self.fetchall("SELECT pg_try_advisory_lock(hashtext(?))", (key,))[0]
        if not taken:
            raise UserError(f"--output={self.name}: shard {shard}/{num_shards} of this run is "
                            "being written by another process: wait for it or stop it")  # fmt: skip


class Eligibilities:
    """AACT's eligibility rows (``nct_id``, ``criteria``) of ``table`` at ``url``, checked on
    creation (server, credentials, table, columns); :meth:`entries` streams them in
    ``nct_id`` order through a server-side cursor."""

    def __init__(self, url: str, table: str = DEFAULT_TABLE):
        self.url, self.table = url, table
        self.name = f"{redacted(url)} table {table}"
        with contextlib.closing(connect(url, "input")) as connection:
            found = connection.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = %s AND table_name = %s",
                tuple(table.split(".", 1)) if "." in table else ("public", table),
            ).fetchall()
            if not found:
                raise UserError(f"--input={redacted(url)}: no table {table} (--input_table)")
            missing = {"nct_id", "criteria"} - {name for (name,) in found}
            if missing:
                raise UserError(f"--input={redacted(url)}: table {table} has no column "
                                f"{', '.join(sorted(missing))}")  # fmt: skip

    def count(self) -> int:
        with contextlib.closing(connect(self.url, "input")) as connection:
            query = sql.SQL("SELECT count(*) FROM {}").format(_table_name(self.table))
            return connection.execute(query).fetchone()[0]

    def entries(self, lenient: bool):
        """TrialRecord or Skip of every row (:func:`jointre_jax.data.trials.checked`)."""
        return trials.checked(self._raw(), lenient)

    def _raw(self):
        query = sql.SQL("SELECT nct_id, criteria FROM {} ORDER BY nct_id").format(
            _table_name(self.table)
        )
        connection = connect(self.url, "input", autocommit=False)
        with contextlib.closing(connection), connection.cursor(name="jointre_rows") as cursor:
            cursor.itersize = ITERSIZE
            cursor.execute(query)
            for number, (nct_id, criteria) in enumerate(cursor, start=1):
                nct_id = (nct_id or "").strip()
                where = f"{self.table} row {number}" + (f" ({nct_id})" if nct_id else "")
                if not nct_id:
                    yield where, "", "", ("no_nct_id", "no nct_id")
                elif not isinstance(criteria, str) or not criteria.strip():
                    yield where, nct_id, "", ("empty_criteria", f"{nct_id} has empty criteria")
                else:
                    yield where, nct_id, criteria, None
