"""The demo's fallback: the shipped sample corpus and tiny encoder, and one short demo run."""

import re
import subprocess
import sys

import pytest

from configs import default
from jointre_jax.data.report import build_report
from jointre_jax.data.sample import read_markup, write_sample_corpus, write_tiny_encoder
from tests.conftest import REPO, default_optimisation_env


def test_sample_corpus_reads_back_losslessly(tmp_path):
    corpus = write_sample_corpus(tmp_path / "corpus")
    config = default.get_config()
    config.data.dir = str(corpus)
    config.model.encoder = str(write_tiny_encoder(tmp_path / "encoder", corpus))
    report = build_report(config)
    for split, documents in (("train", 8), ("dev", 2), ("test", 2)):
        entry = report["splits"][split]
        assert entry["documents"] == documents
        for kind in ("entities", "relations"):
            assert entry[kind]["raw"] == entry[kind]["kept"] > 0 and not entry[kind]["dropped"]
        assert not entry["problems"]
    assert b"\r\n" in (corpus / "brat" / "NCT90000001_inc.txt").read_bytes()


def test_markup_errors_name_the_line():
    with pytest.raises(ValueError, match="demo_criteria.txt:2:"):
        read_markup("# comment\nno separators here\n")


def test_demo_runs_on_the_shipped_sample_without_shared(tmp_path):
    # 15 epochs: XLA's default optimisation, not the suite's (tests/conftest.py), is the faster.
    env = default_optimisation_env(JOINTRE_DATA_DIR=str(tmp_path / "absent"), PYTHONPATH=str(REPO))
    out = subprocess.run(
        [sys.executable, "-m", "jointre_jax.tools.demo", "--config=configs/demo.py",
         "--config.num_epochs=15", f"--workdir={tmp_path / 'demo'}", "--show=2"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "the project's own annotated sample" in out.stdout
    assert "RE end-to-end" in out.stdout and "extractions on test criteria" in out.stdout
    assert (tmp_path / "demo" / "metrics.json").exists()
    assert "corpus gold" in out.stdout and "encoded gold" in out.stdout
    assert_whole_words(out.stdout)


def assert_whole_words(printed: str) -> None:
    """Every ``[Type] mention`` the demo prints is whole words of the criterion above it."""
    criterion, mentions = None, 0
    for line in printed.splitlines():
        if line.startswith("  ") and not line.startswith("    "):
            criterion = line[2:]
        elif line.startswith("    [") and criterion is not None:
            mention = line.split("] ", 1)[1]
            pattern = r"(?<![A-Za-z0-9])" + re.escape(mention) + r"(?![A-Za-z0-9])"
            assert re.search(pattern, criterion), (mention, criterion)
            mentions += 1
    assert mentions > 0
