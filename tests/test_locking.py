"""One run per folder (jointre_jax.locking): a second training on a locked workdir or a second
program on a locked output stops before any work, in one line naming the holder; a lock left
by a dead process is taken over with a warning; and the last raw tracebacks are one line."""

import json
import logging
import os
import socket
import subprocess
import sys

import pytest

from jointre_jax import locking, train
from jointre_jax.data import trials
from jointre_jax.errors import UserError
from tests.conftest import REPO, override_flags
from tests.test_failures import assert_one_line_error, program
from tests.test_train import tiny_train_config, train_tiny


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("locking"), 2)


def snapshot(folder):
    """{relative path: (size, mtime_ns)} of every file of ``folder`` but the lock's."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.startswith(locking.LOCK_NAME)
    }


def dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return int(done.stdout)


def test_a_second_training_on_a_locked_workdir_stops_and_changes_nothing(trained, tmp_path):
    config, run = trained
    before = snapshot(run)
    with locking.hold(run, "workdir", program="train"):  # the first run, still going
        out = program("jointre_jax.main", "--config=configs/default.py", f"--workdir={run}",
                      *override_flags(config))  # fmt: skip
    last = assert_one_line_error(out, "train", f"workdir {run} is in use by another process")
    assert f"pid {os.getpid()} on {socket.gethostname()}, started " in last
    assert "wait for it to finish or stop it" in last
    assert snapshot(run) == before  # not a byte of the first run's files touched


def test_a_locked_output_stops_a_second_program_before_any_work(trained, tmp_path):
    _, run = trained
    output = tmp_path / "out.jsonl"
    (tmp_path / "in.txt").write_text("no heart failure\n")
    with locking.hold(output, "--output", folder=False, program="extract"):
        out = program("jointre_jax.tools.extract", f"--workdir={run}",
                      f"--input={tmp_path / 'in.txt'}", f"--output={output}")  # fmt: skip
    assert_one_line_error(out, "extract", f"--output {output} is in use by another process")
    assert not output.exists()
    out = program("jointre_jax.tools.extract", f"--workdir={run}",
                  f"--input={tmp_path / 'in.txt'}", f"--output={output}")  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]  # released: the next one runs
    assert json.loads(output.read_text().splitlines()[0])["text"] == "no heart failure"


def test_a_lock_left_by_a_dead_process_is_taken_over_with_a_warning(tmp_path, caplog):
    config = tiny_train_config(tmp_path / "c", epochs=1)
    workdir = tmp_path / "run"
    workdir.mkdir()
    pid = dead_pid()
    owner = {"pid": pid, "host": socket.gethostname(), "started": 1.0e9, "program": "train"}
    (workdir / f"{locking.LOCK_NAME}.owner").write_text(json.dumps(owner))
    with caplog.at_level(logging.WARNING, logger="jointre_jax.locking"):
        train.train_and_evaluate(config, workdir)
    assert (workdir / "metrics.json").exists()
    assert f"taking over the lock left by pid {pid} on {socket.gethostname()}" in caplog.text
    assert "which is gone" in caplog.text
    assert not (workdir / f"{locking.LOCK_NAME}.owner").exists()  # released at the end


def test_a_failed_start_leaves_no_workdir_and_no_lock(tmp_path):
    config = tiny_train_config(tmp_path / "c", epochs=1)
    config.data.dir = str(tmp_path / "no_corpus")
    with pytest.raises(UserError, match="corpus folder"):
        train.train_and_evaluate(config, tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_the_demo_config_through_main_without_shared_is_one_line(tmp_path):
    env = {"JOINTRE_DATA_DIR": str(tmp_path / "no_chia"), "JOINTRE_ENCODER": str(tmp_path / "no")}
    out = program("jointre_jax.main", "--config=configs/demo.py", f"--workdir={tmp_path / 'w'}",
                  env=env)  # fmt: skip
    assert_one_line_error(out, "train", "no corpus and no encoder",
                          "jointre demo --config=configs/demo.py")  # fmt: skip
    assert "HFValidationError" not in out.stderr
    assert not (tmp_path / "w").exists()


def test_a_numeric_nct_id_is_a_counted_bad_record(tmp_path):
    ids, module = {"nctId": "NCT00000001"}, {"eligibilityCriteria": "adults"}
    good = {"protocolSection": {"identificationModule": ids, "eligibilityModule": module}}
    bad = json.loads(json.dumps(good))
    bad["protocolSection"]["identificationModule"]["nctId"] = 12345
    source = tmp_path / "records.jsonl"
    source.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    read = trials.read_records(source, "ctgov", lenient=True)
    assert [r.nct_id for r in read.records] == ["NCT00000001"]
    assert read.skipped == {"bad_nct_id": 1}
    with pytest.raises(UserError, match=r"records.jsonl:2: .*nctId is int 12345, not a string"):
        trials.read_records(source, "ctgov")
    out = program("jointre_jax.tools.extract", "--workdir=/no/run", f"--input={source}",
                  f"--output={tmp_path / 'o.jsonl'}", cwd=REPO)  # fmt: skip
    assert_one_line_error(out, "extract", "records.jsonl:2", "nctId is int 12345")
