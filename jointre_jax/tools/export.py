"""Export a trained run as a self-contained model folder, to share or to publish on the hub.

    jointre export --workdir=RUN --out=DIR [--dtype=float32|bfloat16|float16]
        [--data_license="CC BY 4.0 (...)"]

``DIR`` (:mod:`jointre_jax.model_folder`) holds the inference config with no machine paths,
every parameter of the run's best checkpoint in ``model.safetensors`` (no optimiser state),
the encoder's tokenizer and architecture, the label schema, the run's test scores and a model
card (``README.md``). It loads anywhere with ``--model=DIR`` (``extract``, ``evaluate``,
``serve``, ``Extractor.load``); uploaded to the hub (``hf upload ORG/NAME DIR``), with
``--model=ORG/NAME``. The folder is built beside ``DIR`` and renamed into place when complete,
so a stopped export leaves no half-made model folder. ``--workdir`` may also be a model folder
(to store it again in another dtype).
"""

from __future__ import annotations

import json
import pathlib
import shutil
import sys

from absl import app, flags
from absl import logging as absl_logging

from jointre_jax import cli, model_folder
from jointre_jax.errors import UserError
from jointre_jax.inference import Source, load_run
from jointre_jax.model_card import data_license

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """Command-line flags, defined only when run as a program (imports never clash)."""
    flags.DEFINE_string("workdir", None, "Training run (or model folder) to export.")
    flags.DEFINE_string("out", None, "The model folder to write (must not exist, or be empty).")
    flags.DEFINE_enum(
        "dtype",
        "float32",
        list(model_folder.DTYPES),
        "Storage dtype of the parameters (loading casts back to float32).",
    )
    flags.DEFINE_string(
        "data_license", "",
        "The training data's licence, for the model card (default: known for Chia, else "
        "'not stated').",
    )  # fmt: skip


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    absl_logging.set_verbosity(absl_logging.WARNING)
    out = pathlib.Path(FLAGS.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out={out} exists and is not an empty folder: give a new folder")
    partial = out.parent / f".{out.name}.part"
    cli.prepare_output(str(partial), "out", folder=True)
    source = Source(FLAGS.workdir)
    config, predictor, encoder = load_run(source, num_devices=1)
    if source.header is not None:
        origin = {k: source.header[k] for k in ("encoder", "data")}
    else:
        origin = {
            "encoder": model_folder.provenance(str(config.model.encoder)),
            "data": model_folder.provenance(str(config.data.dir)),
        }
    shutil.rmtree(partial)  # what a stopped export left, and the lock check's empty folder
    header = model_folder.write(
        partial, config, predictor.params, encoder, FLAGS.dtype, source.metrics(), origin,
        data_license(origin["data"], FLAGS.data_license),
    )  # fmt: skip
    if out.exists():
        out.rmdir()
    partial.rename(out)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(
        f"export: {out}: {header['parameters']:,} parameters as {FLAGS.dtype}, "
        f"{size / 2**20:.1f} MiB in all; load it with --model={out}",
        file=sys.stderr,
    )
    print(json.dumps({"out": str(out), "bytes": size, "weights_sha256": header["weights_sha256"]}))


if __name__ == "__main__":
    _define_flags()
    cli.run(main, "export", required=("workdir", "out"))
