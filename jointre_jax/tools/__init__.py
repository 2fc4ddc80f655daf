"""The command-line programs, and ``jointre``, the one entry point that names them all.

    jointre PROGRAM [FLAGS...]      # e.g. jointre extract --workdir=RUN --input=... --output=...
    jointre --help                  # the programs, one line each
    jointre PROGRAM --help          # that program's flags

Each program is a thin module of flags and a ``main`` around the library (``jointre train`` is
``python -m jointre_jax.main``; the others are ``jointre PROGRAM``), so
``jointre PROGRAM ...`` and ``python -m ...`` are the same command. Every program follows the
rules of :mod:`jointre_jax.cli`: a user error is one line and exit status 2.
"""

from __future__ import annotations

import runpy
import sys

# program -> (module, what it does); the order of ``jointre --help``.
PROGRAMS = {
    "train": ("jointre_jax.main", "train and evaluate a model (a config and a workdir)"),
    "evaluate": ("jointre_jax.tools.evaluate", "score a trained run on a BRAT folder"),
    "extract": ("jointre_jax.tools.extract", "extract entities and relations from criteria"),
    "merge": ("jointre_jax.tools.merge", "join the DuckDB files of a sharded extraction"),
    "export": ("jointre_jax.tools.export", "a trained run as a self-contained model folder"),
    "serve": ("jointre_jax.tools.serve", "an HTTP extraction service around a model"),
    "vote": ("jointre_jax.tools.vote", "majority vote of saved extractions, scored"),
    "report": ("jointre_jax.tools.report", "the data report of a config's corpus"),
    "demo": ("jointre_jax.tools.demo", "train briefly and show extractions (make demo)"),
    "grid": ("jointre_jax.tools.grid", "the paper's Table 4 as a grid of runs"),
    "adapt": ("jointre_jax.tools.adapt", "adapt the encoder to the corpus (masked LM)"),
    "teach": ("jointre_jax.tools.teach", "write a teacher's span distributions"),
}


def usage() -> str:
    """The text of ``jointre --help``."""
    width = max(map(len, PROGRAMS))
    lines = ["usage: jointre PROGRAM [FLAGS...]   (jointre PROGRAM --help: its flags)", ""]
    lines += [f"  {name:{width}s}  {about}" for name, (_, about) in PROGRAMS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Runs ``jointre PROGRAM FLAGS...`` as ``python -m MODULE FLAGS...`` would."""
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(usage())
        sys.exit(0 if len(argv) >= 2 else 2)
    name = argv[1]
    if name not in PROGRAMS:
        print(f"jointre: no program {name!r}\n\n{usage()}", file=sys.stderr)
        sys.exit(2)
    module = PROGRAMS[name][0]
    sys.argv = [f"jointre {name}", *argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
