"""Loading a trained run and scoring it on a BRAT folder (library side of ``evaluate``)."""

from __future__ import annotations

import json
import pathlib

import ml_collections

from configs import default
from jointre_jax import runtime, validation
from jointre_jax import state as state_lib
from jointre_jax.checkpoints import restore_run_params
from jointre_jax.data.corpus import (
    ENCODING_FIELDS,
    count_unpaired,
    encode_files,
    find_documents,
    make_encoder,
    read_split_ids,
    unpaired_annotations,
)
from jointre_jax.errors import UserError
from jointre_jax.evaluation import CorpusGold, evaluate
from jointre_jax.labels import SCHEME_FIELDS
from jointre_jax.model.joint import ModelOptions
from jointre_jax.predictor import Predictor


def saved_config(path: pathlib.Path) -> ml_collections.ConfigDict:
    """The config a run saved in ``path`` (config.json), laid over today's defaults so that
    runs saved before a field existed still load with that field's default."""
    config = default.get_config()
    saved = json.loads(path.read_text())
    if "packing" not in saved.get("data", {}):  # trained before packing: buckets, as it was
        saved.setdefault("data", {})["packing"] = False
    _overlay(config, saved)
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


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict) -> None:
    """Sets ``{"section.field": value}`` overrides in ``config`` (in place)."""
    with config.unlocked():
        for key, value in overrides.items():
            section, field = key.split(".")
            config[section][field] = value


def ensemble_fields() -> dict[str, tuple[str, ...]]:
    """The config fields on which the members of an ensemble must agree, by section: what
    gives two runs' parameters the same inputs, outputs and shapes. The model's come from
    :meth:`ModelOptions.shared` and the label scheme's from :data:`SCHEME_FIELDS`, the
    encoding's from :data:`ENCODING_FIELDS`. Training options (seed, losses, regularisers,
    schedule) may differ; decoding options and the rest come from the first run."""
    return {
        "data": ENCODING_FIELDS,
        "model": (*ModelOptions.shared(), *SCHEME_FIELDS, "lowercase"),
    }


def _run_config(workdir: pathlib.Path) -> ml_collections.ConfigDict:
    config_path = workdir / "config.json"
    if not workdir.is_dir():
        raise UserError(f"run folder {workdir} not found: give --workdir of a trained run")
    if not config_path.exists():
        raise UserError(
            f"{workdir} is not a run: it has no config.json (the --workdir of "
            "python -m jointre_jax.main holds one)"
        )
    return saved_config(config_path)


def check_member(config, member, workdir, member_dir) -> None:
    """Raises UserError naming the first field on which run ``member_dir`` cannot join an
    ensemble led by ``workdir`` (another schema, label scheme or architecture)."""
    for section, keys in ensemble_fields().items():
        for key in keys:
            ours, theirs = config[section].get(key), member[section].get(key)
            if ours != theirs:
                raise UserError(
                    f"run {member_dir} cannot join an ensemble with {workdir}: "
                    f"{section}.{key} is {theirs!r} there and {ours!r} here"
                )


def load_run(
    workdir: str | pathlib.Path,
    num_devices: int | None = None,
    overrides: dict | None = None,
    members: tuple = (),
):
    """(config, predictor, encoder) of a trained run, its best parameters restored.

    Only the parameters are restored (no optimiser state), onto a mesh of ``num_devices``
    devices (None: as the run's config says; 0: all), whatever mesh the run was trained on.
    FSDP is turned off here: inference keeps the parameters replicated. ``overrides``
    ({"model.decision_threshold": 0.4}) change decoding options of the saved config.

    ``members``: more run folders of the same config (other seeds, :func:`check_member`);
    the predictor is then the ensemble of all of them (mean probabilities,
    :func:`jointre_jax.steps.predict_step`); ``workdir``'s config decides everything else.
    """
    workdir = pathlib.Path(workdir)
    config = _run_config(workdir)
    apply_overrides(config, overrides or {})
    validation.validate(config)
    # This user's cache (configs/default.py), not the folder of the machine that trained.
    runtime.use_compilation_cache(default.default_compilation_cache())
    if num_devices is not None:
        config.num_devices = num_devices
    config.sharding.fsdp = 1
    encoder = make_encoder(config)
    bert, _ = runtime.encoder_config(config)
    model = runtime.create_model(config, encoder.scheme, encoder.schema.num_relation_labels, bert)
    mesh = runtime.make_mesh(config)
    template = state_lib.create_params(config, model, None, mesh)  # the checkpoint holds them all
    params, _ = restore_run_params(workdir, template, state_lib.eval_field(config))
    restored = [params]
    for member_dir in map(pathlib.Path, members):
        member = _run_config(member_dir)
        check_member(config, member, workdir, member_dir)
        restored.append(restore_run_params(member_dir, template, state_lib.eval_field(member))[0])
    params = tuple(restored) if members else params
    return config, Predictor(config, model, params), encoder


def evaluate_folder(
    workdir,
    brat_dir,
    split_file=None,
    num_devices: int | None = None,
    overrides=None,
    members=(),
) -> dict:
    """Scores of the run in ``workdir`` on ``brat_dir``: NER, RE among gold entities and RE
    end-to-end against the encoded gold, and NER and RE end-to-end against the corpus gold
    (``corpus``). ``overrides``, ``members`` (an ensemble): see :func:`load_run`."""
    config, predictor, encoder = load_run(workdir, num_devices, overrides, tuple(members))
    ids = read_split_ids(split_file) if split_file else None
    paths = find_documents(brat_dir, ids, split_file)
    gold = CorpusGold(encoder.schema)
    examples, accounting = encode_files(paths, encoder, "eval", gold=gold)
    count_unpaired(accounting, unpaired_annotations(brat_dir, ids))
    results = evaluate(predictor, examples, encoder.schema, gold, "eval")
    results["data"] = accounting.to_dict()
    return results
