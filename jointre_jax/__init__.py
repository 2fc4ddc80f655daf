"""jointre_jax: joint entity and relation extraction from clinical-trial eligibility criteria."""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("jointre_jax")
except _metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
