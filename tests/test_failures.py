"""Failing well: every user error of a command-line program is one line with exit status 2 and
no traceback; finished work is never lost to an output path; damaged checkpoints are survived.

The checkpoint tests truncate real files of a tiny trained run."""

import json
import logging
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from jointre_jax import checkpoints, cli, inference, train
from jointre_jax.errors import CheckpointError
from tests.conftest import REPO, override_flags, t_line, write_brat
from tests.test_train import train_tiny


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(config, run folder) of a tiny run: best/ holds one step, checkpoints/ two."""
    config, run = train_tiny(tmp_path_factory.mktemp("failures"), 2, checkpoint_every_steps=1)
    assert len(checkpoints.steps(run / "checkpoints")) == 2
    return config, run


def copy_run(trained, tmp_path):
    return shutil.copytree(trained[1], tmp_path / "run")


def truncate(path):
    path.write_bytes(b"")
    return path


def program(module, *args, cwd=REPO, env=None):
    """Runs ``python -m module args``; returns the CompletedProcess."""
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def assert_one_line_error(out, program_name, *fragments):
    """Exit status 2, no traceback, and a last line ``program: ...`` holding ``fragments``."""
    assert out.returncode == cli.EXIT_USER_ERROR, (out.returncode, out.stderr[-2000:])
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{program_name}: "), last
    for fragment in fragments:
        assert fragment in last, (fragment, last)
    return last


# ---------------------------------------------------------------- damaged checkpoints


def data_files(step_folder):
    """The files that hold a checkpoint's array bytes (orbax's OCDBT data files)."""
    files = [p for p in step_folder.rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files, step_folder
    return files


@pytest.mark.parametrize("damage", ["data_files", "metadata"])
def test_a_damaged_best_checkpoint_falls_back_to_the_latest(trained, tmp_path, caplog, damage):
    run = copy_run(trained, tmp_path)
    (step,) = checkpoints.steps(run / "best")
    best = run / "best" / str(step)
    if damage == "data_files":  # a copy cut short: the array bytes are gone
        for path in data_files(best):
            truncate(path)
    else:
        truncate(best / "state" / "_METADATA")
    with caplog.at_level(logging.WARNING, logger="jointre_jax.checkpoints"):
        _, predictor, _ = inference.load_run(run)
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"checkpoint {best} is unreadable" in m for m in messages), messages
    latest = run / "checkpoints" / str(checkpoints.steps(run / "checkpoints")[0])
    assert any(f"using checkpoint {latest} instead" in m for m in messages), messages
    expected = checkpoints.restore_params(latest, predictor.params)
    for a, b in zip(jax.tree.leaves(predictor.params), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_no_readable_checkpoint_is_one_line_naming_each(trained, tmp_path):
    run = copy_run(trained, tmp_path)
    for folder in ("best", "checkpoints"):
        for step in checkpoints.steps(run / folder):
            truncate(run / folder / str(step) / "state" / "_METADATA")
    with pytest.raises(CheckpointError, match="no readable checkpoint") as caught:
        inference.load_run(run)
    assert str(caught.value).count(str(run)) == 4  # the run, then each checkpoint tried
    (tmp_path / "in.txt").write_text("stroke\n")
    out = program(
        "jointre_jax.tools.extract", f"--workdir={run}", f"--input={tmp_path / 'in.txt'}",
        f"--output={tmp_path / 'out.jsonl'}",
    )  # fmt: skip
    assert_one_line_error(out, "extract", "no readable checkpoint", str(run / "best"))
    assert out.stderr.count("is unreadable") == 3  # a warning line per checkpoint tried


def test_resume_falls_back_to_an_earlier_step_then_afresh(trained, tmp_path, caplog):
    config, _ = trained
    run = copy_run(trained, tmp_path)
    newest, previous = checkpoints.steps(run / "checkpoints")
    for path in data_files(run / "checkpoints" / str(newest)):
        truncate(path)
    with caplog.at_level(logging.WARNING, logger="jointre_jax.checkpoints"):
        state, _ = checkpoints.restore_latest(run / "checkpoints", train_state_like(config, run))
    assert int(state.step) == previous
    assert (run / "checkpoints" / f"unreadable-{newest}").is_dir()  # moved aside, kept
    assert any("is unreadable" in r.getMessage() for r in caplog.records)
    # Resuming the run from the earlier step trains to the end again.
    results = train.train_and_evaluate(config, run)
    assert json.loads((run / "metrics.json").read_text())["ner"] == results["ner"]
    # With no readable step at all, training starts afresh, with a warning.
    for step in checkpoints.steps(run / "checkpoints"):
        truncate(run / "checkpoints" / str(step) / "state" / "_METADATA")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="jointre_jax.checkpoints"):
        fresh = checkpoints.restore_latest(run / "checkpoints", train_state_like(config, run))
    assert fresh is None
    assert any("starts afresh" in r.getMessage() for r in caplog.records)


def train_state_like(config, run):
    """A fresh TrainState of the run's model, to restore onto."""
    from jointre_jax import runtime
    from jointre_jax import state as state_lib
    from jointre_jax.data.corpus import make_encoder

    saved = inference.saved_config(run / "config.json")
    encoder = make_encoder(saved)
    bert, _ = runtime.encoder_config(saved)
    model = runtime.create_model(saved, encoder.scheme, encoder.schema.num_relation_labels, bert)
    return state_lib.create_state(saved, model, None, 10, runtime.make_mesh(saved))


# ------------------------------------------------------------ one-line user errors


def test_evaluate_checks_its_output_before_the_work_and_creates_folders(trained, tmp_path):
    config, run = trained
    brat = f"--brat_dir={config.data.dir}/brat"
    (tmp_path / "file").write_text("")
    out = program(
        "jointre_jax.tools.evaluate", f"--workdir={run}", brat, f"--out={tmp_path}/file/x.json"
    )
    assert_one_line_error(out, "evaluate", f"--out={tmp_path}/file/x.json", "cannot write")
    assert "reading" not in out.stderr  # checked before any document was read
    target = tmp_path / "new" / "folder" / "scores.json"
    out = program("jointre_jax.tools.evaluate", f"--workdir={run}", brat, f"--out={target}")
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(target.read_text())["corpus"]["gold"]["entities"] > 0
    assert "evaluate: 4 documents" in out.stderr  # the problem counts are printed
    assert "dropped from the encoded gold (by reason)" in out.stderr
    assert "text_mismatch" in out.stderr


def test_evaluate_counts_orphan_annotations_and_says_when_there_is_no_gold(trained, tmp_path):
    _, run = trained
    text = "Patients with type 2 diabetes\n"
    write_brat(tmp_path / "brat", "NCT7_inc", text, t_line("T1", "Condition", text, "diabetes"))
    (tmp_path / "brat" / "NCT8_inc.ann").write_text(t_line("T1", "Condition", text, "type"))
    out = program(
        "jointre_jax.tools.evaluate", f"--workdir={run}", f"--brat_dir={tmp_path / 'brat'}",
        f"--out={tmp_path / 'scores.json'}",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["data"]["skipped"] == {"ann_without_txt": 1}
    assert any("NCT8_inc.ann: no NCT8_inc.txt" in p for p in scores["data"]["problems"])
    assert "not read: ann_without_txt 1" in out.stderr
    assert "no gold relations: RE scores have nothing to count against" in out.stderr


def test_user_errors_are_one_line_and_verbose_shows_the_traceback(trained, tmp_path):
    config, run = trained
    (tmp_path / "split.txt").write_text("NCT1\nNCT404\n")
    out = program(
        "jointre_jax.tools.evaluate", f"--workdir={run}", f"--brat_dir={config.data.dir}/brat",
        f"--split_file={tmp_path / 'split.txt'}", f"--out={tmp_path / 's.json'}",
    )  # fmt: skip
    assert_one_line_error(out, "evaluate", "split.txt:2:", "no document NCT404*.txt")
    (tmp_path / "not_a_run").mkdir()
    (tmp_path / "in.txt").write_text("stroke\n")
    args = (f"--input={tmp_path / 'in.txt'}", f"--output={tmp_path / 'o.jsonl'}")
    out = program("jointre_jax.tools.extract", f"--workdir={tmp_path / 'not_a_run'}", *args)
    assert_one_line_error(out, "extract", "is not a run", "config.json")
    out = program(
        "jointre_jax.tools.extract", f"--workdir={tmp_path / 'not_a_run'}", *args, "--verbose"
    )
    assert out.returncode != 0 and "Traceback" in out.stderr
    out = program("jointre_jax.tools.extract", f"--workdir={run}", f"--input={tmp_path / 'no.txt'}",
                  f"--output={tmp_path / 'o.jsonl'}")  # fmt: skip
    assert_one_line_error(out, "extract", "not found")


def train_flags(config, tmp_path, *extra):
    return [
        "--config=configs/default.py", f"--workdir={tmp_path / 'w'}",
        *override_flags(config), *extra,
    ]  # fmt: skip


def test_training_user_errors_are_one_line_and_leave_no_workdir(trained, tmp_path):
    config, _ = trained
    out = program("jointre_jax.main", *train_flags(config, tmp_path, "--config.data.dir=/no/data"))
    assert_one_line_error(out, "train", "corpus folder '/no/data' not found")
    out = program(
        "jointre_jax.main", *train_flags(config, tmp_path, "--config.model.encoder=/no/such/dir")
    )
    assert_one_line_error(out, "train", "encoder folder /no/such/dir not found")
    assert not (tmp_path / "w").exists()  # a failed start leaves no half-made run
    out = program("jointre_jax.main", *train_flags(config, tmp_path, "--config.data.bukets=1"))
    assert_one_line_error(out, "train", "unknown config field 'data.bukets'", "bucket_boundaries")
    out = program("jointre_jax.main", "--config=configs/default.py")
    assert_one_line_error(out, "train", "missing --workdir")


def test_suggestions_for_mistyped_fields():
    fields = ["data.bucket_boundaries", "data.batch_size", "model.encoder", "optim.learning_rate"]
    assert cli.suggest("data.bukets", fields)[0] == "data.bucket_boundaries"
    assert cli.suggest("modl.encoder", fields)[0] == "model.encoder"
    assert cli.suggest("optim.learning_rte", fields) == ["optim.learning_rate"]
    assert cli.suggest("zzz", fields) == []  # nothing close: no suggestion at all


def test_a_checkpoint_of_another_model_is_named_as_such(trained, tmp_path, caplog):
    config, _ = trained
    run = copy_run(trained, tmp_path)
    other = config.copy_and_resolve_references()
    other.model.pair_hidden_dim = 8  # another head size: the saved tree does not fit
    saved = json.loads((run / "config.json").read_text())
    saved["model"]["pair_hidden_dim"] = 8
    (run / "config.json").write_text(json.dumps(saved))
    with caplog.at_level(logging.WARNING, logger="jointre_jax.checkpoints"):
        assert checkpoints.restore_latest(run / "checkpoints", train_state_like(other, run)) is None
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "do not match this model: saved with another config?" in messages
    assert "starts afresh" in messages
    # Training in that workdir starts afresh, sets the earlier run's best checkpoint aside, and
    # scores its own best epoch.
    results = train.train_and_evaluate(other, run)
    assert list((run / "best").glob("earlier-*")) and checkpoints.steps(run / "best")
    assert json.loads((run / "metrics.json").read_text())["ner"] == results["ner"]


def test_a_finished_run_with_a_damaged_best_checkpoint_scores_its_last_epoch(
    trained, tmp_path, caplog
):
    config, _ = trained
    run = copy_run(trained, tmp_path)
    (step,) = checkpoints.steps(run / "best")
    truncate(run / "best" / str(step) / "state" / "_METADATA")
    with caplog.at_level(logging.WARNING, logger="jointre_jax.train"):
        results = train.train_and_evaluate(config, run)  # resumes at the end: scoring only
    assert any("scoring the last epoch's parameters" in r.getMessage() for r in caplog.records)
    assert results["best_epoch"] == config.num_epochs
    assert json.loads((run / "metrics.json").read_text())["ner"] == results["ner"]


def test_inference_never_predicts_with_parameters_a_checkpoint_lacks(trained, tmp_path):
    """A partial restore of another model's checkpoint would leave placeholders for the
    parameters it lacks; every checkpoint of the run is then refused, saying why."""
    run = copy_run(trained, tmp_path)
    with pytest.raises(CheckpointError, match="do not match this model") as caught:
        inference.load_run(run, overrides={"model.layer_mix": True})  # adds layer_weights
    assert str(caught.value).count("do not match this model") == 3
