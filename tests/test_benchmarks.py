"""The throughput benchmark on a tiny config: every figure is there and consistent with the
batches it timed (the real timings on Chia are in benchmarks/README.md)."""

import importlib.util
import json
import os
import subprocess
import sys
import time

import pytest

from benchmarks import throughput
from jointre_jax.data.batching import Batcher
from jointre_jax.data.corpus import load_split
from jointre_jax.model.bert import BertConfig
from tests.conftest import REPO
from tests.test_train import tiny_train_config

HAS_TORCH = importlib.util.find_spec("torch") is not None


def test_matmul_flops_of_bert_base_are_about_67_gflop_per_sequence(tmp_path):
    config = tiny_train_config(tmp_path)
    config.model.pair_hidden_dim = 0  # encoder and NER layer only
    flops = throughput.matmul_flops(BertConfig(), [128], 1, config, train_step=True)
    assert 66e9 < flops < 69e9


@pytest.mark.parametrize("with_torch", [False, pytest.param(True, marks=pytest.mark.skipif(
    not HAS_TORCH, reason="the PyTorch side needs torch (make test installs it)"))])  # fmt: skip
@pytest.mark.parametrize("packing", [True, False])
def test_throughput_reports_every_figure(tmp_path, with_torch, packing):
    config = tiny_train_config(tmp_path, packing=packing)
    config.data.bucket_boundaries = (8, 16, 128)
    before = time.time() - throughput.process_start()
    results = throughput.run(config, 2, 2, 1, 1, with_torch=with_torch, fixed=True)
    after = time.time() - throughput.process_start()
    data = load_split(config, "train", progress=False)
    batcher = Batcher(data.examples, (8, 16, 128), 4)
    buckets = {p.length for p in throughput.sample_batches(batcher, batcher.epoch_plan(0), 2)}
    # The sampled bucket shapes, the fixed-length one, and with packing the packed one.
    assert results["compile"]["train_shapes"] == len(buckets) + 1 + packing
    assert results["config"]["packing"] == packing
    if packing:
        figures = results["packing"]
        assert figures["row_length"] == 12 and figures["rows_per_batch"] >= 1
        assert figures["real_token_fraction"] > results["bucketing"]["real_token_fraction"]
        expected = (
            results["train"]["jax"]["sentences_per_s"] / (figures["bucketed"]["sentences_per_s"])
        )
        assert figures["speedup_over_buckets"] == pytest.approx(expected)
        assert ("torch_bucketed" in figures) == with_torch
    else:
        assert "packing" not in results
    compile_ = results["compile"]
    # From process start (jax import included): a pytest worker's start, so bounded by the call.
    assert before < compile_["first_step_seconds"] < after
    assert compile_["total_seconds"] >= compile_["train_seconds"] > 0
    assert 0 < results["bucketing"]["fixed_real_token_fraction"] < 1
    assert (
        results["bucketing"]["real_token_fraction"]
        > results["bucketing"]["fixed_real_token_fraction"]
    )
    assert results["bucketing"]["speedup"] > 0
    for key in ("train", "infer"):
        assert results[key]["jax"]["sentences_per_s"] > 0
        if with_torch:
            ratio = results[key]["jax_over_torch"]
            expected = (
                results[key]["jax"]["sentences_per_s"] / results[key]["torch"]["sentences_per_s"]
            )
            assert ratio == pytest.approx(expected)
        else:
            assert "jax_over_torch" not in results[key]
    assert results["flops"]["train_pass"] > 0


def test_gpu_check_script_runs_every_step_and_writes_its_summary(tmp_path):
    """benchmarks/gpu_check.sh end to end in its smoke mode, on the tiny corpus and encoder (a
    CPU check of the script; the figures themselves need a GPU)."""
    config = tiny_train_config(tmp_path)
    extra = (
        "--config.model.pretrained=False --config.data.pack_length=12 --config.data.max_length=12"
    )
    env = {
        **os.environ,
        "GPU_CHECK_SMOKE": "1",
        "GPU_CHECK_EXTRA": extra,
        "JOINTRE_DATA_DIR": config.data.dir,
        "JOINTRE_ENCODER": config.model.encoder,
        "PYTHON": sys.executable,
    }
    out = tmp_path / "out"
    command = ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), str(out)]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary == json.loads(done.stdout)
    assert "failed or timed out" not in done.stderr, done.stderr[-4000:]
    assert summary["first_step_seconds_packed"] > 0 and summary["minilm_run_seconds"] > 0
    assert summary["base_infer_criteria_per_s"] > 0 and summary["minilm_infer_criteria_per_s"] > 0
    assert 0 < summary["packing_real_token_fraction"] <= 1  # tiny split: one partial batch
    assert 0 <= summary["minilm_run_test_corpus_f1"]["ner"] <= 1
    assert (out / "run" / "metrics.json").is_file()
    if HAS_TORCH:
        assert summary["base_train_jax_over_torch"] > 0


@pytest.mark.parametrize("packing", [True, False])
def test_epoch_speed_times_an_epoch_plan_with_its_compilations(tmp_path, packing):
    from benchmarks import epoch_speed

    config = tiny_train_config(tmp_path, packing=packing)
    before = time.time() - throughput.process_start()
    result = epoch_speed.one_epoch(config, limit=0)
    after = time.time() - throughput.process_start()
    data = load_split(config, "train", progress=False)
    assert result["criteria"] == len(data.examples)  # the whole epoch, every criterion once
    assert result["train_shapes"] == (1 if packing else len(result["row_length"]))
    # From process start, here a pytest worker's (not a fresh process's): bounded by the call,
    # whatever ran in this worker before.
    assert before < result["first_step_seconds"] < after
    assert result["criteria_per_s"] == pytest.approx(result["criteria"] / result["epoch_seconds"])
