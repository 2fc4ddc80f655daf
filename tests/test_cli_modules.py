"""Every command-line module imports side by side without defining its flags (a module that
defined absl flags at import time would make the second import fail)."""

import importlib

from absl import flags

CLI_MODULES = (
    "jointre_jax.main", "jointre_jax.tools.evaluate", "jointre_jax.tools.demo",
    "jointre_jax.tools.extract", "jointre_jax.tools.grid", "jointre_jax.tools.report",
    "jointre_jax.tools.adapt", "jointre_jax.tools.teach", "jointre_jax.tools.vote",
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


def test_every_console_script_answers_help():
    """``jointre --help`` lists every program, and each ``jointre PROGRAM --help`` prints its
    flags and exits 0 (the console script of pyproject.toml, as a user runs it)."""
    import pathlib
    import subprocess
    import sys

    from jointre_jax.tools import PROGRAMS

    script = pathlib.Path(sys.executable).with_name("jointre")
    assert script.exists(), f"{script}: the console script is not installed (pip install -e .)"
    listing = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    assert all(f"  {name} " in listing.stdout for name in PROGRAMS)
    for name in PROGRAMS:
        out = subprocess.run(
            [str(script), name, "--help"], capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, (name, out.stderr[-2000:])
        assert "--" in out.stdout and "Traceback" not in out.stderr, name
    wrong = subprocess.run([str(script), "trian"], capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 2 and "no program 'trian'" in wrong.stderr
