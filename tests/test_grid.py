"""The Table 4 grid runner on a tiny config with 2 seeds: runs, resume, process shares, table."""

import json
import statistics

import pytest

from jointre_jax import grid, train
from tests.test_train import tiny_train_config


def test_grid_runs_rows_and_seeds_and_writes_table4(tmp_path, monkeypatch):
    config = tiny_train_config(tmp_path / "c", epochs=1)
    config.checkpoint_every_steps = 0
    rows = grid.select_rows(["ner", "joint_m2b_gs"])
    assert [r.name for r in rows] == ["ner", "joint_m2b_gs"]
    with pytest.raises(ValueError, match="unknown rows"):
        grid.select_rows(["joint_m3"])
    assert len(grid.select_rows(["all"])) == 9  # the paper's rows per encoder

    share = grid.run_grid(
        config, tmp_path / "g", rows, ["0", "1"], process_index=1, process_count=2
    )
    assert [p.relative_to(tmp_path / "g").as_posix() for p in share] == [
        "joint_m2b_gs/seed_0", "joint_m2b_gs/seed_1"
    ]  # fmt: skip
    rest = grid.run_grid(config, tmp_path / "g", rows, ["0", "1"])  # the other share only
    assert [p.relative_to(tmp_path / "g").as_posix() for p in rest] == [
        "ner/seed_0", "ner/seed_1"
    ]  # fmt: skip
    saved = json.loads((tmp_path / "g" / "joint_m2b_gs" / "seed_1" / "config.json").read_text())
    assert saved["seed"] == 1 and saved["model"]["re_option"] == "m2_bilinear"

    def no_training(*args, **kwargs):
        raise AssertionError("finished runs must not train again")

    monkeypatch.setattr(train, "train_and_evaluate", no_training)
    assert grid.run_grid(config, tmp_path / "g", rows, ["0", "1"]) == []

    text = grid.write_table(tmp_path / "g", rows, "tiny")
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
    seconds = [grid.epoch_seconds(tmp_path / "g" / "ner" / f"seed_{s}") for s in (0, 1)]
    assert min(seconds) > 0 and table[0]["train_seconds"][0] == pytest.approx(
        statistics.fmean(seconds)
    )
