"""Join the DuckDB files of a sharded extraction into one.

    jointre merge --output=registry.duckdb --shards=N

``jointre extract --shard=I/N --output=registry.duckdb`` writes ``registry.shard-I-of-N.duckdb``
(DuckDB lets one process write a file at a time). When every shard has finished, this checks
that they are of one run and hold every chunk once, builds ``registry.duckdb`` beside them,
renames it into place and removes the shard files (:func:`jointre_jax.store.duck.merge`).
PostgreSQL outputs need no merge: every shard writes the same tables.
"""

from __future__ import annotations

import sys

from absl import app, flags

from jointre_jax import cli
from jointre_jax.errors import UserError
from jointre_jax.store import duck

FLAGS = flags.FLAGS


def _define_flags() -> None:
    flags.DEFINE_string("output", None, "The DuckDB file the shards were extracted for.")
    flags.DEFINE_integer("shards", None, "N of the shards' --shard=I/N.", lower_bound=1)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.output.endswith(".duckdb"):
        raise UserError(f"--output={FLAGS.output}: merge joins DuckDB files (FILE.duckdb)")
    cli.prepare_output(FLAGS.output, "output")
    identity = duck.merge(FLAGS.output, FLAGS.shards)
    print(f"merge: {FLAGS.shards} shards of {identity.input} joined into {FLAGS.output}",
          file=sys.stderr)  # fmt: skip


if __name__ == "__main__":
    _define_flags()
    cli.run(main, "merge", required=("output", "shards"))
