"""``python -m jointre_jax.export``: the command ``jointre export`` (its code and flags are
:mod:`jointre_jax.tools.export`)."""

import runpy

if __name__ == "__main__":
    runpy.run_module("jointre_jax.tools.export", run_name="__main__", alter_sys=True)
