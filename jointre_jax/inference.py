"""Loading a trained model and scoring it on a BRAT folder (library side of ``evaluate``).

A model is named by a run folder (``--workdir``: its config.json and best checkpoint), a model
folder (``--model``, :mod:`jointre_jax.model_folder`) or the hub id of a model folder;
:func:`load_run` takes any of them, and an ensemble may mix them.
"""

from __future__ import annotations

import json
import os
import pathlib

import ml_collections

from configs import default
from jointre_jax import model_folder, runtime, validation
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
from jointre_jax.model.pretrained import looks_like_path
from jointre_jax.predictor import Predictor


def saved_config(path: pathlib.Path, saved: dict | None = None) -> ml_collections.ConfigDict:
    """The config a run saved in ``path`` (config.json; or the dict ``saved``), laid over
    today's defaults so that runs saved before a field existed still load with that field's
    default."""
    config = default.get_config()
    saved = json.loads(path.read_text()) if saved is None else saved
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


class Source:
    """Where a model's config and parameters come from: a run folder (``header`` None) or a
    model folder (its header), local or downloaded from the hub."""

    def __init__(self, name: str):
        self.name = str(name)
        path = pathlib.Path(os.path.expanduser(self.name))
        if not path.is_dir() and not looks_like_path(self.name):
            path = model_folder.download(self.name)  # a hub id
        self.path = path
        self.header = model_folder.read_header(path)
        if self.header is None:
            self.config = _run_config(path)
        else:
            self.config = saved_config(path, self.header["config"])
            with self.config.unlocked():  # its encoder's tokenizer and architecture travel
                self.config.model.encoder = str(path / model_folder.ENCODER)

    def params(self, template):
        """Its parameters onto ``template`` (:func:`jointre_jax.state.create_params`)."""
        if self.header is not None:
            return model_folder.read_params(self.path, self.header, template)
        return restore_run_params(self.path, template, state_lib.eval_field(self.config))[0]

    def metrics(self) -> dict | None:
        """Its test scores (metrics.json), None when it has none."""
        path = self.path / "metrics.json"
        return json.loads(path.read_text()) if path.is_file() else None


def _run_config(workdir: pathlib.Path) -> ml_collections.ConfigDict:
    config_path = workdir / "config.json"
    if not workdir.is_dir():
        raise UserError(
            f"run or model folder {workdir} not found: give --workdir of a trained run or "
            "--model of a model folder or hub id"
        )
    if not config_path.exists():
        raise UserError(
            f"{workdir} is not a run: it has no config.json (the --workdir of "
            "python -m jointre_jax.main holds one)"
        )
    try:
        saved = json.loads(config_path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{config_path} cannot be read as JSON ({err})") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("model"), dict):
        raise UserError(
            f"{workdir} is not a run or a model folder: its config.json is not jointre_jax's "
            "(an encoder folder? give a trained run, or a folder of jointre export)"
        )
    return saved_config(config_path, saved)


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
    """(config, predictor, encoder) of a trained model, its best parameters restored.

    ``workdir``: a run folder, a model folder or a model's hub id, or its :class:`Source`
    already made. Only the
    parameters are restored (no optimiser state), onto a mesh of ``num_devices``
    devices (None: as the run's config says; 0: all), whatever mesh the run was trained on.
    FSDP is turned off here: inference keeps the parameters replicated. ``overrides``
    ({"model.decision_threshold": 0.4}) change decoding options of the saved config.

    ``members``: more runs or model folders of the same config (other seeds, :func:`check_member`);
    the predictor is then the ensemble of all of them (mean probabilities,
    :func:`jointre_jax.steps.predict_step`); ``workdir``'s config decides everything else.
    """
    source = workdir if isinstance(workdir, Source) else Source(workdir)
    config = source.config
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
    params = source.params(template)
    restored = [params]
    for name in members:
        member = Source(name)
        check_member(config, member.config, source.name, name)
        restored.append(member.params(template))
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
