"""Where extraction writes, a chunk at a time (:mod:`jointre_jax.streaming`): a database or
files.

* ``FILE.duckdb``: DuckDB, embedded, no server (:mod:`~jointre_jax.store.duck`);
* ``postgresql://...``: PostgreSQL, for teams and AACT users, every shard writing at once
  (:mod:`~jointre_jax.store.postgres`);
* anything else: files in ``--format`` jsonl, csv or brat (:mod:`~jointre_jax.store.files`).

Both databases hold one schema (:mod:`~jointre_jax.store.schema`). Every store offers
``open(identity)`` (refuses another run's output by name), ``committed()``,
``write(chunk, extractions, shard, num_shards)`` (one commit), ``finish(...)`` and ``close()``.
"""

from __future__ import annotations

import contextlib
import pathlib

from jointre_jax.errors import UserError


def is_url(target: str) -> bool:
    """True when ``target`` (an --input or --output) names a PostgreSQL database."""
    return target.startswith(("postgresql://", "postgres://"))


def output_kind(output: str, fmt: str) -> str:
    """ "postgresql", "duckdb", or the file format ``fmt``."""
    if is_url(output):
        return "postgresql"
    if output.endswith(".duckdb"):
        return "duckdb"
    return fmt


def shard_path(path: str, shard: int, num_shards: int) -> str:
    """The output that shard ``shard`` of ``num_shards`` writes for a file or DuckDB output
    ``path`` (``out.jsonl`` -> ``out.shard-1-of-4.jsonl``; ``path`` itself for one shard or
    standard output)."""
    if num_shards == 1 or path == "-":
        return path
    p = pathlib.Path(path)
    return str(p.with_name(f"{p.stem}.shard-{shard}-of-{num_shards}{p.suffix}"))


def open_store(output: str, fmt: str, grouped: str | None = None, db_schema: str = "jointre"):
    """The store of ``output`` (its connection checked; nothing written yet)."""
    kind = output_kind(output, fmt)
    if kind == "postgresql":
        from jointre_jax.store.postgres import PostgresStore

        return PostgresStore(output, db_schema)
    if kind == "duckdb":
        from jointre_jax.store.duck import DuckDBStore

        return DuckDBStore(output)
    from jointre_jax.store.files import FileStore

    outputs = {"main": (output, fmt)}
    if grouped:
        outputs["grouped"] = (grouped, "grouped")
    return FileStore(outputs)


@contextlib.contextmanager
def writing(store):
    """Turns a failed write (a full disk, a lost server) into one line: what failed and that
    rerunning the same command goes on after the last committed chunk."""
    errors: tuple = (OSError,)
    with contextlib.suppress(ImportError):
        import duckdb

        errors += (duckdb.Error,)
    with contextlib.suppress(ImportError):
        import psycopg

        errors += (psycopg.OperationalError,)
    try:
        yield
    except errors as err:
        reason = getattr(err, "strerror", None) or " ".join(str(err).split())[:300]
        committed = _committed(store)
        done = (f"{committed} chunks are committed" if committed is not None
                else "the chunks committed so far are kept")  # fmt: skip
        raise UserError(
            f"--output={store.name}: writing failed ({reason}); {done}. "
            "Fix the cause (free space, the server) and rerun the same command: it goes on "
            "after the last committed chunk"
        ) from None
    finally:
        store.close()


def _committed(store) -> int | None:
    """How many chunks ``store`` holds, None when it cannot tell (it may be what failed)."""
    try:
        return len(store.committed())
    except Exception:  # noqa: BLE001 - the store may be the thing that failed
        return None
