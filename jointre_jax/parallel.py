"""Device mesh, shardings and global batches for data-parallel and FSDP training.

The mesh has two axes, ``data`` and ``fsdp`` (``data`` x ``fsdp`` = all devices). Batches are
split over both axes. Parameters and optimiser state are replicated when ``fsdp`` is 1; with
``config.sharding.fsdp`` > 1 every large array is split along its largest dimension that
``fsdp`` divides (the big_vision / ZeRO-3 rule), so switching from data parallelism to FSDP is
a config change, not a code change. The rule depends only on shapes, so Adam's moments are
sharded exactly like their parameters.

Every process builds only its own rows of a global batch and :func:`global_batch` assembles
them with ``jax.make_array_from_process_local_data``.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jointre_jax.errors import UserError

AXES = ("data", "fsdp")
BATCH_SPEC = PartitionSpec(AXES)  # rows split over every device


def make_mesh(num_devices: int = 0, fsdp: int = 1, batch_sizes=()) -> Mesh:
    """A ``(data, fsdp)`` mesh over the first ``num_devices`` devices (0 = all, every process).

    Devices are taken in process order, so each process owns a contiguous block of rows and an
    FSDP group stays inside one process when ``fsdp`` divides the local device count.
    Raises UserError when ``fsdp`` does not divide the device count or a batch size in
    ``batch_sizes`` does not split over the devices.
    """
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    if num_devices:
        if jax.process_count() > 1 and num_devices != len(devices):
            raise UserError(
                f"--config.num_devices={num_devices}: must be 0 (all devices) with several "
                "processes"
            )
        devices = devices[:num_devices]
    count = len(devices)
    fsdp = int(fsdp) or 1
    if count % fsdp:
        raise UserError(f"--config.sharding.fsdp={fsdp}: does not divide the {count} devices")
    for size in batch_sizes:
        if size % count:
            raise UserError(
                f"batch size {size} does not split over {count} devices: set "
                "--config.data.batch_size / eval_batch_size (packed rows: data.pack_rows / "
                "eval_pack_rows) to a multiple, or --config.num_devices"
            )
    return Mesh(np.array(devices).reshape(count // fsdp, fsdp), AXES)


def array_spec(shape: tuple[int, ...], fsdp: int, min_size: int) -> PartitionSpec:
    """PartitionSpec of one parameter-like array under the FSDP rule.

    Arrays with fewer than ``min_size`` elements, or no dimension divisible by ``fsdp``, are
    replicated; others are split over ``fsdp`` along their largest divisible dimension.
    """
    if fsdp <= 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return PartitionSpec()
    candidates = [axis for axis, size in enumerate(shape) if size % fsdp == 0]
    if not candidates:
        return PartitionSpec()
    axis = max(candidates, key=lambda a: (shape[a], -a))
    spec = [None] * len(shape)
    spec[axis] = "fsdp"
    return PartitionSpec(*spec)


def state_shardings(abstract_state, mesh: Mesh, min_size: int = 2**12):
    """NamedShardings for every leaf of ``abstract_state`` (arrays or ShapeDtypeStructs)."""
    fsdp = mesh.shape["fsdp"]

    def leaf(x):
        return NamedSharding(mesh, array_spec(tuple(x.shape), fsdp, min_size))

    return jax.tree.map(leaf, abstract_state)


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding of an array every device holds whole."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows of a batch split over every device of ``mesh``."""
    return NamedSharding(mesh, BATCH_SPEC)


def global_batch(host_batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict:
    """Global jax.Arrays from this process's rows (dict of [B_local, ...] numpy arrays).

    Each process passes its contiguous block of rows (``Batcher.local_rows``); the global batch
    has ``B_local * process_count`` rows.
    """
    return {
        key: jax.make_array_from_process_local_data(sharding, np.asarray(value))
        for key, value in host_batch.items()
    }


def put_global(value: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A jax.Array of the whole host array ``value`` (same on every process) on ``sharding``:
    each device receives only its own shard."""
    value = np.asarray(value)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def describe(mesh: Mesh) -> str:
    """One log line: process, local and global devices, and the mesh shape."""
    return (
        f"process {jax.process_index()} of {jax.process_count()}: "
        f"{jax.local_device_count()} local / {jax.device_count()} global "
        f"{jax.default_backend()} devices; mesh {dict(mesh.shape)}"
    )


def initialize_distributed(environ=None) -> bool:
    """Starts JAX's distributed runtime when the launcher's environment asks for it.

    Asked for by ``JAX_COORDINATOR_ADDRESS`` (host:port of process 0; with ``JAX_NUM_PROCESSES``
    and ``JAX_PROCESS_ID``, as ``launch/local.sh`` and ``launch/host.sh`` set them), or by
    ``JOINTRE_DISTRIBUTED=1`` on a cluster that JAX detects by itself (SLURM, Open MPI,
    Kubernetes, Cloud TPU). Returns whether it started; a plain run starts nothing.
    """
    environ = os.environ if environ is None else environ
    if not environ.get("JAX_COORDINATOR_ADDRESS") and environ.get("JOINTRE_DISTRIBUTED") != "1":
        return False
    kwargs = {}
    for name, key in (("JAX_NUM_PROCESSES", "num_processes"), ("JAX_PROCESS_ID", "process_id")):
        if environ.get(name):
            kwargs[key] = int(environ[name])
    jax.distributed.initialize(**kwargs)
    return True


def params_mesh(params) -> Mesh:
    """The mesh that ``params``' arrays live on."""
    return jax.tree.leaves(params)[0].sharding.mesh
