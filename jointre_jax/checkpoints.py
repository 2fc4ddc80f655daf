"""orbax checkpoints of a run: the latest (for resuming) and the best (for inference).

A checkpoint holds the TrainState (``state``) and a small JSON ``meta``. Training restores the
whole state; inference restores the parameters alone (:func:`restore_params`), without building
an optimiser.

A checkpoint can be damaged (a disk filled up, a copy cut short). Every restore here tries the
candidates in order and says, in one line each, which one it could not read and why:

* inference (:func:`restore_run_params`): the best checkpoint, then the latest ones, newest
  first; :class:`~jointre_jax.errors.CheckpointError` when none is readable;
* training resume (:func:`restore_latest`): the latest step, then the earlier ones kept
  (``keep``); an unreadable step is moved aside (``unreadable-<step>``) so that training can
  save that step again; with none readable, training starts afresh, with a warning, and the
  best checkpoints of the earlier run are moved aside too (:func:`set_aside`).
"""

from __future__ import annotations

import logging
import pathlib

import jax
import orbax.checkpoint as ocp

from jointre_jax.errors import CheckpointError

log = logging.getLogger(__name__)
RUN_FOLDERS = ("best", "checkpoints")


def checkpoint_manager(directory: pathlib.Path, keep: int = 1) -> ocp.CheckpointManager:
    """The orbax manager of ``directory``, keeping the last ``keep`` steps."""
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    return ocp.CheckpointManager(pathlib.Path(directory).absolute(), options=options)


def steps(directory: pathlib.Path) -> list[int]:
    """The saved steps in ``directory``, newest first (orbax's temporary folders excluded)."""
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        return []
    return sorted((int(p.name) for p in directory.iterdir() if p.name.isdigit()), reverse=True)


def save(manager, step: int, state, meta: dict) -> None:
    """Saves (state, meta) at ``step`` and waits until it is on disk."""
    manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
    )
    manager.wait_until_finished()


def restore(manager, state, step: int | None = None):
    """(state, meta) of ``step`` (default: the latest) of ``manager``, onto ``state``'s
    shardings."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    restored = manager.restore(
        manager.latest_step() if step is None else step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
        ),
    )
    return restored["state"], restored["meta"]


class ModelMismatch(ValueError):
    """A checkpoint whose parameters are not those of the model restoring it."""


def _move_aside(directory: pathlib.Path, step: int, prefix: str) -> pathlib.Path:
    """Renames step folder ``step`` of ``directory`` to a free ``<prefix>-<step>[-n]``."""
    aside, n = directory / f"{prefix}-{step}", 1
    while aside.exists():  # an earlier run may have set that step aside already
        n += 1
        aside = directory / f"{prefix}-{step}-{n}"
    (directory / str(step)).rename(aside)
    return aside


def restore_latest(directory: pathlib.Path, state):
    """(state, meta) of the newest readable step of ``directory``, or None when there is no
    step or none can be read (each unreadable one is logged and moved aside)."""
    directory = pathlib.Path(directory)
    for step in steps(directory):
        try:
            return restore(checkpoint_manager(directory), state, step)
        except Exception as err:  # noqa: BLE001 - any damage to the files: try the next one
            aside = _move_aside(directory, step, "unreadable")
            log.warning("checkpoint %s is unreadable (%s); moved to %s", directory / str(step),
                        describe(err), aside.name)  # fmt: skip
    if any(p.name.startswith("unreadable-") for p in directory.glob("*")):
        log.warning("no readable checkpoint in %s: training starts afresh", directory)
    return None


def set_aside(directory: pathlib.Path, reason: str, after: int = -1) -> None:
    """Moves the steps of ``directory`` beyond ``after`` aside (``earlier-<step>``), saying
    why: a run must never read a checkpoint it did not save (an earlier run's, maybe of
    another model)."""
    directory = pathlib.Path(directory)
    for step in steps(directory):
        if step > after:
            aside = _move_aside(directory, step, "earlier")
            log.warning("%s: checkpoint %s moved to %s", reason, directory / str(step),
                        aside.name)  # fmt: skip


def restore_params(path: pathlib.Path, params, field: str = "params"):
    """The parameters of the checkpoint at ``path`` (a step folder), onto ``params``'
    shardings; the optimiser moments are not read. ``field``: the state's field that holds
    them ("ema_params": the moving average of a run with ``optim.ema_decay``)."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, params)
    restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding), params)
    restored = ocp.PyTreeCheckpointer().restore(
        pathlib.Path(path).absolute() / "state",
        args=ocp.args.PyTreeRestore(
            {field: abstract}, restore_args={field: restore_args}, partial_restore=True
        ),
    )[field]
    # A partial restore leaves what the checkpoint lacks as placeholders: another model's.
    missing = [
        "/".join(str(getattr(k, "key", k)) for k in keys)
        for keys, leaf in jax.tree_util.tree_leaves_with_path(restored)
        if not isinstance(leaf, jax.Array)
    ]
    if missing:
        raise ModelMismatch(
            f"the checkpoint lacks {len(missing)} parameters "
            f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})"
        )
    return restored


def restore_run_params(workdir: pathlib.Path, params, field: str = "params"):
    """(params, step folder) of the first readable checkpoint of a run (its ``field``, see
    :func:`restore_params`): ``best/``, then
    ``checkpoints/``, newest first. Unreadable ones are logged, one line each, and the one used
    instead is named. Raises CheckpointError when none is readable or the run has none."""
    workdir = pathlib.Path(workdir)
    failures = []
    for folder in RUN_FOLDERS:
        for step in steps(workdir / folder):
            path = workdir / folder / str(step)
            try:
                restored = restore_params(path, params, field)
            except Exception as err:  # noqa: BLE001 - any damage to the files: try the next one
                failures.append(f"{path} ({describe(err)})")
                log.warning("checkpoint %s is unreadable: %s", path, describe(err))
                continue
            if failures:
                log.warning("using checkpoint %s instead", path)
            return restored, path
    if failures:
        raise CheckpointError(f"no readable checkpoint in {workdir}: {'; '.join(failures)}")
    raise CheckpointError(
        f"no checkpoint in {workdir}/best or {workdir}/checkpoints: has the run trained an "
        "epoch yet?"
    )


def describe(err: BaseException) -> str:
    """One line on why a checkpoint could not be read (the innermost cause, shortened)."""
    text = str(err)  # orbax's own words for a tree or a shape that does not fit
    orbax_mismatch = any(
        words in text
        for words in ("tree structures do not match", "not compatible with the stored shape")
    )
    if isinstance(err, ModelMismatch) or orbax_mismatch:
        return "its parameters do not match this model: saved with another config?"
    while err.__cause__ is not None:
        err = err.__cause__
    lines = [x.strip() for x in str(err).splitlines() if x.strip()]
    text = lines[0] if lines else ""
    if len(text) > 160:
        text = text[:157] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
