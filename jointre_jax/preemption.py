"""A checkpoint on preemption: SIGTERM (or SIGINT) ends a training loop at a step boundary.

Schedulers (SLURM, the clouds) send SIGTERM and wait a grace period before killing a job.
Inside :class:`StopRequest` a first SIGTERM or SIGINT only records the request: the loop
(:class:`jointre_jax.train.Loop`) finishes the step it is in, saves a checkpoint of that
step, waits for it to be on disk and raises :class:`~jointre_jax.errors.Preempted`, which every
program turns into one line and exit status 128 + the signal (143 for SIGTERM). Rerunning the
same command resumes at that step and ends as an uninterrupted run would. A second signal
stops the process at once, as it would have without this.

On several processes the stop is agreed first: :meth:`StopRequest.requested` is collective
(the processes' requests, all-gathered), so every process saves the same step. The gather
waits for the step on the device, so within an epoch it runs every :data:`AGREE_EVERY`
steps only (well inside any grace period), and at every epoch's end.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

import jax
import numpy as np

log = logging.getLogger(__name__)
SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Steps between two agreements of several processes within an epoch (one process: every step).
AGREE_EVERY = 10


class StopRequest:
    """Records SIGTERM and SIGINT for the ``with`` block (the main thread only) instead of
    dying at once; ``signum`` is the first signal received (None: none)."""

    def __init__(self, doing: str = "finishing this step, then saving a checkpoint"):
        self.signum: int | None = None
        self.doing = doing  # what the process does before it stops (the warning says it)
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # a second signal: what it would have done without us
            signal.signal(signum, self._previous.get(signum) or signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        log.warning("%s received: %s (a second signal stops at once)",
                    signal.Signals(signum).name, self.doing)  # fmt: skip

    def requested(self, step: int | None = None) -> bool:
        """Whether to stop after ``step`` (None: at an epoch's end); on several processes the
        same answer on every one, agreed at the epoch's end and every :data:`AGREE_EVERY`
        steps (a collective: every process asks at the same steps), else False."""
        if jax.process_count() == 1:
            return self.signum is not None
        if step is not None and step % AGREE_EVERY:
            return False
        from jax.experimental import multihost_utils

        signums = multihost_utils.process_allgather(np.int32(self.signum or 0))
        agreed = int(np.max(signums))
        if agreed and self.signum is None:
            self.signum = agreed  # another process was signalled: stop with it
        return bool(agreed)
