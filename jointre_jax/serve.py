"""``python -m jointre_jax.serve``: the command ``jointre serve`` (its code and flags are
:mod:`jointre_jax.tools.serve`)."""

import runpy

if __name__ == "__main__":
    runpy.run_module("jointre_jax.tools.serve", run_name="__main__", alter_sys=True)
