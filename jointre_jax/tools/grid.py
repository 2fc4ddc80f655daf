"""The paper's Table 4 as a grid of runs (library: :mod:`jointre_jax.table4`).

    jointre grid --config=configs/minilm_m2.py --workdir=DIR \
        [--rows=all|ROW,ROW...] [--seeds=0,1,2] [--process_index=I --process_count=N] \
        [--table_only] [--config.x=y ...]

With ``--process_count=N`` the runs are dealt round-robin and process I trains only its share
(start one process per GPU, e.g. with ``CUDA_VISIBLE_DEVICES=I``; ``launch/grid.sh``); the
last process to finish, or ``--table_only``, writes the whole table. ``--config.x=y``
overrides apply to every row (epochs, learning rate, encoder...).
"""

from __future__ import annotations

import logging
import pathlib

import jax
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from jointre_jax import cli
from jointre_jax.table4 import ROWS_BY_NAME, encoder_name, run_grid, select_rows, write_table

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """Command-line flags, defined only when run as a program (imports never clash)."""
    config_flags.DEFINE_config_file("config", None, "Base config (configs/*.py).")
    flags.DEFINE_string("workdir", None, "Grid directory.")
    flags.DEFINE_list("rows", ["all"], f"Rows: all, or some of {sorted(ROWS_BY_NAME)}.")
    flags.DEFINE_list("seeds", ["0"], "Seeds.")
    flags.DEFINE_integer("process_index", 0, "This process's share of the runs.")
    flags.DEFINE_integer("process_count", 1, "Processes sharing the grid.")
    flags.DEFINE_bool("table_only", False, "Only write the table from finished runs.")
    flags.DEFINE_string(
        "compilation_cache", None,
        "Persistent XLA compilation cache shared by the runs (seeds of a row compile the same "
        "shapes); default WORKDIR/.jax_cache, 'none' to turn it off.",
    )  # fmt: skip


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("jointre_jax").setLevel(logging.INFO)
    config, workdir = FLAGS.config, pathlib.Path(FLAGS.workdir)
    rows = select_rows(FLAGS.rows)
    if FLAGS.compilation_cache != "none":
        cache = FLAGS.compilation_cache or str(workdir / ".jax_cache")
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    if not FLAGS.table_only:
        run_grid(config, workdir, rows, FLAGS.seeds, FLAGS.process_index, FLAGS.process_count)
    print(write_table(workdir, rows, encoder_name(config)))


if __name__ == "__main__":
    _define_flags()
    cli.run(main, "grid", required=("config", "workdir"))
