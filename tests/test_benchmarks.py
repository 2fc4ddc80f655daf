"""The throughput benchmark on a tiny config: every figure is there and consistent with the
batches it timed (the real timings on Chia are in benchmarks/README.md)."""

import importlib.util

import pytest

from benchmarks import throughput
from jointre_jax.data.batching import Batcher
from jointre_jax.data.corpus import load_split
from jointre_jax.model.bert import BertConfig
from tests.test_train import tiny_train_config

HAS_TORCH = importlib.util.find_spec("torch") is not None


def test_matmul_flops_of_bert_base_are_about_67_gflop_per_sequence(tmp_path):
    config = tiny_train_config(tmp_path)
    config.model.pair_hidden_dim = 0  # encoder and NER layer only
    flops = throughput.matmul_flops(BertConfig(), [128], 1, config, train_step=True)
    assert 66e9 < flops < 69e9


@pytest.mark.parametrize("with_torch", [False, pytest.param(True, marks=pytest.mark.skipif(
    not HAS_TORCH, reason="the PyTorch side needs torch (make test installs it)"))])  # fmt: skip
def test_throughput_reports_every_figure(tmp_path, with_torch):
    config = tiny_train_config(tmp_path)
    config.data.bucket_boundaries = (8, 16, 128)
    results = throughput.run(config, 2, 2, 1, 1, with_torch=with_torch, fixed=True)
    data = load_split(config, "train", progress=False)
    batcher = Batcher(data.examples, (8, 16, 128), 4)
    assert results["compile"]["train_shapes"] == 1 + len(
        {p.length for p in throughput.sample_batches(batcher, batcher.epoch_plan(0), 2)}
    )  # the sampled bucket shapes plus the fixed-length one
    compile_ = results["compile"]
    assert 0 < compile_["first_step_seconds"] < 600  # from process start, jax import included
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
