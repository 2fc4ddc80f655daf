"""Training on a tiny corpus with a tiny random encoder (4 fake CPU devices): learning, resume
after a kill, one compile per length bucket, evaluation of a folder, scorer vs seqeval."""

import json

import jax
import numpy as np
import pytest

from configs import default
from jointre_jax import checkpoints, inference, optim, runtime, steps, train, validation
from jointre_jax import state as state_lib
from jointre_jax.data.batching import Batcher
from jointre_jax.data.corpus import load_split, make_encoder
from jointre_jax.errors import UserError
from jointre_jax.evaluation import Scorer
from jointre_jax.labels import BioScheme
from jointre_jax.predictor import PredictedEntity, Prediction
from tests.conftest import tiny_corpus


def tiny_train_config(
    root, epochs=25, method="joint", negatives="gs-based", decoder="bio", packing=True
):
    """A tiny run: packed rows of 12 wordpieces on one device (the tiny split fills 3 rows,
    2 a batch: 2 steps an epoch); or with ``packing=False`` length buckets, batches of 4 over
    the 4 fake devices (2 steps an epoch too)."""
    config = tiny_corpus(root)
    config.model.pretrained = False
    config.model.ner_decoder = decoder
    config.model.span_hidden_dim = 16
    config.model.pair_hidden_dim = 16
    config.model.method = method
    config.model.negative_sampling = negatives
    config.data.batch_size = config.data.eval_batch_size = 4
    config.data.bucket_boundaries = (8, 16, 128)
    config.data.packing = packing
    if packing:  # rows of 128 (the default) would put the whole split in one row
        config.data.pack_length = config.data.max_length = 12  # every tiny criterion fits
        config.num_devices = 1
    config.data.eval_split = config.data.test_split = "train"  # learning = fitting the train set
    config.optim.learning_rate = 5e-3
    config.num_epochs = epochs
    config.checkpoint_every_steps = 1
    return config


def tiny_model(config):
    """(encoder, train data, model) of a tiny config: its train split read, sizes resolved."""
    encoder = make_encoder(config)
    data = load_split(config, "train", encoder, progress=False)
    runtime.resolve_sizes(config, data.examples)
    bert, _ = runtime.encoder_config(config)
    model = runtime.create_model(config, encoder.scheme, data.schema.num_relation_labels, bert)
    return encoder, data, model


def assert_evaluate_matches_training(root, trained: dict) -> dict:
    """``evaluate`` of the run in ``root / "run"`` on the tiny corpus's train split gives the
    scores its training wrote (``trained``); returns them."""
    corpus = root / "corpus"
    scores = inference.evaluate_folder(
        root / "run", corpus / "brat", corpus / "splits" / "train.txt"
    )
    for key in ("ner", "re_gs", "re_e2e"):
        assert scores[key]["f1"] == pytest.approx(trained[key]["f1"])
    for key in ("ner", "re_e2e"):  # the same corpus gold, read by evaluate from the folder
        assert scores["corpus"][key] == trained["corpus"][key]
    return scores


def train_tiny(root, epochs=20, checkpoint_every_steps=0, **data):
    """(config, run folder) of a tiny joint BIO run trained in ``root / "run"``; ``data``
    overrides fields of ``config.data``."""
    config = tiny_train_config(root, epochs=epochs)
    config.checkpoint_every_steps = checkpoint_every_steps
    for key, value in data.items():
        config.data[key] = value
    train.train_and_evaluate(config, root / "run")
    return config, root / "run"


@pytest.mark.parametrize(
    "method, negatives, decoder",
    [
        ("joint", "gs-based", "bio"),
        ("joint", "incremental", "bio"),
        ("pipeline", "gs-based", "bio"),
        ("joint", "gs-based", "span"),
        ("joint", "incremental", "span"),
    ],
)
def test_scores_rise_from_their_initial_values(tmp_path, method, negatives, decoder):
    config = tiny_train_config(tmp_path / "a", 20, method, negatives, decoder)
    config.checkpoint_every_steps = 0
    trained = train.train_and_evaluate(config, tmp_path / "run")
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == list(range(21))  # epoch 0: before any step
    initial, last = lines[0], lines[-1]
    assert last["dev_ner_f1"] > initial["dev_ner_f1"] + 0.3
    assert last["dev_re_gs_f1"] > initial["dev_re_gs_f1"] + 0.3
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["ner"]["f1"] == trained["ner"]["f1"] > initial["dev_ner_f1"] + 0.3
    for key in ("ner", "re_gs", "re_e2e"):
        assert {"precision", "recall", "f1", "per_type"} <= saved[key].keys()
        assert 0.0 <= saved[key]["f1"] <= 1.0
    corpus = saved["corpus"]  # every annotation counts: the corpus gold holds at least as much
    assert corpus["gold"]["entities"] >= saved["ner"]["tp"] + saved["ner"]["fn"]
    assert 0.3 < corpus["ner"]["f1"] <= 1.0


def test_killed_run_resumes_to_the_same_result(tmp_path, monkeypatch):
    config = tiny_train_config(tmp_path / "c", epochs=3)
    uninterrupted = train.train_and_evaluate(config, tmp_path / "full")

    original = Batcher.iterate
    calls = {"n": 0}

    def dying_iterate(self, *args, **kwargs):
        for batch in original(self, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 4:  # mid-way through epoch 2: killed after step 3 was saved
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(Batcher, "iterate", dying_iterate)
    with pytest.raises(KeyboardInterrupt):
        train.train_and_evaluate(config, tmp_path / "killed")
    monkeypatch.setattr(Batcher, "iterate", original)
    resumed = train.train_and_evaluate(config, tmp_path / "killed")
    log = [json.loads(x) for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    full_log = [
        json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [x["epoch"] for x in log] == [0, 1, 2, 3]
    for line, full_line in zip(log, full_log, strict=True):  # the resumed epoch's mean losses too
        line.pop("seconds", None), full_line.pop("seconds", None)
        assert line == full_line
    for key in ("ner", "re_gs", "re_e2e"):
        assert resumed[key] == uninterrupted[key]
    _, full, _ = inference.load_run(tmp_path / "full")
    _, resumed_run, _ = inference.load_run(tmp_path / "killed")
    for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(resumed_run.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_one_compile_per_length_bucket(tmp_path):
    config = tiny_train_config(tmp_path, epochs=1, packing=False)
    encoder = make_encoder(config)
    data = load_split(config, "train", encoder, progress=False)
    runtime.resolve_sizes(config, data.examples)
    batcher = Batcher(data.examples, (8, 16, 32, 128), 4, scheme=encoder.scheme)
    bert, _ = runtime.encoder_config(config)
    model = runtime.create_model(config, encoder.scheme, data.schema.num_relation_labels, bert)
    mesh = runtime.make_mesh(config)
    state = state_lib.create_state(config, model, None, 10, mesh)
    train_fn = steps.jit_train_step(mesh, state, runtime.loss_options(config, encoder.scheme))
    predict_fn = steps.jit_predict_step(mesh, state.params, model)
    rng = jax.random.key(0)
    lengths = set()
    for epoch in range(3):
        plan = batcher.epoch_plan(epoch)
        lengths |= {p.length for p in plan}
        for batch in batcher.iterate(plan):
            state, _ = train_fn(state, batch, rng)
    assert train_fn._cache_size() == len(lengths) >= 2
    for planned in batcher.eval_plan():
        predict_fn(state.params, batcher.build(planned))
    assert predict_fn._cache_size() == len({p.length for p in batcher.eval_plan()})
    manager = checkpoints.checkpoint_manager(tmp_path / "ckpt")
    checkpoints.save(manager, int(state.step), state, {})
    restored, _ = checkpoints.restore(manager, state)
    step_folder = tmp_path / "ckpt" / str(int(state.step))
    params = checkpoints.restore_params(step_folder, state.params)  # what inference restores
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(restored.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for planned in batcher.eval_plan():  # a restored state reuses every compiled shape
        predict_fn(restored.params, batcher.build(planned))
        predict_fn(params, batcher.build(planned))
        restored, _ = train_fn(restored, batcher.build(planned), rng)
    assert train_fn._cache_size() == len(lengths)
    assert predict_fn._cache_size() == len({p.length for p in batcher.eval_plan()})


def test_evaluate_folder_matches_training_scores(tmp_path):
    config = tiny_train_config(tmp_path, epochs=15)
    trained = train.train_and_evaluate(config, tmp_path / "run")
    scores = assert_evaluate_matches_training(tmp_path, trained)
    corpus = tmp_path / "corpus"
    strict = inference.evaluate_folder(  # a decision threshold keeps fewer relations
        tmp_path / "run",
        corpus / "brat",
        corpus / "splits" / "train.txt",
        overrides={"model.decision_threshold": 0.999},
    )
    kept = lambda r: r["re_e2e"]["tp"] + r["re_e2e"]["fp"]  # noqa: E731
    assert kept(strict) < kept(scores)
    assert scores["data"]["documents"] == 3
    everything = inference.evaluate_folder(tmp_path / "run", corpus / "brat")
    assert everything["data"]["documents"] == 4


def test_ner_scorer_agrees_with_seqeval():
    seqeval = pytest.importorskip("seqeval.metrics")
    from jointre_jax.data.encode import EntitySpan, Example

    rng = np.random.default_rng(0)
    types = ["A", "B", "C"]
    names = BioScheme(3).tag_names(types)
    scorer = Scorer(types, ["none", "R"])
    gold_seqs, pred_seqs = [], []
    for key in range(50):
        n = int(rng.integers(2, 12))
        gold = rng.integers(0, 7, n)
        spans = tuple(
            EntitySpan(s, e, k, 0, 0, f"T{i}")
            for i, (s, e, k) in enumerate(BioScheme.spans(gold, n))
        )
        words = np.zeros((n, 2), np.int32)
        example = Example(
            "d", 1, 0, 0, "", np.zeros(n + 2, np.int32), np.zeros((n + 2, 2), np.int32), words,
            np.arange(1, n + 1, dtype=np.int32), spans, (),
        )  # fmt: skip
        predicted = np.where(rng.random(n) < 0.3, rng.integers(0, 7, n), gold)
        entities = [PredictedEntity(s, e, k, 0, 0) for s, e, k in BioScheme.spans(predicted, n)]
        scorer.add(key, example, Prediction(entities, [], None))
        gold_seqs.append([names[t] for t in gold])
        pred_seqs.append([names[t] for t in predicted])
    ours = scorer.results()["ner"]
    assert ours["f1"] == pytest.approx(seqeval.f1_score(gold_seqs, pred_seqs))
    assert ours["precision"] == pytest.approx(seqeval.precision_score(gold_seqs, pred_seqs))
    assert ours["recall"] == pytest.approx(seqeval.recall_score(gold_seqs, pred_seqs))


def test_a_second_run_compiles_nothing_with_the_compilation_cache(tmp_path):
    """config.compilation_cache_dir: the second run of a config loads every executable from
    the cache (no cache miss), the first one writes them (no hit: the folder starts empty)."""
    from jax import monitoring

    events = []

    def listen(event, **kwargs):
        if event.startswith("/jax/compilation_cache/cache_"):
            events.append(event)

    monitoring.register_event_listener(listen)
    try:
        counts = []
        for run in ("first", "second"):
            config = tiny_train_config(tmp_path / run, epochs=1)
            config.compilation_cache_dir = str(tmp_path / "cache")
            config.checkpoint_every_steps = 0
            events.clear()
            train.train_and_evaluate(config, tmp_path / run / "run")
            counts.append((events.count("/jax/compilation_cache/cache_hits"),
                           events.count("/jax/compilation_cache/cache_misses")))  # fmt: skip
    finally:
        monitoring.unregister_event_listener(listen)
        runtime.use_compilation_cache(default.default_compilation_cache())
    (first_hits, first_misses), (second_hits, second_misses) = counts
    assert first_misses > 0 and first_hits == 0, counts
    # In-process, eager ops stay in memory; every jitted step of the new run comes from disk.
    assert second_misses == 0 and second_hits > 0, counts
    assert any((tmp_path / "cache").iterdir())


def test_fresh_parameters_equal_a_full_init_with_pretrained_weights_merged(tmp_path):
    """create_params initialises only what no pre-trained weight replaces, and gets the same
    values as a full init followed by the merge."""
    from flax import serialization

    from jointre_jax.model.bert import BertModel
    from jointre_jax.model.pretrained import load_weights, merge_pretrained

    config = tiny_train_config(tmp_path)
    config.model.pretrained = True
    config.model.max_entities = 8
    encoder = make_encoder(config)
    bert, weights_dir = runtime.encoder_config(config)
    ids = np.zeros((1, 4), np.int32)  # "pre-trained" weights: another seed's encoder
    weights = BertModel(bert).init(jax.random.key(7), ids, ids > -1)["params"]
    (weights_dir / "flax_model.msgpack").write_bytes(serialization.to_bytes(weights))
    assert weights_dir is not None
    model = runtime.create_model(config, encoder.scheme, encoder.schema.num_relation_labels, bert)
    mesh = runtime.make_mesh(config)
    params = state_lib.create_params(config, model, weights_dir, mesh)
    full = state_lib.init_params(model, jax.random.key(config.seed))
    merged = merge_pretrained(full, load_weights(weights_dir), ("encoder",))
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(merged), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert set(params) == set(full) and "ner" in params and "encoder" in params


@pytest.mark.parametrize("head_rate, decay", [(0.0, 1.0), (0.5, 1.0), (0.0, 0.5), (0.25, 0.8)])
def test_each_parameter_takes_its_learning_rate(head_rate, decay):
    """With a constant gradient of ones and no weight decay, AdamW's second step moves every
    parameter by exactly its peak rate: learning_rate * layer_decay ** (layers above it) in the
    encoder (embeddings lowest, the pooler with the top layer), head_learning_rate in the heads."""
    config = default.get_config()
    config.optim.learning_rate = 1.0
    config.optim.head_learning_rate = head_rate
    config.optim.layer_decay = decay
    config.optim.weight_decay = 0.0
    config.optim.warmup_fraction = 0.1  # 1 warmup step of 10: step 1 (the second) is the peak
    leaf = np.zeros(3, np.float32)
    layers = {str(i): {"output": {"dense": {"kernel": leaf}}} for i in range(3)}
    params = {
        "encoder": {
            "embeddings": {"word_embeddings": {"embedding": leaf}},
            "encoder": {"layer": layers},
            "pooler": {"dense": {"kernel": leaf}},
        },
        "ner": {"kernel": leaf},
    }
    tx = optim.create_optimizer(config, total_steps=10, num_layers=3)
    state = tx.init(params)
    ones = jax.tree.map(np.ones_like, params)
    _, state = tx.update(ones, state, params)
    updates, _ = tx.update(ones, state, params)
    moved = {
        "/".join(optim.path_keys(path)): -float(np.asarray(u)[0])
        for path, u in jax.tree_util.tree_leaves_with_path(updates)
    }
    expected_head = head_rate or 1.0
    assert moved["ner/kernel"] == pytest.approx(expected_head, rel=1e-4)
    for name, above in [
        ("encoder/embeddings/word_embeddings/embedding", 3),
        ("encoder/encoder/layer/0/output/dense/kernel", 2),
        ("encoder/encoder/layer/2/output/dense/kernel", 0),
        ("encoder/pooler/dense/kernel", 0),
    ]:
        assert moved[name] == pytest.approx(decay**above, rel=1e-4), name


def test_layer_decay_out_of_range_is_refused():
    config = default.get_config()
    config.optim.layer_decay = 0.0
    with pytest.raises(UserError, match=r"--config.optim.layer_decay=0.0: must be in \(0.0, 1.0\]"):
        validation.validate(config)
