"""The data report, on a corpus folder written by the test and (when present) on real Chia."""

import json
import os
import subprocess
import sys

import pytest

from jointre_jax.data.brat import BratFormatError
from jointre_jax.data.corpus import find_documents, load_split, read_split_ids
from jointre_jax.data.report import build_report, format_report
from jointre_jax.errors import UserError
from tests.conftest import REPO, tiny_corpus


def test_report_counts_everything(tmp_path):
    config = tiny_corpus(tmp_path)
    report = build_report(config)
    train = report["splits"]["train"]
    assert (train["documents"], train["criteria"], train["examples"]) == (3, 5, 5)
    assert train["entities"] == {
        "raw": 10,
        "kept": 8,
        "dropped": {"discontinuous": 1, "text_mismatch": 1},
    }
    assert train["relations"] == {"raw": 3, "kept": 3, "dropped": {}}
    assert train["excluded"] == {
        "entities": {"Parsing_Error": 1},
        "relations": {"R:multi": 1},
    }
    assert len(train["problems"]) == 1 and "NCT3_exc.ann:4:" in train["problems"][0]
    assert report["splits"]["test"]["documents"] == 1  # a full document id works too
    assert 0 < train["padding"]["real_token_fraction"] <= 1
    table = format_report(report)
    assert "dropped: text_mismatch" in table and "Parsing_Error" in table


def test_strict_mode_names_file_and_line(tmp_path):
    config = tiny_corpus(tmp_path)
    config.data.lenient = False
    with pytest.raises(BratFormatError, match=r"NCT3_exc\.ann:4: T4 mention 'pregnent'"):
        load_split(config, "train", progress=False)


def test_split_errors(tmp_path):
    config = tiny_corpus(tmp_path)
    split = tmp_path / "corpus" / "splits" / "bad.txt"
    split.write_text("NCT1\nNCT9\n")
    with pytest.raises(BratFormatError, match=r"bad\.txt:2: no document NCT9\*\.txt"):
        find_documents(tmp_path / "corpus" / "brat", read_split_ids(split), split)
    split.write_text("NCT1\n\nNCT1\n")
    with pytest.raises(BratFormatError, match=r"bad\.txt:3: NCT1 listed twice"):
        read_split_ids(split)
    config.data.dir = str(tmp_path / "nowhere")
    with pytest.raises(UserError, match="JOINTRE_DATA_DIR"):
        load_split(config, "train")


def test_report_cli_json_and_table(tmp_path):
    config = tiny_corpus(tmp_path)
    args = [
        sys.executable, "-m", "jointre_jax.tools.report", "--config=configs/default.py",
        f"--config.data.dir={config.data.dir}", f"--config.model.encoder={config.model.encoder}",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([*args, "--json"], cwd=REPO, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert set(report["splits"]) == {"train", "dev", "test"}
    for entry in report["splits"].values():
        for kind in ("entities", "relations"):
            assert entry[kind]["raw"] == entry[kind]["kept"] + sum(entry[kind]["dropped"].values())
    table = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True)
    assert table.returncode == 0 and "padding_waste" in table.stdout
    typo = subprocess.run([*args, "--config.data.bukets=1"], cwd=REPO, env=env, capture_output=True)
    assert typo.returncode == 2 and b"Traceback" not in typo.stderr
    assert b"report: unknown config field 'data.bukets'" in typo.stderr
