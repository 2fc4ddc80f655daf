"""The Table 4 grid runner on a tiny config with 2 seeds: runs, resume, process shares, table;
launch/grid.sh with 2 processes."""

import json
import os
import statistics
import subprocess
import sys

import pytest

from jointre_jax import table4, train
from jointre_jax.errors import UserError
from tests.conftest import REPO, override_flags
from tests.test_train import tiny_train_config


def test_grid_runs_rows_and_seeds_and_writes_table4(tmp_path, monkeypatch):
    config = tiny_train_config(tmp_path / "c", epochs=1)
    config.checkpoint_every_steps = 0
    rows = table4.select_rows(["ner", "joint_m2b_gs"])
    assert [r.name for r in rows] == ["ner", "joint_m2b_gs"]
    with pytest.raises(UserError, match="unknown rows"):
        table4.select_rows(["joint_m3"])
    assert len(table4.select_rows(["all"])) == 9  # the paper's rows per encoder

    share = table4.run_grid(
        config, tmp_path / "g", rows, ["0", "1"], process_index=1, process_count=2
    )
    assert [p.relative_to(tmp_path / "g").as_posix() for p in share] == [
        "joint_m2b_gs/seed_0", "joint_m2b_gs/seed_1"
    ]  # fmt: skip
    rest = table4.run_grid(config, tmp_path / "g", rows, ["0", "1"])  # the other share only
    assert [p.relative_to(tmp_path / "g").as_posix() for p in rest] == [
        "ner/seed_0", "ner/seed_1"
    ]  # fmt: skip
    saved = json.loads((tmp_path / "g" / "joint_m2b_gs" / "seed_1" / "config.json").read_text())
    assert saved["seed"] == 1 and saved["model"]["re_option"] == "m2_bilinear"

    def no_training(*args, **kwargs):
        raise AssertionError("finished runs must not train again")

    monkeypatch.setattr(train, "train_and_evaluate", no_training)
    assert table4.run_grid(config, tmp_path / "g", rows, ["0", "1"]) == []

    text = table4.write_table(tmp_path / "g", rows, "tiny")
    lines = text.splitlines()
    assert {line.count("|") for line in lines} == {15}  # 14 columns on every line
    assert lines[0].startswith("| encoder | method | RE option | negatives | seeds | NER P")
    ner_row, joint_row = lines[2].split(" | "), lines[3].split(" | ")
    assert ner_row[1:5] == ["standalone NER", "-", "-", "2"]
    assert ner_row[8:] == ["-"] * 5 + ["- |"]  # no RE scores for standalone NER
    assert joint_row[1:5] == ["joint", "re_m2 bilinear only", "gs-based", "2"]
    table = json.loads((tmp_path / "g" / "table4.json").read_text())
    f1s = [
        json.loads((tmp_path / "g" / "joint_m2b_gs" / f"seed_{s}" / "metrics.json").read_text())[
            "re_e2e"
        ]["f1"]
        for s in (0, 1)
    ]
    mean, std = table[1]["re_e2e_f1"]
    assert mean == pytest.approx(statistics.fmean(f1s)) and std == pytest.approx(
        statistics.stdev(f1s)
    )
    assert f"{100 * mean:.1f} ± {100 * std:.1f}" in lines[3]
    ner_f1s = [
        json.loads((tmp_path / "g" / row / f"seed_{s}" / "metrics.json").read_text())["ner"]["f1"]
        for row in ("joint_m2b_gs", "ner")
        for s in (0, 1)
    ]
    (found,) = json.loads((tmp_path / "g" / "comparisons.json").read_text())  # the only pair
    assert (found["finding"], found["a"], found["b"], found["score"]) == (
        "joint vs standalone NER", "joint_m2b_gs", "ner", "ner"
    )  # fmt: skip
    diffs = [ner_f1s[0] - ner_f1s[2], ner_f1s[1] - ner_f1s[3]]
    assert found["differences"] == pytest.approx(diffs) and found["seeds"] == [0, 1]
    assert found["a_better"] == sum(d > 0 for d in diffs)
    compared = (tmp_path / "g" / "comparisons.md").read_text().splitlines()
    assert compared[2].startswith("| joint vs standalone NER | joint_m2b_gs | ner | ner | ")
    seconds = [table4.epoch_seconds(tmp_path / "g" / "ner" / f"seed_{s}") for s in (0, 1)]
    assert min(seconds) > 0 and table[0]["train_seconds"][0] == pytest.approx(
        statistics.fmean(seconds)
    )


def test_launch_grid_sh_deals_the_runs_to_processes_and_writes_the_whole_table(tmp_path):
    config = tiny_train_config(tmp_path / "c", epochs=1)
    config.checkpoint_every_steps = 0
    workdir = tmp_path / "g"
    env = {**os.environ, "PYTHON": sys.executable}
    command = [
        str(REPO / "launch" / "grid.sh"), "-n", "2", "--", "--config=configs/default.py",
        f"--workdir={workdir}", "--rows=ner,joint_m2b_gs", "--seeds=0", "--compilation_cache=none",
        *override_flags(config),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, env=env, timeout=600, capture_output=True, text=True)
    logs = [(workdir / f"grid_{i}.log").read_text() for i in range(2)]
    assert done.returncode == 0, done.stderr + "\n".join(log[-3000:] for log in logs)
    assert "run 1/2: ner seed 0" in logs[0] and "joint_m2b_gs" not in logs[0]
    assert "run 2/2: joint_m2b_gs seed 0" in logs[1] and "ner seed 0" not in logs[1]
    table = json.loads((workdir / "table4.json").read_text())
    assert [(row["row"], row["seeds"]) for row in table] == [("ner", [0]), ("joint_m2b_gs", [0])]
    assert "| joint | re_m2 bilinear only | gs-based | 1 |" in done.stdout

    failed = subprocess.run(
        [str(REPO / "launch" / "grid.sh"), "-n", "1", "--", "--config=configs/default.py",
         f"--workdir={tmp_path / 'bad'}", "--rows=joint_m3"],
        cwd=REPO, env=env, timeout=600, capture_output=True, text=True,
    )  # fmt: skip
    assert failed.returncode != 0 and "process 0 failed" in failed.stderr
