"""One process per folder: an exclusive lock on a workdir or an output for as long as a process
writes into it.

A second training in the same workdir (a job resubmitted by mistake), a second ``adapt`` into
the same encoder folder or a second ``extract`` into the same output would otherwise run side
by side and interleave their files. :func:`hold` takes the lock before any work: the lock is
``filelock``'s (``fcntl.flock`` on the lock file, which the kernel releases when its holder
dies, however it dies), and the holder's pid, host and start time sit beside it in a small
JSON file, so that a second process stops with one line naming them. An owner file whose lock
is free was left by a process that is gone (``kill -9``, a lost node): the lock is taken over,
with a warning that names the dead holder. The lock file itself stays in place (removing it
would let two processes lock two inodes of one path); the owner file goes on release.

On several processes (hosts) of one run only process 0 holds the lock, for all of them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
import socket
import time

import filelock
import jax
import numpy as np

from jointre_jax.errors import UserError

log = logging.getLogger(__name__)
LOCK_NAME = ".jointre.lock"  # in a folder; an output file FILE gets .FILE.lock beside it


class Locked(UserError):
    """The folder or output is held by another live process (the message names it)."""


def lock_path(target: str | os.PathLike, folder: bool = True) -> pathlib.Path:
    """The lock file of ``target``: ``target/.jointre.lock`` for a folder, ``.NAME.lock``
    beside an output file."""
    target = pathlib.Path(target)
    return target / LOCK_NAME if folder else target.with_name(f".{target.name}.lock")


def _owner_file(lock: pathlib.Path) -> pathlib.Path:
    return lock.with_name(lock.name + ".owner")


def _describe(owner: dict) -> str:
    started = owner.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "?"
    return (
        f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}, started {when} "
        f"({owner.get('program', '?')})"
    )


def _read_owner(path: pathlib.Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _acquire(path: pathlib.Path, target, what: str, program: str):
    """(the held FileLock, its owner file), or Locked naming the live holder."""
    owner_path = _owner_file(path)
    lock = filelock.FileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        holder = _read_owner(owner_path)
        raise Locked(
            f"{what} {target} is in use by another process ({_describe(holder)}): wait for "
            "it to finish or stop it; two processes must never write one folder"
        ) from None
    left = _read_owner(owner_path)
    if left:  # its holder is gone: the kernel released its lock
        here = left.get("host") == socket.gethostname()
        gone = "is gone" if not here or not _alive(left.get("pid")) else "no longer holds it"
        log.warning("%s %s: taking over the lock left by %s, which %s", what, target,
                    _describe(left), gone)  # fmt: skip
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
             "program": program or what}  # fmt: skip
    tmp = owner_path.with_name(owner_path.name + ".tmp")
    tmp.write_text(json.dumps(owner))
    os.replace(tmp, owner_path)
    return lock, owner_path


def _agree(held: bool) -> bool:
    """Whether process 0 got the lock (``held`` there), as every process learns it."""
    if jax.process_count() == 1:
        return held
    from jax.experimental import multihost_utils

    return bool(int(multihost_utils.broadcast_one_to_all(np.int32(held))))


@contextlib.contextmanager
def hold(
    target: str | os.PathLike, what: str, folder: bool = True, program: str = "",
    remove_if_unused: bool = False,
):  # fmt: skip
    """Holds the exclusive lock of ``target`` (a workdir or output folder, or with
    ``folder=False`` an output file) for the ``with`` block; the folder is created if need be.

    Raises :class:`Locked` (one line: the target, the holder's pid, host and start time, and
    what to do) when a live process holds it. ``what`` names the target in that line
    ("workdir", "--out", ...). ``remove_if_unused``: a folder this call created, which holds
    nothing but the lock when the block fails, is removed (a failed start leaves no folder).
    On several processes only process 0 holds the lock, and all of them stop if it cannot.
    """
    target = pathlib.Path(target)
    path = lock_path(target, folder)
    created = folder and not target.exists()
    lock = owner_path = refused = None
    if jax.process_index() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            lock, owner_path = _acquire(path, target, what, program)
        except Locked as err:
            refused = err
    if not _agree(refused is None):
        raise refused or Locked(f"{what} {target} is in use by another process (process 0 "
                                "of this run found it held)")  # fmt: skip
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        if lock is not None:
            with contextlib.suppress(OSError):
                owner_path.unlink()
            lock.release()
            if failed and created and remove_if_unused:
                names = {p.name for p in target.iterdir()}
                if names <= {path.name, owner_path.name}:
                    with contextlib.suppress(OSError):
                        path.unlink()
                        target.rmdir()
