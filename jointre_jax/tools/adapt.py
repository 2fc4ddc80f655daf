"""Adapts a config's encoder to its corpus: masked-LM training on the train split's text.

    jointre adapt --config=configs/minilm_span.py --out=runs/minilm_chia \
        [--epochs=8 --learning_rate=1e-4]
    python -m jointre_jax.main --config=configs/minilm_span.py --workdir=runs/span \
        --config.model.encoder=runs/minilm_chia

Task-adaptive pretraining (:mod:`jointre_jax.adaptation`): the train split's criteria only,
no labels, no dev or test text. ``--out`` becomes an encoder folder (weights, config and
tokenizer files, ``adaptation.json``); its ``checkpoints/`` let a killed run resume at its
step with the same command.
"""

from __future__ import annotations

import json
import logging

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from jointre_jax import cli
from jointre_jax.adaptation import adapt_encoder

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """Command-line flags, defined only when run as a program (imports never clash)."""
    config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).")
    flags.DEFINE_string("out", None, "Folder of the adapted encoder (and its checkpoints).")
    flags.DEFINE_integer("epochs", 8, "Passes over the train split's text.", lower_bound=1)
    flags.DEFINE_float("learning_rate", 1e-4, "Peak learning rate (6% warmup, linear decay).")
    flags.DEFINE_integer("batch_size", 32, "Criteria per step (about: packed rows).")
    flags.DEFINE_float("mask_rate", 0.15, "Share of the wordpieces predicted, whole words.")
    flags.DEFINE_integer(
        "head_steps", 200, "Steps that train a fresh masked-LM head alone, the encoder frozen."
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("jointre_jax").setLevel(logging.INFO)
    out = cli.prepare_output(FLAGS.out, "out", folder=True)
    summary = adapt_encoder(
        FLAGS.config, out, epochs=FLAGS.epochs, learning_rate=FLAGS.learning_rate,
        batch_size=FLAGS.batch_size, rate=FLAGS.mask_rate, head_steps=FLAGS.head_steps,
    )  # fmt: skip
    losses = [round(x, 4) for x in summary["epoch_losses"]]
    print(json.dumps({"out": FLAGS.out, "steps": summary["steps"], "epoch_losses": losses}))


if __name__ == "__main__":
    _define_flags()
    cli.run(main, "adapt", required=("config", "out"))
