"""Ensembles of runs (``--ensemble``): mean probabilities on one predict path, members checked
before any checkpoint is read, the CLIs."""

import argparse
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import variant_sweep
from jointre_jax import inference, review_page, steps, train
from jointre_jax.errors import UserError
from jointre_jax.extraction import Extractor
from jointre_jax.labels import BioScheme, SpanScheme
from jointre_jax.model.joint import JointModel
from tests.test_heads import TINY, model_batch
from tests.test_train import tiny_train_config


def tiny_model(method="joint", decoder="span"):
    scheme = BioScheme(2) if decoder == "bio" else SpanScheme(2, 4)
    return JointModel.build(
        TINY, scheme, num_relations=3, method=method, pair_hidden_dim=8, span_hidden_dim=8,
        max_entities=4,
    )  # fmt: skip


def members(model, batch, count):
    """``count`` differently initialised parameter trees of ``model``."""
    keys = jax.random.split(jax.random.key(0), count)
    return tuple(model.init(k, batch, label_source="gold")["params"] for k in keys)


@pytest.mark.parametrize(
    "method, decoder",
    [("joint", "span"), ("joint", "bio"), ("ner", "span"), ("re", "bio"), ("pipeline", "bio")],
)
def test_an_ensemble_of_one_model_twice_predicts_what_the_model_does(method, decoder):
    model, batch = tiny_model(method, decoder), model_batch()
    (params,) = members(model, batch, 1)
    alone = steps.predict_step(params, batch, model=model)
    twice = steps.predict_step((params, params), batch, model=model)
    assert jax.tree.structure(alone) == jax.tree.structure(twice)
    for a, b in zip(jax.tree.leaves(alone), jax.tree.leaves(twice), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_an_ensemble_decodes_and_decides_on_the_mean_of_its_members_probabilities():
    model, batch = tiny_model(), model_batch()
    params = members(model, batch, 3)
    got = jax.tree.map(np.asarray, steps.predict_step(params, batch, model=model))
    outs = [model.apply({"params": p}, batch, tables=("gold",)) for p in params]
    # Entities: the span decoder on the mean of the three members' span probabilities.
    mean = sum(jax.nn.softmax(o["ner_logits"], -1) for o in outs) / 3
    expected = model.scheme.decode(jnp.log(mean), batch["word_mask"], model.max_entities)
    for key, value in expected.items():
        np.testing.assert_allclose(got["entities"][key], np.asarray(value), rtol=1e-5)
    # Relations among gold entities: the most probable label of the mean of the members'.
    mean = sum(jax.nn.softmax(o["re_logits_gold"], -1) for o in outs) / 3
    np.testing.assert_array_equal(got["gold_re_labels"], np.argmax(mean, -1))
    # The mean is not any one member's answer on these random heads.
    alone = [
        np.asarray(steps.predict_step(p, batch, model=model)["entities"]["score"]) for p in params
    ]
    assert all(not np.allclose(a, got["entities"]["score"]) for a in alone)


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory):
    """Two tiny runs of one config, seeds 0 and 1, side by side as a sweep leaves them."""
    root = tmp_path_factory.mktemp("ensemble")
    runs = []
    for seed in (0, 1):
        config = tiny_train_config(root / f"corpus{seed}", epochs=4)
        config.seed, config.checkpoint_every_steps = seed, 0
        train.train_and_evaluate(config, root / f"base_s{seed}")
        runs.append(root / f"base_s{seed}")
    return runs


def test_extraction_with_an_ensemble_of_two_runs(run_dirs):
    first, second = run_dirs
    text = ["Patients with type 2 diabetes and hba1c > 7 %", "no history of stroke"]
    single = Extractor.from_workdir(first).extract(text)
    itself = Extractor.from_workdir(first, members=[first]).extract(text)
    assert [d.entities for d in itself] == [d.entities for d in single]
    pair = Extractor.from_workdir(first, members=[second])
    assert isinstance(pair.predictor.params, tuple) and len(pair.predictor.params) == 2
    other = pair.predictor.params[1]
    expected = inference.load_run(second)[1].params
    for a, b in zip(jax.tree.leaves(other), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    page = review_page.render(pair.extract(text), review_page.run_info(pair, first, [second]))
    assert f"run {first} + {second}" in page and "an ensemble of 2 runs" in page


def test_a_run_of_another_model_cannot_join_and_is_named(run_dirs, tmp_path):
    first, second = run_dirs
    odd = tmp_path / "odd"
    shutil.copytree(second, odd)
    saved = json.loads((odd / "config.json").read_text())
    saved["model"]["pair_hidden_dim"] += 1
    (odd / "config.json").write_text(json.dumps(saved))
    with pytest.raises(UserError, match=r"model\.pair_hidden_dim is \d+ there and \d+ here"):
        inference.load_run(first, members=(odd,))


def test_the_sweep_scores_disjoint_ensembles_of_each_variants_seeds(run_dirs):
    """Also the CLI's ``--ensemble``: the sweep runs ``jointre_jax.tools.evaluate`` with it."""
    fake = [
        {"run": f"v_s{seed}", "variant": "v", "seed": seed, "epochs": [{}] * done}
        for seed, done in [(4, 7), (0, 7), (1, 6), (2, 0), (3, 7), (5, 7)]
    ]
    groups = variant_sweep.ensemble_groups(fake, 2)  # seed 2 has no epoch; 5 is left over
    assert [[r["seed"] for r in g] for g in groups] == [[0, 1], [3, 4]]
    rows = [
        {"run": d.name, "variant": "base", "seed": seed, "returncode": 0,
         "epochs": (d / "metrics.jsonl").read_text().splitlines(),
         "final": json.loads((d / "metrics.json").read_text())}
        for seed, d in enumerate(run_dirs)
    ]  # fmt: skip
    args = argparse.Namespace(workdirs=str(run_dirs[0].parent))
    jobs = variant_sweep.launch_ensembles(args, variant_sweep.ensemble_groups(rows, 2))
    for job in jobs:
        job["process"].wait(timeout=600)
    (row,) = variant_sweep.ensemble_rows(jobs)
    assert row["runs"] == ["base_s0", "base_s1"] and row["seeds"] == [0, 1]
    for role in ("dev", "test"):
        assert 0 <= row[role]["ner"]["f1"] <= 1 and 0 <= row[role]["re_e2e"]["f1"] <= 1
    cut = {**row, "seeds": [2, 3], "members_test": [None, row["members_test"][1]]}
    table = "\n".join(variant_sweep.ensemble_markdown([row, cut]))
    epochs = ",".join(str(len(r["epochs"])) for r in rows)
    assert f"| base | 0,1 | {epochs} |" in table and "| base | 2,3 |" in table
    assert "(cut off)" in table and "base, 2 ensembles, test F1: NER" in table
