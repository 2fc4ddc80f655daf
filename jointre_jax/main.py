"""Entry point: ``python -m jointre_jax.main --config=configs/biobert_m2.py --workdir=DIR``.

Initialises JAX's distributed runtime only when the launcher's environment asks for it
(``JAX_COORDINATOR_ADDRESS`` with ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``, or
``JOINTRE_DISTRIBUTED=1`` on a cluster JAX detects itself, such as SLURM), then runs
``train.train_and_evaluate``. Every process logs its index and devices, and its final test
scores, so the processes of one run can be checked against each other.
"""

import json
import logging

import jax
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from jointre_jax import cli, parallel, train

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """Command-line flags, defined only when run as a program (imports never clash)."""
    config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).")
    flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax and jax are chatty at INFO
    logging.getLogger("jointre_jax").setLevel(logging.INFO)
    parallel.initialize_distributed()
    log = logging.getLogger("jointre_jax")  # train logs each process's index and devices
    results = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    summary = {key: results[key]["f1"] for key in ("ner", "re_gs", "re_e2e")}
    log.info("process %d final test f1: %s", jax.process_index(), json.dumps(summary))


if __name__ == "__main__":
    _define_flags()
    cli.run(main, "train", required=("config", "workdir"))
