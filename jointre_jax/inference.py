"""Loading a trained run and scoring it on a BRAT folder (library side of ``evaluate``)."""

from __future__ import annotations

import json
import pathlib

import ml_collections

from jointre_jax import train
from jointre_jax.data.corpus import encode_files, find_documents, make_encoder, read_split_ids


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
    batcher = train.eval_batcher(config, examples)
    results = train.evaluate(predict, state, batcher, encoder.schema, config.data.anchor)
    results["data"] = accounting.to_dict()
    return results
