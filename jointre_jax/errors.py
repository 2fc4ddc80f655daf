"""Errors a user can cause and fix, as opposed to bugs.

Every command-line program (:mod:`jointre_jax.cli`) prints a :class:`UserError` as one line,
``program: message``, and exits with status 2; anything else is a bug and keeps its traceback.
A message says what is wrong, where (file and line, record, flag) and what to do.
"""


class UserError(Exception):
    """An expected error in the user's input, files or flags; ``str()`` is the whole message."""


class CheckpointError(UserError):
    """No checkpoint of a run could be read (each one tried is named, with why)."""


class Preempted(Exception):  # noqa: N818 - a stop, not a failure
    """Training stopped on SIGTERM or SIGINT after saving a checkpoint at ``step``; every
    program exits with ``status`` (128 + the signal: 143 for SIGTERM), and rerunning the same
    command resumes there."""

    def __init__(self, step: int, signum: int, message: str | None = None):
        import signal

        name = signal.Signals(signum).name
        super().__init__(
            f"stopped by {name} at step {step}: a checkpoint of that step is saved; rerun the "
            "same command to resume"
            if message is None
            else f"stopped by {name}: {message}"
        )
        self.step, self.signum, self.status = step, signum, 128 + signum
