"""orbax checkpoints of a run: the latest (for resuming) and the best (for inference).

A checkpoint holds the TrainState (``state``) and a small JSON ``meta``. Training restores the
whole state; inference restores the parameters alone (:func:`restore_params`), without building
an optimiser.
"""

from __future__ import annotations

import pathlib

import jax
import orbax.checkpoint as ocp


def checkpoint_manager(directory: pathlib.Path, keep: int = 1) -> ocp.CheckpointManager:
    """The orbax manager of ``directory``, keeping the last ``keep`` steps."""
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    return ocp.CheckpointManager(pathlib.Path(directory).absolute(), options=options)


def save(manager, step: int, state, meta: dict) -> None:
    """Saves (state, meta) at ``step`` and waits until it is on disk."""
    manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
    )
    manager.wait_until_finished()


def restore(manager, state):
    """The latest (state, meta) of ``manager``, restored onto ``state``'s shardings."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    restored = manager.restore(
        manager.latest_step(),
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
        ),
    )
    return restored["state"], restored["meta"]


def restore_params(manager, params):
    """The parameters of ``manager``'s latest checkpoint, onto ``params``' shardings; the
    optimiser moments are not read."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, params)
    restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding), params)
    path = pathlib.Path(manager.directory) / str(manager.latest_step()) / "state"
    restored = ocp.PyTreeCheckpointer().restore(
        path,
        args=ocp.args.PyTreeRestore(
            {"params": abstract}, restore_args={"params": restore_args}, partial_restore=True
        ),
    )
    return restored["params"]
