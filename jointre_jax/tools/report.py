"""The data report: what each split holds, keeps and drops, and the padding of its batches.

    jointre report --config=configs/minilm_m2.py [--json] [--splits=train,dev]

(library: :mod:`jointre_jax.data.report`).
"""

from __future__ import annotations

import json
import sys

from absl import app, flags
from ml_collections import config_flags

from jointre_jax import cli
from jointre_jax.data.report import build_report, format_report

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """Command-line flags, defined only when run as a program (imports never clash)."""
    config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).")
    flags.DEFINE_bool("json", False, "Print one JSON object instead of tables.")
    flags.DEFINE_list("splits", None, "Splits to report (default: train, eval, test).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    report = build_report(FLAGS.config, FLAGS.splits, progress=not FLAGS.json)
    if FLAGS.json:
        json.dump(report, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(format_report(report))


if __name__ == "__main__":
    _define_flags()
    cli.run(main, "report", required=("config",))
