"""Loading a trained run and scoring it on a BRAT folder (library side of ``evaluate``)."""

from __future__ import annotations

import json
import pathlib

import ml_collections

from configs import default
from jointre_jax import train
from jointre_jax.data.corpus import encode_files, find_documents, make_encoder, read_split_ids


def saved_config(path: pathlib.Path) -> ml_collections.ConfigDict:
    """The config a run saved in ``path`` (config.json), laid over today's defaults so that
    runs saved before a field existed still load with that field's default."""
    config = default.get_config()
    _overlay(config, json.loads(path.read_text()))
    return config


def _overlay(config: ml_collections.ConfigDict, saved: dict) -> None:
    with config.unlocked():
        for key, value in saved.items():
            current = config.get(key)
            if isinstance(current, ml_collections.ConfigDict) and isinstance(value, dict):
                _overlay(current, value)
            elif isinstance(current, tuple) and isinstance(value, list):
                config[key] = tuple(value)
            else:
                config[key] = value


def load_run(workdir: str | pathlib.Path, num_devices: int | None = None):
    """(config, state, predict_fn, encoder) of a trained run, best parameters restored.

    The parameters are restored onto a mesh of ``num_devices`` devices (None: as the run's
    config says; 0: all), whatever mesh the run was trained on. FSDP is turned off here:
    inference keeps the parameters replicated.
    """
    workdir = pathlib.Path(workdir)
    config_path = workdir / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} not found: is {workdir} a training workdir?")
    config = saved_config(config_path)
    if num_devices is not None:
        config.num_devices = num_devices
    config.sharding.fsdp = 1
    encoder = make_encoder(config)
    bert, _ = train.encoder_config(config)
    model = train.create_model(config, encoder.schema, bert)
    mesh = train.make_mesh(config)
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


def evaluate_folder(workdir, brat_dir, split_file=None, num_devices: int | None = None) -> dict:
    """Scores (NER, RE gs-based, RE end-to-end) of the run in ``workdir`` on ``brat_dir``."""
    config, state, predict, encoder = load_run(workdir, num_devices)
    ids = read_split_ids(split_file) if split_file else None
    paths = find_documents(brat_dir, ids, split_file)
    examples, accounting = encode_files(paths, encoder, "eval")
    batcher = train.eval_batcher(config, examples)
    results = train.evaluate(predict, state, batcher, encoder.schema, config.data.anchor)
    results["data"] = accounting.to_dict()
    return results
