"""A checkpoint on preemption (jointre_jax.preemption): SIGTERM at a random step of a real
training ends it with status 143 after saving that step; rerunning the same command ends with
the metrics.json of an uninterrupted run, every field but ``seconds``."""

import json
import os
import random
import signal
import subprocess
import sys
import time

from jointre_jax import checkpoints
from tests.conftest import REPO, override_flags
from tests.test_failures import program
from tests.test_train import tiny_train_config

EPOCHS = 20


def without_seconds(value):
    if isinstance(value, dict):
        return {k: without_seconds(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [without_seconds(v) for v in value]
    return value


def log_lines(workdir):
    path = workdir / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_sigterm_saves_the_step_and_the_rerun_ends_as_an_uninterrupted_run(tmp_path):
    config = tiny_train_config(tmp_path / "c", epochs=EPOCHS)
    config.checkpoint_every_steps = 0  # no periodic checkpoint: only the preemption's
    flags = ["--config=configs/default.py", *override_flags(config)]
    full = program("jointre_jax.main", *flags, f"--workdir={tmp_path / 'full'}")
    assert full.returncode == 0, full.stderr[-3000:]

    workdir = tmp_path / "stopped"
    chooser = random.Random()
    after_epochs = chooser.randint(2, EPOCHS // 2)
    job = subprocess.Popen(
        [sys.executable, "-m", "jointre_jax.main", *flags, f"--workdir={workdir}"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.time() + 300
    while len(log_lines(workdir)) < after_epochs + 1 and job.poll() is None:
        assert time.time() < deadline, "the training did not get going"
        time.sleep(0.01)
    time.sleep(chooser.uniform(0.0, 0.05))  # somewhere inside a later epoch
    job.send_signal(signal.SIGTERM)
    _, stderr = job.communicate(timeout=300)
    assert job.returncode == 143, (after_epochs, stderr[-3000:])
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("train: stopped by SIGTERM at step "), last
    step = int(last.split("at step ")[1].split(":")[0])
    assert checkpoints.steps(workdir / "checkpoints")[0] == step  # saved at the step it said
    assert not (workdir / "metrics.json").exists()
    assert "Traceback" not in stderr

    resumed = program("jointre_jax.main", *flags, f"--workdir={workdir}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from step {step}" in resumed.stderr
    got = json.loads((workdir / "metrics.json").read_text())
    want = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert without_seconds(got) == without_seconds(want)
    assert without_seconds(log_lines(workdir)) == without_seconds(log_lines(tmp_path / "full"))


def test_two_processes_agree_on_the_step_they_stop_at(tmp_path):
    """launch/local.sh forwards SIGTERM to both processes of a 2 x 2-device run: they agree on
    one step, save it together and exit 143; the same command then resumes there and ends with
    the metrics.json of an uninterrupted 2-process run."""
    config = tiny_train_config(tmp_path / "c", epochs=8)
    config.checkpoint_every_steps = 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COORDINATOR")}

    def command(workdir, logs):
        return [
            str(REPO / "launch" / "local.sh"), "-n", "2", "-d", "2", "-l", str(logs), "--",
            sys.executable, "-m", "jointre_jax.main", "--config=configs/default.py",
            f"--workdir={workdir}", *override_flags(config),
        ]  # fmt: skip

    full = subprocess.run(command(tmp_path / "full", tmp_path / "l0"), cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert full.returncode == 0, full.stderr[-3000:]
    workdir = tmp_path / "stopped"
    job = subprocess.Popen(command(workdir, tmp_path / "l1"), cwd=REPO, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 300
    while len(log_lines(workdir)) < 3 and job.poll() is None:
        assert time.time() < deadline, "the training did not get going"
        time.sleep(0.01)
    job.send_signal(signal.SIGTERM)
    assert job.wait(timeout=300) == 143
    said = []
    for index in range(2):
        last = (tmp_path / "l1" / f"process_{index}.log").read_text().strip().splitlines()[-1]
        assert last.startswith("train: stopped by SIGTERM at step "), last
        said.append(int(last.split("at step ")[1].split(":")[0]))
    assert said[0] == said[1] == checkpoints.steps(workdir / "checkpoints")[0]
    resumed = subprocess.run(command(workdir, tmp_path / "l2"), cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    got = json.loads((workdir / "metrics.json").read_text())
    want = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert without_seconds(got) == without_seconds(want)
