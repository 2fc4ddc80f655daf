"""Runs here: Chia from ../shared/data/chia and the 6-layer uncased MiniLM from ../shared.

Both paths can be overridden by the environment (JOINTRE_DATA_DIR, JOINTRE_ENCODER) and by
``--config.data.dir`` / ``--config.model.encoder``.
"""

import os
import pathlib

from configs import default

# ../shared beside the repository, wherever the command is run from.
_SHARED = pathlib.Path(__file__).resolve().parent.parent.parent / "shared"


def get_config():
    """Returns the default config pointed at the local Chia copy and MiniLM encoder."""
    config = default.get_config()
    config.unlock()
    config.data.dir = os.environ.get("JOINTRE_DATA_DIR", str(_SHARED / "data" / "chia"))
    config.model.encoder = os.environ.get(
        "JOINTRE_ENCODER", str(_SHARED / "models" / "all-MiniLM-L6-v2")
    )
    config.lock()
    return config
