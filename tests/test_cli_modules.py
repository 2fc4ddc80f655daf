"""Every command-line module imports side by side without defining its flags (a module that
defined absl flags at import time would make the second import fail)."""

import importlib

from absl import flags

CLI_MODULES = (
    "jointre_jax.main", "jointre_jax.evaluate", "jointre_jax.demo", "jointre_jax.extract",
    "jointre_jax.grid", "jointre_jax.data.report", "jointre_jax.adapt", "jointre_jax.teach",
    "jointre_jax.vote",
    "benchmarks.throughput", "benchmarks.gemm",
)  # fmt: skip


def test_cli_modules_import_together_and_define_flags_only_as_programs():
    before = set(flags.FLAGS)
    for name in CLI_MODULES:
        module = importlib.import_module(name)
        assert callable(module.main) and callable(module._define_flags)
    # Libraries (absl.app, orbax) may define theirs on first import; none of ours may.
    owners = flags.FLAGS.flags_by_module_dict()
    new = {f.name for module, defined in owners.items() for f in defined if module in CLI_MODULES}
    assert not new and set(flags.FLAGS) - before <= library_flags(owners)


def library_flags(owners) -> set[str]:
    """Names of the flags defined by modules outside the project."""
    ours = ("jointre_jax", "benchmarks", "__main__")
    return {f.name for m, defined in owners.items() if not m.startswith(ours) for f in defined}
