"""Pre-trained BERT weights: find them, convert PyTorch layout to Flax, merge into params.

Sources, in order of preference: ``flax_model.msgpack`` (FlaxBertModel layout),
``model.safetensors`` (PyTorch layout, read with numpy: no torch needed) and
``pytorch_model.bin`` (needs torch). The conversion is the one
``FlaxBertModel.from_pretrained(..., from_pt=True)`` applies: ``weight`` of a linear layer is
transposed into ``kernel``, LayerNorm ``weight``/``gamma`` become ``scale``, ``bias``/``beta``
``bias``, embedding ``weight`` becomes ``embedding``; a ``bert.`` prefix is removed and heads of
pre-training (``cls.``) and buffers (``position_ids``) are left out.
"""

from __future__ import annotations

import logging
import os
import pathlib

import numpy as np
from flax import traverse_util

from jointre_jax.errors import UserError

WEIGHT_FILES = ("flax_model.msgpack", "model.safetensors", "pytorch_model.bin")
_PREFIXES = ("bert.", "model.")
_SKIP = ("cls.", "position_ids", "lm_head.", "qa_outputs.", "classifier.")


def looks_like_path(encoder: str) -> bool:
    """True when ``encoder`` names a local folder rather than a hub id (``org/name``): it is
    absolute, starts with ``.`` or ``~``, has more than one ``/``, or its parent folder exists."""
    if encoder.startswith((".", "~", os.sep)) or encoder.count("/") > 1:
        return True
    parent = pathlib.Path(os.path.expanduser(encoder)).parent
    return str(parent) not in ("", ".") and parent.is_dir()


def check_encoder(encoder: str) -> pathlib.Path | None:
    """The local folder ``encoder`` names, None for a hub id; UserError for a path that is not
    there (rather than the hub's complaint about a malformed repo id)."""
    path = pathlib.Path(os.path.expanduser(encoder))
    if path.is_dir():
        return path
    if looks_like_path(encoder):
        raise UserError(
            f"encoder folder {encoder} not found (config.model.encoder): give a folder with "
            "config.json, weights and tokenizer files, or a hub id such as bert-base-uncased"
        )
    return None


def resolve_encoder(encoder: str) -> pathlib.Path:
    """A local directory for ``encoder``: the directory itself, or a hub snapshot of the id.

    Hub downloads fetch only the config, weights and tokenizer files (cached by
    huggingface_hub; offline with HF_HUB_OFFLINE=1 once cached).
    """
    path = check_encoder(encoder)
    if path is not None:
        return path
    from huggingface_hub import snapshot_download

    patterns = ["config.json", "*.txt", "*.json", *WEIGHT_FILES]
    return pathlib.Path(snapshot_download(encoder, allow_patterns=patterns))


def convert_pytorch_state(state: dict[str, np.ndarray]) -> dict[tuple[str, ...], np.ndarray]:
    """PyTorch BERT state dict (numpy arrays) to flat Flax paths of FlaxBertModel."""
    flat = {}
    for name, value in state.items():
        for prefix in _PREFIXES:
            name = name.removeprefix(prefix)
        if name.startswith(_SKIP) or name.endswith(_SKIP):
            continue
        *path, leaf = name.split(".")
        value = np.asarray(value)
        if path and path[-1] == "LayerNorm":
            leaf = {"weight": "scale", "gamma": "scale", "beta": "bias"}.get(leaf, leaf)
        elif path and path[-1].endswith("embeddings") and leaf == "weight":
            leaf = "embedding"
        elif leaf == "weight" and value.ndim == 2:
            leaf, value = "kernel", value.T
        flat[(*path, leaf)] = value
    return flat


def load_weights(directory: str | pathlib.Path) -> dict[tuple[str, ...], np.ndarray]:
    """Flat {path: array} of the encoder weights in ``directory`` (FlaxBertModel layout)."""
    directory = pathlib.Path(directory)
    if (directory / "flax_model.msgpack").exists():
        from flax import serialization

        tree = serialization.msgpack_restore((directory / "flax_model.msgpack").read_bytes())
        tree = tree.get("bert", tree)
        return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}
    if (directory / "model.safetensors").exists():
        from safetensors.numpy import load_file

        return convert_pytorch_state(load_file(str(directory / "model.safetensors")))
    if (directory / "pytorch_model.bin").exists():
        try:
            import torch
        except ImportError as err:
            raise ImportError(
                f"{directory}/pytorch_model.bin needs torch to read (pip install torch) "
                "or convert it to model.safetensors"
            ) from err
        state = torch.load(directory / "pytorch_model.bin", map_location="cpu", weights_only=True)
        return convert_pytorch_state({k: v.float().numpy() for k, v in state.items()})
    raise FileNotFoundError(f"no weights in {directory}: expected one of {WEIGHT_FILES}")


def merge_pretrained(params, pretrained: dict[tuple[str, ...], np.ndarray], prefix=("encoder",)):
    """Copies pre-trained encoder weights into freshly initialised ``params``.

    Args:
      params: the model's initialised parameter tree.
      pretrained: flat {path: array} from :func:`load_weights`.
      prefix: where the encoder lives in ``params``; everything outside it is a new head and
        keeps its initialisation.
    Returns:
      The merged tree (same structure and dtypes as ``params``).
    Raises:
      ValueError listing every encoder parameter that is missing from the checkpoint or has
      another shape. Checkpoint weights the model does not use (e.g. a pooler) are logged.
    """
    flat = traverse_util.flatten_dict(params)
    missing, misshapen, used = [], [], set()
    for path, value in flat.items():
        if tuple(path[: len(prefix)]) != tuple(prefix):
            continue
        key = tuple(path[len(prefix) :])
        if key not in pretrained:
            missing.append("/".join(key))
        elif tuple(pretrained[key].shape) != tuple(value.shape):
            misshapen.append(f"{'/'.join(key)}: {pretrained[key].shape} vs model {value.shape}")
        else:
            flat[path] = np.asarray(pretrained[key], dtype=value.dtype)
            used.add(key)
    if missing or misshapen:
        raise ValueError(
            "pre-trained weights do not fit the encoder: "
            + "; ".join([f"missing {m}" for m in missing[:10]] + misshapen[:10])
            + (
                f" (and {len(missing) + len(misshapen) - 20} more)"
                if len(missing) + len(misshapen) > 20
                else ""
            )
        )
    unused = sorted("/".join(k) for k in pretrained.keys() - used)
    if unused:
        logging.info("pre-trained weights not used by the model: %s", ", ".join(unused))
    return traverse_util.unflatten_dict(flat)
