"""Every invalid configuration is one line, before any work (jointre_jax.validation): the
program stops with status 2, names the flag and the reason, and the workdir stays empty."""

import pathlib
import subprocess
import sys

import pytest

from configs import default
from jointre_jax import validation
from jointre_jax.errors import UserError
from tests.conftest import REPO

# (overrides, what the one line must say); each against configs/default.py (BIO, joint).
INVALID = [
    (["--config.model.span_context=True"], "--config.model.span_context=True: needs the span"),
    (["--config.model.boundary_smoothing=0.1"], "boundary_smoothing=0.1: needs the span decoder"),
    (["--config.model.method=ner", "--config.model.negative_sampling=incremental"],
     "negative_sampling=incremental: needs --config.model.method=joint (not ner)"),
    (["--config.model.ner_decoder=span", "--config.model.boundary_smoothing=0.5"],
     "--config.model.boundary_smoothing=0.5: must be in [0.0, 0.25]"),
    (["--config.model.adversarial_consistency=1.0"], "needs --config.model.adversarial_epsilon"),
    (["--config.model.re_option=m3"], "--config.model.re_option=m3: choose one of m1, m2"),
    (["--config.optim.layer_decay=1.5"], "--config.optim.layer_decay=1.5: must be in (0.0, 1.0]"),
    (["--config.data.packing=False", "--config.data.max_length=256"],
     "the buckets end below data.max_length + data.context_length = 256"),
]  # fmt: skip


@pytest.mark.parametrize("overrides, message", INVALID, ids=[m for _, m in INVALID])
def test_an_invalid_combination_is_one_line_and_the_workdir_stays_empty(
    overrides, message, tmp_path
):
    workdir = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "-m", "jointre_jax.main", "--config=configs/default.py",
         f"--workdir={workdir}", "--config.data.dir=/no/such/corpus", *overrides],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, out.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("train: "), out.stderr[-2000:]
    assert message in lines[0]
    assert not workdir.exists()  # checked before the corpus (missing here) or the workdir


def test_every_shipped_config_is_valid_and_a_bad_value_names_its_flag():
    for path in sorted((pathlib.Path(REPO) / "configs").glob("*.py")):
        if path.stem == "__init__":
            continue
        module = __import__(f"configs.{path.stem}", fromlist=["get_config"])
        validation.validate(module.get_config())
    config = default.get_config()
    config.model.ner_decoder = "crf"
    with pytest.raises(UserError, match="--config.model.ner_decoder=crf: choose one of bio, span"):
        validation.validate(config)
