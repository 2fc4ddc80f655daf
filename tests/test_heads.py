"""Heads, BIO decoding, RE pair masks and losses on hand-made batches with known answers."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jointre_jax.model.bert import BertConfig
from jointre_jax.model.joint import JointModel, PairScorer
from jointre_jax.model.losses import (
    correct_entities,
    decode_bio,
    loss_terms,
    relation_pairs,
    total_loss,
)

TINY = BertConfig(
    vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
    intermediate_size=32, max_position_embeddings=32,
)  # fmt: skip

# O=0, B-A=1, I-A=2, B-B=3, I-B=4
TAGS = np.array([[0, 1, 2, 0, 2, 3, 4, 2, 1, 0]])
MASK = np.array([[False] + [True] * 8 + [False]])


def test_decode_bio_like_seqeval():
    seqeval = pytest.importorskip("seqeval.metrics.sequence_labeling")
    names = ["O", "B-A", "I-A", "B-B", "I-B"]
    expected = seqeval.get_entities([names[t] for t in TAGS[0, 1:9]])  # (type, first, last)
    first = jax.tree.map(np.asarray, decode_bio(jnp.asarray(TAGS), jnp.asarray(MASK), "first"))
    found = [
        ("AB"[first["type"][0, i] - 1], i - 1, first["end"][0, i] - 2)
        for i in np.flatnonzero(first["anchor"][0])
    ]
    assert found == expected == [("A", 0, 1), ("A", 3, 3), ("B", 4, 5), ("A", 6, 6), ("A", 7, 7)]
    last = jax.tree.map(np.asarray, decode_bio(jnp.asarray(TAGS), jnp.asarray(MASK), "last"))
    assert np.flatnonzero(last["anchor"][0]).tolist() == [2, 4, 6, 7, 8]
    assert last["start"][0, 6] == 5 and last["end"][0, 6] == 7 and last["type"][0, 6] == 2


def gold_batch():
    """One row, L=6: gold entities A at [1, 3) and B at [3, 4) and A at [4, 5); R(1 -> 3) = 2."""
    b = {
        "entity_type": np.array([[0, 1, 0, 2, 1, 0]]),
        "entity_start": np.array([[-1, 1, -1, 3, 4, -1]]),
        "entity_end": np.array([[-1, 3, -1, 4, 5, -1]]),
        "relations": np.zeros((1, 6, 6), np.int32),
        "row_mask": np.array([True]),
        "label_mask": np.array([[False, True, True, True, True, False]]),
        "ner_labels": np.array([[0, 1, 2, 3, 1, 0]]),
    }
    b["relations"][0, 1, 3] = 2
    return b


def test_gs_based_pairs_are_all_gold_anchor_pairs():
    mask, targets = relation_pairs(gold_batch(), negative_sampling="gs-based")
    assert sorted(map(tuple, np.argwhere(np.asarray(mask[0])))) == [
        (i, j) for i, j in itertools.permutations([1, 3, 4], 2)
    ]
    assert np.asarray(targets)[0, 1, 3] == 2 and np.asarray(targets).sum() == 2


def test_incremental_pairs_known_answer():
    batch = gold_batch()
    # Predicted: A [1, 3) right; B at [3, 5) wrong span; a spurious A at 5 (masked out: O).
    tags = np.array([[0, 1, 2, 3, 4, 0]])
    predicted = decode_bio(jnp.asarray(tags), jnp.asarray(batch["label_mask"]))
    assert np.asarray(correct_entities(batch, predicted))[0].tolist() == [0, 1, 0, 0, 0, 0]
    mask, targets = relation_pairs(batch, predicted, "incremental")
    pairs = sorted(map(tuple, np.argwhere(np.asarray(mask[0]))))
    assert pairs == [(1, 3), (3, 1)]  # gold positive (1,3) kept; predicted pair (3,1) negative
    assert np.asarray(targets)[0, 1, 3] == 2 and np.asarray(targets)[0, 3, 1] == 0


def python_incremental(batch, tags):
    """Plain-Python reference of the incremental mask: loops, no vectorisation."""
    B, L = tags.shape
    mask = np.zeros((B, L, L), bool)
    targets = np.zeros((B, L, L), np.int32)
    for b in range(B):
        labels = [tags[b, i] if batch["label_mask"][b, i] else 0 for i in range(L)]
        starts, i = [], 0
        while i < L:
            if labels[i] == 0:
                i += 1
                continue
            kind, j = (labels[i] - 1) // 2, i + 1
            while j < L and labels[j] == 2 + 2 * kind:
                j += 1
            starts.append(i)
            i = j
        for i, j in itertools.product(range(L), range(L)):
            positive = batch["relations"][b, i, j] > 0
            predicted = i != j and i in starts and j in starts
            if batch["row_mask"][b] and (positive or predicted):
                mask[b, i, j] = True
                targets[b, i, j] = batch["relations"][b, i, j] if positive else 0
    return mask, targets


def test_incremental_mask_equals_python_reference():
    rng = np.random.default_rng(0)
    B, L = 4, 12
    batch = {
        "label_mask": rng.random((B, L)) > 0.1,
        "row_mask": np.array([True, True, True, False]),
        "relations": (rng.random((B, L, L)) > 0.9) * rng.integers(1, 4, (B, L, L)),
    }
    for _ in range(20):
        tags = rng.integers(0, 7, (B, L))
        predicted = decode_bio(jnp.asarray(tags), jnp.asarray(batch["label_mask"]))
        mask, targets = relation_pairs(batch, predicted, "incremental")
        want_mask, want_targets = python_incremental(batch, tags)
        np.testing.assert_array_equal(np.asarray(mask), want_mask)
        np.testing.assert_array_equal(np.asarray(targets), want_targets)


@pytest.mark.parametrize("option", ["m1", "m2", "m2_bilinear"])
def test_pair_scorer_matches_explicit_formulas(option):
    features = jax.random.normal(jax.random.key(0), (2, 5, 8))
    scorer = PairScorer(num_relations=3, hidden_dim=4, re_option=option)
    params = scorer.init(jax.random.key(1), features)["params"]
    scores = np.asarray(scorer.apply({"params": params}, features))
    assert scores.shape == (2, 5, 5, 3)
    h = np.maximum(np.asarray(features) @ params["head"]["kernel"] + params["head"]["bias"], 0)
    t = np.maximum(np.asarray(features) @ params["tail"]["kernel"] + params["tail"]["bias"], 0)
    b, i, j = 1, 2, 4
    if option == "m1":
        w, bias = params["classifier_kernel"], params["classifier_bias"]
        expected = (h[b, i] + t[b, j]) @ w + bias
    else:
        expected = np.einsum("d,rde,e->r", h[b, i], params["bilinear"], t[b, j])
        if option == "m2":
            expected = expected + h[b, i] @ params["linear_head"]["kernel"]
            expected = expected + params["linear_head"]["bias"]
            expected = expected + t[b, j] @ params["linear_tail"]["kernel"]
    np.testing.assert_allclose(scores[b, i, j], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("option", ["m1", "m2", "m2_bilinear"])
def test_pair_scores_start_with_a_spread_of_order_one(option):
    # Large initial scores (a bilinear fan-in of d instead of d * d gave a spread of about 8
    # at d = 256) send large RE gradients into the shared encoder at the start of training.
    features = jax.random.normal(jax.random.key(0), (4, 32, 384))
    scorer = PairScorer(num_relations=11, hidden_dim=256, re_option=option)
    params = scorer.init(jax.random.key(1), features)["params"]
    spread = float(np.std(np.asarray(scorer.apply({"params": params}, features))))
    assert 0.2 < spread < 2.0, spread


@pytest.mark.parametrize("method", ["joint", "ner", "re", "pipeline"])
def test_model_outputs_and_losses(method):
    batch = {k: jnp.asarray(v) for k, v in gold_batch().items()}
    batch["input_ids"] = jnp.array([[2, 7, 8, 9, 10, 3]])
    batch["input_mask"] = jnp.ones((1, 6), bool)
    model = JointModel(TINY, num_bio_tags=5, num_relations=3, method=method, pair_hidden_dim=8)
    variables = model.init(jax.random.key(0), batch)
    outputs = model.apply(variables, batch, label_source="gold")
    assert ("ner_logits" in outputs) == (method != "re")
    assert ("re_logits" in outputs) == (method != "ner")
    terms = loss_terms(outputs, batch, "gs-based")
    assert float(terms["ner_tokens"]) == (4.0 if method != "re" else 0.0)
    assert float(terms["re_pairs"]) == (6.0 if method != "ner" else 0.0)
    assert np.isfinite(float(total_loss(terms)))
    assert model.encoder_prefixes()[0] == ("encoder",)
    assert ("re_encoder" in variables["params"]) == (method == "pipeline")


def test_loss_sums_and_denominators_known_answer():
    logits = jnp.zeros((1, 6, 5))  # uniform: CE = log(5) per token
    terms = loss_terms({"ner_logits": logits}, {k: jnp.asarray(v) for k, v in gold_batch().items()})
    assert float(terms["ner_tokens"]) == 4
    np.testing.assert_allclose(float(terms["ner_loss_sum"]), 4 * np.log(5), rtol=1e-6)
    np.testing.assert_allclose(float(total_loss(terms)), np.log(5), rtol=1e-6)
