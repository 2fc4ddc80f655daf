"""Errors a user can cause and fix, as opposed to bugs.

Every command-line program (:mod:`jointre_jax.cli`) prints a :class:`UserError` as one line,
``program: message``, and exits with status 2; anything else is a bug and keeps its traceback.
A message says what is wrong, where (file and line, record, flag) and what to do.
"""


class UserError(Exception):
    """An expected error in the user's input, files or flags; ``str()`` is the whole message."""


class CheckpointError(UserError):
    """No checkpoint of a run could be read (each one tried is named, with why)."""
