"""Self-contained model folders in the conventions of the Hugging Face hub: one is written
from a trained run (``jointre export``) and read from a folder or a hub id, with no training
run and no original encoder folder on the machine.

    DIR/
      config.json          the folder's header (format, dtype, weights digest, provenance) and
                           the run's inference config, with no machine paths
      model.safetensors    every parameter (float32, bfloat16 or float16); no optimiser state
      encoder/             the encoder's config.json (its architecture) and tokenizer files
      labels.json          the label schema: entity types, relation labels, the NER scheme
      metrics.json         the run's test scores (when it has them)
      README.md            the model card (:mod:`jointre_jax.model_card`)

A parameter is stored under its path in the parameter tree, joined by ``/``
(``params/encoder/layer_0/attention/query/kernel``). Loading casts every tensor back to the
parameter's own dtype (float32), so a float32 folder predicts exactly what its run predicts.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np

from jointre_jax import parallel
from jointre_jax.errors import UserError

FORMAT = "jointre_jax model"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
ENCODER = "encoder"
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
# Fields of a run's config that name folders or files of the machine that trained it.
MACHINE_PATHS = ("data.dir", "data.teacher_file", "model.encoder", "compilation_cache_dir")
# What a hub download fetches of a model repository.
HUB_FILES = ["*.json", "*.txt", "*.md", WEIGHTS, f"{ENCODER}/*"]


def _header(path: pathlib.Path) -> dict | None:
    """``path``'s config.json when it is a model folder's header (a run folder's is not)."""
    try:
        header = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return header if isinstance(header, dict) and header.get("format") == FORMAT else None


def is_model_folder(path: pathlib.Path) -> bool:
    return _header(path) is not None


def param_names(params) -> list[str]:
    """The ``/``-joined path of each leaf of ``params``, in ``jax.tree`` leaf order."""
    paths = jax.tree_util.tree_flatten_with_path(params)[0]
    return ["/".join(str(getattr(k, "key", k)) for k in path) for path, _ in paths]


def file_digest(path: pathlib.Path) -> str:
    """sha256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def inference_config(config) -> dict:
    """The run's config as a dict, its machine paths emptied (``MACHINE_PATHS``)."""
    out = json.loads(config.to_json_best_effort())
    for field in MACHINE_PATHS:
        section, _, key = field.rpartition(".")
        (out[section] if section else out)[key] = ""
    return out


def provenance(value: str) -> str:
    """A folder's last name, a hub id unchanged: what an encoder or corpus was, without the
    machine's path to it."""
    from jointre_jax.model.pretrained import looks_like_path

    return pathlib.Path(value).name if value and looks_like_path(value) else value


def write(
    out: pathlib.Path, config, params, encoder, dtype: str, metrics, origin: dict, license_line: str
) -> dict:
    """Writes the model folder of a model into the empty folder ``out``; returns its header.

    Args:
      config: the model's config; params: its parameters (one model's, not an ensemble);
      encoder: its :class:`~jointre_jax.data.encode.Encoder` (the tokenizer is saved);
      dtype: a key of ``DTYPES``; metrics: its test scores (``metrics.json``) or None;
      origin: {"encoder": ..., "data": ...}, what they were (:func:`provenance`);
      license_line: the training data's licence, for the card.
    """
    from safetensors.flax import save_file

    from jointre_jax import __version__, model_card
    from jointre_jax.model.pretrained import resolve_encoder

    (out / ENCODER).mkdir(parents=True)
    tensors = {
        name: jnp.asarray(leaf, DTYPES[dtype])
        for name, leaf in zip(param_names(params), jax.tree.leaves(params), strict=True)
    }
    save_file(tensors, str(out / WEIGHTS), metadata={"format": "flax", "dtype": dtype})
    shutil.copyfile(resolve_encoder(str(config.model.encoder)) / "config.json",
                    out / ENCODER / "config.json")  # fmt: skip
    encoder.tokenizer.save_pretrained(str(out / ENCODER))
    labels = label_schema(encoder)
    (out / "labels.json").write_text(json.dumps(labels, indent=1) + "\n")
    if metrics is not None:
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "jointre_jax_version": __version__,
        "dtype": dtype,
        "weights_sha256": file_digest(out / WEIGHTS),
        "parameters": int(sum(np.prod(t.shape) for t in tensors.values())),
        **origin,
        "config": inference_config(config),
    }
    (out / "config.json").write_text(json.dumps(header, indent=1) + "\n")
    (out / "README.md").write_text(model_card.render(header, labels, metrics, license_line))
    return header


def label_schema(encoder) -> dict:
    """What the model's outputs mean: entity types, relation labels (0: none), the scheme."""
    scheme = encoder.scheme
    return {
        "entity_types": list(encoder.schema.entity_types),
        "relation_labels": list(encoder.schema.relation_labels),
        "ner_scheme": scheme.name,
        "nested": bool(scheme.nested),
        "discontinuous": bool(scheme.fragments),
    }


def download(repo_id: str) -> pathlib.Path:
    """The local snapshot of the model folder at hub id ``repo_id``: from huggingface_hub's
    cache when it is there (with ``HF_HUB_OFFLINE=1``, only from it), else downloaded. A
    missing id, an unreachable hub or a repository that is not a model folder is one
    UserError line."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub import errors as hub

    try:
        path = pathlib.Path(snapshot_download(repo_id, allow_patterns=HUB_FILES))
    except hub.HFValidationError:
        raise UserError(
            f"--model={repo_id}: neither a folder here nor a hub id (org/name)"
        ) from None
    except (hub.RepositoryNotFoundError, hub.RevisionNotFoundError):
        raise UserError(
            f"hub model {repo_id} not found (a private or gated one needs `hf auth login`)"
        ) from None
    except hub.LocalEntryNotFoundError:
        offline = " (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""
        raise UserError(
            f"hub model {repo_id} is not in the cache {constants.HF_HUB_CACHE} and the hub "
            f"cannot be reached{offline}: download it once online, or give --model=FOLDER"
        ) from None
    except (hub.HfHubHTTPError, OSError) as err:
        raise UserError(f"hub model {repo_id}: the hub cannot be reached ({err})") from None
    if not is_model_folder(path):
        raise UserError(
            f"hub model {repo_id} is not a jointre_jax model folder (its config.json has no "
            f'"format": "{FORMAT}")'
        )
    return path


def read_header(path: pathlib.Path) -> dict | None:
    """The header of model folder ``path``, its files checked (UserError naming what is
    missing or too new); None when ``path`` is no model folder (a run folder, say)."""
    header = _header(path)
    if header is None:
        return None
    if header.get("format_version", 0) > FORMAT_VERSION:
        raise UserError(
            f"{path} is a model folder of format {header['format_version']}, newer than this "
            f"jointre_jax reads ({FORMAT_VERSION}): upgrade jointre_jax"
        )
    for name in (WEIGHTS, f"{ENCODER}/config.json", "labels.json"):
        if not (path / name).is_file():
            raise UserError(f"model folder {path} has no {name}: export it again")
    return header


def read_params(path: pathlib.Path, header: dict, template):
    """The parameters of model folder ``path`` onto ``template``'s leaves: each tensor cast to
    the leaf's dtype and placed on its sharding. UserError when the weights' digest or their
    names and shapes are not the model's."""
    from safetensors import SafetensorError
    from safetensors.flax import load_file

    weights = path / WEIGHTS
    if file_digest(weights) != header["weights_sha256"]:
        raise UserError(
            f"{weights}: its sha256 is not the one config.json records (a damaged or partial "
            "copy): copy or download the folder again"
        )
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError) as err:
        raise UserError(f"{weights} cannot be read ({err}): copy the folder again") from None
    names, leaves = param_names(template), jax.tree.leaves(template)
    missing = [n for n in names if n not in tensors]
    extra = sorted(set(tensors) - set(names))
    if missing or extra:
        raise UserError(
            f"{weights} does not hold this config's parameters: {len(missing)} missing "
            f"({', '.join(missing[:2])}), {len(extra)} unknown ({', '.join(extra[:2])})"
        )
    placed = []
    for name, leaf in zip(names, leaves, strict=True):
        value = np.asarray(tensors[name].astype(leaf.dtype))
        if value.shape != leaf.shape:
            raise UserError(f"{weights}: {name} has shape {value.shape}, the model {leaf.shape}")
        placed.append(parallel.put_global(value, leaf.sharding))
    return jax.tree.unflatten(jax.tree.structure(template), placed)
