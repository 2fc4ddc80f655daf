"""Sharded training on 4 fake CPU devices: data-parallel and FSDP steps equal the one-device
step, checkpoints move between meshes, and 2 processes x 2 devices train through
launch/local.sh on loopback."""

import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from jointre_jax import checkpoints, inference, parallel, runtime, steps
from jointre_jax import state as state_lib
from jointre_jax.data.batching import Batcher
from jointre_jax.errors import UserError
from jointre_jax.labels import BioScheme
from jointre_jax.model.losses import LossOptions
from tests.conftest import REPO, override_flags
from tests.test_train import tiny_model, tiny_train_config

# Sharded and one-device steps differ only in the order of floating-point reductions.
ATOL, RTOL = 2e-6, 1e-5


def test_fsdp_rule_splits_the_largest_divisible_dimension():
    assert parallel.array_spec((1000, 384), 2, 4096) == PartitionSpec("fsdp", None)
    assert parallel.array_spec((384, 1536), 4, 4096) == PartitionSpec(None, "fsdp")
    assert parallel.array_spec((30, 384), 4, 4096) == PartitionSpec(None, "fsdp")
    assert parallel.array_spec((384,), 4, 4096) == PartitionSpec()  # small: replicated
    assert parallel.array_spec((4097, 3), 2, 4096) == PartitionSpec()  # nothing divisible
    assert parallel.array_spec((1000, 384), 1, 4096) == PartitionSpec()  # data parallel only


def test_mesh_checks_devices_and_batch_sizes():
    assert dict(parallel.make_mesh(0, 2).shape) == {"data": 2, "fsdp": 2}
    assert dict(parallel.make_mesh(2).shape) == {"data": 2, "fsdp": 1}
    with pytest.raises(UserError, match="does not divide"):
        parallel.make_mesh(0, 3)
    with pytest.raises(UserError, match="batch size 6 does not split over 4"):
        parallel.make_mesh(0, 1, (6,))


def _setup(tmp_path, num_devices, fsdp):
    config = tiny_train_config(tmp_path / f"c{num_devices}_{fsdp}", epochs=1, packing=False)
    config.num_devices = num_devices
    config.sharding.fsdp = fsdp
    config.sharding.fsdp_min_size = 64  # the tiny model's arrays are small
    encoder, data, model = tiny_model(config)
    mesh = runtime.make_mesh(config)
    state = state_lib.create_state(config, model, None, 10, mesh)
    batcher = Batcher(data.examples, (16, 128), 4, seed=0, scheme=encoder.scheme)
    return mesh, state, batcher


def _run_steps(mesh, state, batcher, count=3):
    train_fn = steps.jit_train_step(mesh, state, LossOptions(BioScheme(1)))
    sharding = parallel.batch_sharding(mesh)
    losses = []
    plan = batcher.epoch_plan(0) + batcher.epoch_plan(1)
    for host_batch in list(batcher.iterate(plan))[:count]:
        state, metrics = train_fn(
            state, parallel.global_batch(host_batch, sharding), jax.random.key(1)
        )
        losses.append(float(metrics["loss"]))
    return state, losses


@pytest.mark.parametrize("num_devices, fsdp", [(4, 1), (4, 2), (4, 4)])
def test_sharded_steps_equal_the_single_device_steps(tmp_path, num_devices, fsdp):
    mesh1, state1, batcher = _setup(tmp_path, 1, 1)
    mesh, state, _ = _setup(tmp_path, num_devices, fsdp)
    specs = {leaf.sharding.spec for leaf in jax.tree.leaves(state.params)}
    if fsdp > 1:  # parameters and Adam moments really are split
        assert any("fsdp" in spec for spec in specs)
        moments = jax.tree.leaves(state.opt_state)
        assert any("fsdp" in leaf.sharding.spec for leaf in moments if leaf.ndim)
    else:
        assert specs == {PartitionSpec()}
    for a, b in zip(jax.tree.leaves(state1.params), jax.tree.leaves(state.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # same initialisation
    state1, losses1 = _run_steps(mesh1, state1, batcher)
    state, losses = _run_steps(mesh, state, batcher)
    np.testing.assert_allclose(losses, losses1, rtol=RTOL, atol=ATOL)
    assert losses[0] != losses[-1]  # the steps changed the parameters
    for a, b in zip(jax.tree.leaves(state1.params), jax.tree.leaves(state.params), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=RTOL, atol=ATOL)


def test_fsdp_checkpoint_restores_on_one_device(tmp_path):
    mesh, state, batcher = _setup(tmp_path, 4, 2)
    state, _ = _run_steps(mesh, state, batcher, count=1)
    manager = checkpoints.checkpoint_manager(tmp_path / "ckpt")
    checkpoints.save(manager, int(state.step), state, {"best_epoch": 1})
    _, target, _ = _setup(tmp_path, 1, 1)
    restored, meta = checkpoints.restore(manager, target)
    assert meta == {"best_epoch": 1} and int(restored.step) == 1
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True):
        assert len(b.sharding.device_set) == 1
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_two_processes_of_two_devices_train_and_agree(tmp_path):
    config = tiny_train_config(tmp_path, epochs=2)
    config.sharding.fsdp = 2
    config.sharding.fsdp_min_size = 64
    workdir, logs = tmp_path / "run", tmp_path / "logs"
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COORDINATOR")}
    command = [
        str(REPO / "launch" / "local.sh"), "-n", "2", "-d", "2", "-l", str(logs), "--",
        sys.executable, "-m", "jointre_jax.main", "--config=configs/default.py",
        f"--workdir={workdir}", *override_flags(config),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, env=env, timeout=600, capture_output=True, text=True)
    texts = [(logs / f"process_{i}.log").read_text() for i in range(2)]
    assert done.returncode == 0, done.stderr + "\n".join(t[-3000:] for t in texts)
    finals = []
    for index, text in enumerate(texts):
        assert f"process {index} of 2: 2 local / 4 global cpu devices" in text
        assert "mesh {'data': 2, 'fsdp': 2}" in text
        finals.append(json.loads(re.search(rf"process {index} final test f1: (.*)", text)[1]))
    assert finals[0] == finals[1]  # both processes computed the same scores
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [0, 1, 2]  # process 0 alone wrote them
    saved = json.loads((workdir / "metrics.json").read_text())
    assert {k: saved[k]["f1"] for k in finals[0]} == finals[0]
    # The 4-device FSDP checkpoint restores on one device and scores the same.
    corpus = tmp_path / "corpus"
    one = inference.evaluate_folder(
        workdir, corpus / "brat", corpus / "splits" / "train.txt", num_devices=1
    )
    for key, f1 in finals[0].items():
        assert one[key]["f1"] == pytest.approx(f1)
