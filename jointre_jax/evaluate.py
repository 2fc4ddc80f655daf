"""Scores a trained run on any BRAT folder, in the form of ``metrics.json``.

    python -m jointre_jax.evaluate --workdir=DIR --brat_dir=D [--split_file=F] --out=FILE

The run's own config (``DIR/config.json``) gives the schema, tokenizer and model; the best
checkpoint (``DIR/best``, else the latest) gives the parameters. ``--split_file`` restricts the
folder to the documents it lists (id prefixes, one a line).
"""

from __future__ import annotations

import json
import pathlib

import jax
import ml_collections
from absl import app, flags
from absl import logging as absl_logging

from jointre_jax import train
from jointre_jax.data.batching import Batcher
from jointre_jax.data.corpus import encode_files, find_documents, make_encoder, read_split_ids

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory of a trained model.")
_BRAT_DIR = flags.DEFINE_string("brat_dir", None, "Folder of NAME.txt + NAME.ann files.")
_SPLIT_FILE = flags.DEFINE_string("split_file", None, "Optional list of document ids.")
_OUT = flags.DEFINE_string("out", None, "Where to write the scores (JSON).")


def load_run(workdir: str | pathlib.Path):
    """(config, state, predict_fn, encoder) of a trained run, best parameters restored."""
    workdir = pathlib.Path(workdir)
    config_path = workdir / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} not found: is {workdir} a training workdir?")
    config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
    encoder = make_encoder(config)
    bert, _ = train.encoder_config(config)
    model = train.create_model(config, encoder.schema, bert)
    mesh = train.make_mesh(config.num_devices)
    config.model.pretrained = False  # the checkpoint holds every weight
    state = train.create_state(config, model, None, 1, mesh)
    for name in ("best", "checkpoints"):
        manager = train.checkpoint_manager(workdir / name)
        if manager.latest_step() is not None:
            state, _ = train.restore(manager, state)
            break
    else:
        raise FileNotFoundError(f"no checkpoint in {workdir}/best or {workdir}/checkpoints")
    _, predict = train.jit_steps(mesh, state)
    return config, state, predict, encoder


def evaluate_folder(workdir, brat_dir, split_file=None) -> dict:
    """Scores (NER, RE gs-based, RE end-to-end) of the run in ``workdir`` on ``brat_dir``."""
    config, state, predict, encoder = load_run(workdir)
    ids = read_split_ids(split_file) if split_file else None
    paths = find_documents(brat_dir, ids, split_file)
    examples, accounting = encode_files(paths, encoder, "eval")
    batcher = Batcher(
        examples, config.data.bucket_boundaries, config.data.eval_batch_size, config.data.anchor
    )
    results = train.evaluate(predict, state, batcher, encoder.schema, config.data.anchor)
    results["data"] = accounting.to_dict()
    return results


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    absl_logging.set_verbosity(absl_logging.WARNING)
    results = evaluate_folder(_WORKDIR.value, _BRAT_DIR.value, _SPLIT_FILE.value)
    pathlib.Path(_OUT.value).write_text(json.dumps(results, indent=1))
    summary = {k: round(results[k]["f1"], 4) for k in ("ner", "re_gs", "re_e2e")}
    print(json.dumps({"out": _OUT.value, "f1": summary, "devices": jax.device_count()}))


if __name__ == "__main__":
    flags.mark_flags_as_required(["workdir", "brat_dir", "out"])
    app.run(main)
