"""Entry point: ``python -m jointre_jax.main --config=configs/biobert_m2.py --workdir=DIR``.

Initialises JAX's distributed runtime only when the launcher's environment asks for it
(JAX_COORDINATOR_ADDRESS, or a SLURM/cluster environment JAX detects with
JOINTRE_DISTRIBUTED=1), then runs ``train.train_and_evaluate``.
"""

import logging
import os

import jax
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from jointre_jax import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax and jax are chatty at INFO
    logging.getLogger("jointre_jax").setLevel(logging.INFO)
    if os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("JOINTRE_DISTRIBUTED") == "1":
        jax.distributed.initialize()
    logging.getLogger("jointre_jax").info(
        "process %d of %d: %d local / %d global devices (%s)",
        jax.process_index(), jax.process_count(), jax.local_device_count(),
        jax.device_count(), jax.default_backend(),
    )  # fmt: skip
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
