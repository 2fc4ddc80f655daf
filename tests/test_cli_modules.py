"""Every command-line module imports side by side without defining its flags (a module that
defined absl flags at import time would make the second import fail)."""

import importlib

from absl import flags

CLI_MODULES = (
    "jointre_jax.main", "jointre_jax.evaluate", "jointre_jax.demo", "jointre_jax.extract",
    "jointre_jax.grid", "jointre_jax.data.report", "benchmarks.throughput", "benchmarks.gemm",
)  # fmt: skip


def test_cli_modules_import_together_and_define_flags_only_as_programs():
    before = set(flags.FLAGS)
    for name in CLI_MODULES:
        module = importlib.import_module(name)
        assert callable(module.main) and callable(module._define_flags)
    assert set(flags.FLAGS) == before
