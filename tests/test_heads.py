"""Label schemes, heads, RE pair masks and losses on hand-made batches with known answers."""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jointre_jax.labels import BioScheme, SpanScheme, crossing, decide, gold_table
from jointre_jax.model.bert import BertConfig
from jointre_jax.model.joint import JointModel, PairScorer, incremental_table, mask_words
from jointre_jax.model.losses import (
    LossOptions,
    loss_terms,
    relation_pairs,
    sampled_negatives,
    smoothed_span_targets,
    total_loss,
)
from jointre_jax.model.spans import SpanScorer

TINY = BertConfig(
    vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
    intermediate_size=32, max_position_embeddings=32,
)  # fmt: skip

# Word tags: O=0, B-A=1, I-A=2, B-B=3, I-B=4
TAGS = np.array([[1, 2, 0, 2, 3, 4, 2, 1, 0, 0]])
WORDS = np.array([[True] * 8 + [False] * 2])


def table(start, end, kind, size=4):
    """An entity table of one row from lists, padded to ``size`` slots."""
    pad = lambda x: np.array([list(x) + [0] * (size - len(x))], np.int32)  # noqa: E731
    out = {"start": pad(start), "end": pad(end), "type": pad(kind)}
    out["mask"] = out["type"] > 0
    return {k: jnp.asarray(v) for k, v in out.items()}


def test_bio_decoding_like_seqeval_and_the_host_reader():
    seqeval = pytest.importorskip("seqeval.metrics.sequence_labeling")
    names = ["O", "B-A", "I-A", "B-B", "I-B"]
    expected = seqeval.get_entities([names[t] for t in TAGS[0, :8]])  # (type, first, last)
    assert expected == [("A", 0, 1), ("A", 3, 3), ("B", 4, 5), ("A", 6, 6), ("A", 7, 7)]
    scheme = BioScheme(2)
    host = [("AB"[k], s, e - 1) for s, e, k in scheme.spans(TAGS[0], 8)]
    assert host == expected
    logits = jax.nn.one_hot(TAGS, 5) * 10.0
    found = jax.tree.map(np.asarray, scheme.decode(logits, jnp.asarray(WORDS), 8))
    rows = [
        ("AB"[found["type"][0, n] - 1], found["start"][0, n], found["end"][0, n] - 1)
        for n in np.flatnonzero(found["mask"][0])
    ]
    assert rows == expected and found["overflow"][0] == 0
    wide = scheme.decode(logits, jnp.asarray(WORDS), 16)  # more slots than words: all N kept
    assert wide["start"].shape == wide["mask"].shape == (1, 16) and int(wide["mask"].sum()) == 5
    few = scheme.decode(logits, jnp.asarray(WORDS), 3)
    assert int(few["overflow"][0]) == 2 and np.asarray(few["mask"]).sum() == 3
    tags = scheme.tags([(0, 2, 0), (4, 6, 1)], 8)
    assert tags.tolist() == [1, 2, 0, 0, 3, 4, 0, 0]
    assert BioScheme(2, anchor="last").anchor_of(4, 6) == 5


def test_span_decoding_keeps_nesting_and_never_crosses():
    scheme = SpanScheme(2, max_width=4)
    logits = np.zeros((1, 6, 6, 3), np.float32)
    logits[..., 0] = 5.0  # "no entity" everywhere ...
    for i, j, kind, score in [
        (0, 3, 1, 9.0),  # [0, 4) type A, best
        (1, 1, 2, 8.0),  # [1, 2) nested in it: kept
        (2, 4, 1, 7.0),  # [2, 5) crosses [0, 4): rejected
        (4, 5, 2, 6.0),  # [4, 6) touches nothing kept: kept
        (0, 5, 1, 9.5),  # 6 words > max_width 4: never a candidate
    ]:
        logits[0, i, j, kind] = score
    words = jnp.ones((1, 6), bool)
    found = jax.tree.map(np.asarray, scheme.decode(jnp.asarray(logits), words, 8))
    spans = [
        (found["start"][0, n], found["end"][0, n], found["type"][0, n])
        for n in np.flatnonzero(found["mask"][0])
    ]
    assert spans == [(0, 4, 1), (1, 2, 2), (4, 6, 2)]


def _decoded_spans(scheme, logits, words, slots):
    found = jax.tree.map(np.asarray, scheme.decode(jnp.asarray(logits), words, slots))
    return [
        [
            (found["start"][b, n], found["end"][b, n], found["type"][b, n])
            for n in np.flatnonzero(found["mask"][b])
        ]
        for b in range(found["mask"].shape[0])
    ]


def test_span_nesting_modes_keep_what_they_say():
    logits = np.zeros((1, 6, 6, 3), np.float32)
    logits[..., 0] = 5.0
    for i, j, kind, score in [
        (0, 3, 1, 9.0),  # [0, 4) type A, best
        (1, 1, 2, 8.0),  # [1, 2) type B inside it
        (2, 3, 1, 7.0),  # [2, 4) type A inside [0, 4) of its own type
        (4, 5, 2, 6.0),  # [4, 6) apart
    ]:
        logits[0, i, j, kind] = score
    words = jnp.ones((1, 6), bool)
    expected = {
        "any": [(0, 4, 1), (1, 2, 2), (2, 4, 1), (4, 6, 2)],
        "other_type": [(0, 4, 1), (1, 2, 2), (4, 6, 2)],
        "none": [(0, 4, 1), (4, 6, 2)],
    }
    for nesting, spans in expected.items():
        scheme = SpanScheme(2, max_width=4, nesting=nesting)
        assert _decoded_spans(scheme, logits, words, 8) == [spans], nesting
    with pytest.raises(ValueError, match="span_nesting"):
        SpanScheme(2, nesting="flat")


@pytest.mark.parametrize("nesting", ["any", "other_type", "none"])
def test_span_decoding_random_logits_obey_the_nesting_rule(nesting):
    """On random logits: no crossing spans ever; no same-type nesting under "other_type"; no
    overlap at all under "none"; and every rejected candidate conflicts with a better kept one
    (greedy by score)."""
    scheme = SpanScheme(3, max_width=5, nesting=nesting)
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4, 10, 10, 4)).astype(np.float32) * 3
    words = jnp.ones((4, 10), bool)
    for b, spans in enumerate(_decoded_spans(scheme, logits, words, 60)):
        assert len(spans) > 3
        for (a, c, k), (d, e, m) in itertools.combinations(spans, 2):
            assert not crossing(a, c, d, e)
            overlap = a < e and d < c
            if nesting == "other_type":
                assert not (overlap and k == m), (a, c, d, e, k)
            if nesting == "none":
                assert not overlap
        probs = np.asarray(jax.nn.softmax(jnp.asarray(logits[b]), -1))
        kept = set(spans)
        for i, j in itertools.product(range(10), range(10)):
            k = int(probs[i, j].argmax())
            if not 0 <= j - i < 5:
                continue
            if k == 0 or (i, j + 1, k) in kept:
                continue
            a, c = i, j + 1

            def conflicts(d, e, m, a=a, c=c, k=k):
                overlap = a < e and d < c
                same = overlap and m == k if nesting == "other_type" else overlap
                return crossing(a, c, d, e) or (nesting != "any" and same)

            better = [
                (d, e, m)
                for d, e, m in kept
                if probs[d, e - 1, m] > probs[i, j, k] and conflicts(d, e, m)
            ]
            assert better, (i, j, k)


def test_boundary_smoothing_targets_known_answer():
    scheme = SpanScheme(2, max_width=4)
    mask = scheme.span_mask(jnp.array([[True] * 5 + [False]]))
    targets = np.zeros((1, 6, 6), np.int32)
    targets[0, 1, 2] = 1  # words [1, 3) type A: four candidate neighbours
    targets[0, 0, 0] = 2  # word [0, 1) type B: one neighbour, [0, 2)
    soft = np.asarray(smoothed_span_targets(jnp.asarray(targets), mask, 3, 0.2))
    np.testing.assert_allclose(soft.sum(-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(soft[0, 1, 2], [0.2, 0.8, 0.0], atol=1e-6)
    for i, j in [(0, 2), (2, 2), (1, 1), (1, 3)]:
        np.testing.assert_allclose(soft[0, i, j], [0.95, 0.05, 0.0], atol=1e-6)
    np.testing.assert_allclose(soft[0, 0, 0], [0.2, 0.0, 0.8], atol=1e-6)
    np.testing.assert_allclose(soft[0, 0, 1], [0.8, 0.0, 0.2], atol=1e-6)
    np.testing.assert_allclose(soft[0, 3, 4], [1.0, 0.0, 0.0], atol=1e-6)  # no gold nearby
    # A gold neighbour gets nothing, and eps splits over the candidates that are not gold.
    targets[0, 1, 1] = 1
    soft = np.asarray(smoothed_span_targets(jnp.asarray(targets), mask, 3, 0.2))
    np.testing.assert_allclose(soft[0, 1, 1], [0.2, 0.8, 0.0], atol=1e-6)
    np.testing.assert_allclose(soft[0, 2, 2], [1 - 0.2 / 3, 0.2 / 3, 0.0], atol=1e-6)
    np.testing.assert_allclose(soft[0, 0, 1], [0.6, 0.2, 0.2], atol=1e-6)  # from [1, 2), [0, 1)


def test_boundary_smoothing_loss_is_soft_cross_entropy_and_zero_eps_is_plain():
    scheme = SpanScheme(2, max_width=3)
    batch = {
        "word_mask": jnp.array([[True] * 4]),
        "row_mask": jnp.array([True]),
        "entity_start": jnp.array([[1]]), "entity_end": jnp.array([[3]]),
        "entity_type": jnp.array([[1]]),
    }  # fmt: skip
    logits = jax.random.normal(jax.random.key(0), (1, 4, 4, 3))
    plain = loss_terms({"ner_logits": logits}, batch, LossOptions(scheme))
    zero = loss_terms({"ner_logits": logits}, batch, LossOptions(scheme, boundary_smoothing=0.0))
    assert float(plain["ner_loss_sum"]) == float(zero["ner_loss_sum"])
    smooth = loss_terms({"ner_logits": logits}, batch, LossOptions(scheme, boundary_smoothing=0.1))
    log_p = np.asarray(jax.nn.log_softmax(logits, -1))[0]
    mask = np.asarray(scheme.span_mask(batch["word_mask"]))[0]
    soft = np.zeros((4, 4, 3))
    soft[..., 0] = 1.0
    soft[1, 2] = [0.1, 0.9, 0.0]
    for i, j in [(0, 2), (2, 2), (1, 1), (1, 3)]:
        soft[i, j] = [1 - 0.1 / 4, 0.1 / 4, 0.0]
    expected = -(soft * log_p).sum(-1)[mask].sum()
    np.testing.assert_allclose(float(smooth["ner_loss_sum"]), expected, rtol=1e-5)
    assert float(smooth["ner_count"]) == float(plain["ner_count"]) == mask.sum()
    with pytest.raises(ValueError, match="boundary_smoothing"):
        LossOptions(scheme, boundary_smoothing=0.3)
    with pytest.raises(ValueError, match="span decoder"):
        LossOptions(BioScheme(2), boundary_smoothing=0.1)


def test_span_negative_sampling_drops_only_pure_negatives_and_their_count():
    """With span_negative_keep p, each candidate whose target is "no entity" alone counts with
    probability p; gold spans and smoothed neighbours always count; the sum and the count are
    those of the kept candidates."""
    scheme = SpanScheme(2, max_width=8)
    length = 32
    batch = {
        "word_mask": jnp.ones((1, length), bool),
        "row_mask": jnp.array([True]),
        "entity_start": jnp.array([[1, 10]]), "entity_end": jnp.array([[3, 11]]),
        "entity_type": jnp.array([[1, 2]]),
    }  # fmt: skip
    logits = jax.random.normal(jax.random.key(0), (1, length, length, 3))
    all_ = loss_terms({"ner_logits": logits}, batch, LossOptions(scheme, boundary_smoothing=0.1))
    options = LossOptions(scheme, boundary_smoothing=0.1, span_negative_keep=0.25)
    some = loss_terms({"ner_logits": logits}, batch, options, jax.random.key(1))
    mask = np.asarray(scheme.span_mask(batch["word_mask"]))[0]
    soft = np.asarray(
        smoothed_span_targets(scheme.span_targets(gold_table(batch), length), mask, 3, 0.1)
    )
    kept = np.asarray(
        sampled_negatives(jnp.asarray(soft), jnp.asarray(mask), 0.25, jax.random.key(1))
    )[0]
    pure = soft[0, ..., 0] >= 1.0
    assert kept[mask & ~pure].all()  # the 2 gold spans and their 4 + 2 smoothed neighbours
    assert (mask & ~pure).sum() == 2 + 4 + 2
    rate = kept[mask & pure].mean()
    assert 0.2 < rate < 0.3, rate  # about a quarter of the 220 pure negatives
    assert not kept[~mask].any()
    assert float(some["ner_count"]) == kept.sum() < float(all_["ner_count"]) == mask.sum()
    losses = -(soft[0] * np.asarray(jax.nn.log_softmax(logits, -1))[0]).sum(-1)
    np.testing.assert_allclose(float(some["ner_loss_sum"]), losses[kept].sum(), rtol=1e-5)
    with pytest.raises(ValueError, match="needs an rng"):
        loss_terms({"ner_logits": logits}, batch, options)
    with pytest.raises(ValueError, match="span_negative_keep"):
        LossOptions(scheme, span_negative_keep=0.0)
    with pytest.raises(ValueError, match="span decoder"):
        LossOptions(BioScheme(2), span_negative_keep=0.5)


def test_span_decoding_never_produces_crossing_spans():
    scheme = SpanScheme(3, max_width=5)
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(6, 12, 12, 4)).astype(np.float32) * 3)
    words = jnp.asarray(np.arange(12)[None] < rng.integers(6, 13, (6, 1)))  # real words first
    found = jax.tree.map(np.asarray, scheme.decode(logits, words, 40))
    assert found["mask"].sum() > 20
    for b in range(6):
        spans = [
            (found["start"][b, n], found["end"][b, n]) for n in np.flatnonzero(found["mask"][b])
        ]
        assert len(set(spans)) == len(spans)
        for (a, c), (d, e) in itertools.combinations(spans, 2):
            assert not crossing(a, c, d, e), (a, c, d, e)
        for a, c in spans:
            assert c - a <= 5 and words[b, a:c].all()


def test_span_scheme_selection_and_targets():
    scheme = SpanScheme(2, max_width=3)
    left_out = scheme.select([(0, 2), (0, 2), (1, 5), (0, 1)], [1, 3, 1, 1])
    assert left_out == {0: "same_span", 2: "too_wide"}  # the one with more relations stays
    targets = scheme.span_targets(table([0, 2], [2, 3], [1, 2]), 4)
    expected = np.zeros((1, 4, 4), np.int32)
    expected[0, 0, 1], expected[0, 2, 2] = 1, 2
    np.testing.assert_array_equal(np.asarray(targets), expected)
    mask = np.asarray(scheme.span_mask(jnp.array([[True, True, True, False]])))
    assert mask[0].sum() == 6 and mask[0, 0, 2] and not mask[0, 2, 1] and not mask[0, 0, 3]


def test_span_scorer_matches_explicit_formula():
    words = jax.random.normal(jax.random.key(0), (2, 5, 8))
    scorer = SpanScorer(num_classes=3, hidden_dim=4, max_width=3)
    params = scorer.init(jax.random.key(1), words)["params"]
    params["width_bias"] = jax.random.normal(jax.random.key(2), (3, 3))
    scores = np.asarray(scorer.apply({"params": params}, words))
    assert scores.shape == (2, 5, 5, 3)
    x = np.asarray(words)
    s = np.maximum(x @ params["start"]["kernel"] + params["start"]["bias"], 0)
    e = np.maximum(x @ params["end"]["kernel"] + params["end"]["bias"], 0)
    b, i, j = 1, 1, 3
    expected = np.einsum("d,cde,e->c", s[b, i], params["bilinear"], e[b, j])
    expected += s[b, i] @ params["linear_start"]["kernel"] + params["linear_start"]["bias"]
    expected += e[b, j] @ params["linear_end"]["kernel"]
    expected += np.asarray(params["width_bias"])[j - i]  # a span of 3 words: width index 2
    np.testing.assert_allclose(scores[b, i, j], expected, rtol=1e-5, atol=1e-5)


def test_span_pooling_term_matches_explicit_formula():
    """pool_dim > 0 adds V relu(P (max-pool of the span's words || width embedding)) to each
    span's biaffine score; spans wider than max_width are not scored (masked elsewhere)."""
    words = jax.random.normal(jax.random.key(0), (2, 6, 8))
    plain = SpanScorer(num_classes=3, hidden_dim=4, max_width=3)
    pooled = SpanScorer(num_classes=3, hidden_dim=4, max_width=3, pool_dim=5)
    params = pooled.init(jax.random.key(1), words)["params"]
    base = {k: v for k, v in params.items() if k in plain.init(jax.random.key(1), words)["params"]}
    extra = np.asarray(pooled.apply({"params": params}, words)) - np.asarray(
        plain.apply({"params": base}, words)
    )
    x = np.asarray(words)
    for b, i, j in [(0, 0, 0), (1, 1, 3), (0, 3, 5)]:
        features = np.concatenate(
            [x[b, i : j + 1].max(axis=0), np.asarray(params["width_embedding"]["embedding"])[j - i]]
        )
        hidden = np.maximum(
            features @ params["pool_hidden"]["kernel"] + params["pool_hidden"]["bias"], 0
        )
        expected = hidden @ params["pool_classes"]["kernel"] + params["pool_classes"]["bias"]
        np.testing.assert_allclose(extra[b, i, j], expected, rtol=1e-4, atol=1e-5)


def test_span_context_term_matches_explicit_formula():
    """With a context vector the span-content term is V relu(P (max-pool of the span's words
    || width embedding || the context at the span's first word)), added to the biaffine score;
    without pool_dim there is no term to read the context and the scorer refuses it."""
    words = jax.random.normal(jax.random.key(0), (2, 6, 8))
    context = jax.random.normal(jax.random.key(2), (2, 6, 3))
    plain = SpanScorer(num_classes=3, hidden_dim=4, max_width=3)
    pooled = SpanScorer(num_classes=3, hidden_dim=4, max_width=3, pool_dim=5)
    params = pooled.init(jax.random.key(1), words, context=context)["params"]
    base = {k: v for k, v in params.items() if k in plain.init(jax.random.key(1), words)["params"]}
    extra = np.asarray(pooled.apply({"params": params}, words, context=context)) - np.asarray(
        plain.apply({"params": base}, words)
    )
    x, c = np.asarray(words), np.asarray(context)
    width = np.asarray(params["width_embedding"]["embedding"])
    for b, i, j in [(0, 0, 0), (1, 1, 3), (0, 3, 5)]:
        features = np.concatenate([x[b, i : j + 1].max(axis=0), width[j - i], c[b, i]])
        hidden = np.maximum(
            features @ params["pool_hidden"]["kernel"] + params["pool_hidden"]["bias"], 0
        )
        expected = hidden @ params["pool_classes"]["kernel"] + params["pool_classes"]["bias"]
        np.testing.assert_allclose(extra[b, i, j], expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="pool_dim"):
        plain.init(jax.random.key(1), words, context=context)


def _conv_in_segments(grid, kernel, bias, segment):
    """A 3 x 3 convolution, zero-padded, over grid [L, W, K] (start x width), each span reading
    only neighbours that start in its own segment: kernel [3, 3, K, K'] -> [L, W, K']."""
    out = np.zeros(grid.shape[:2] + kernel.shape[-1:])
    for i in range(grid.shape[0]):
        for w in range(grid.shape[1]):
            out[i, w] = bias
            for di in (-1, 0, 1):
                for dw in (-1, 0, 1):
                    a, b = i + di, w + dw
                    inside = 0 <= a < grid.shape[0] and 0 <= b < grid.shape[1]
                    if inside and segment[a] == segment[i]:
                        out[i, w] += grid[a, b] @ kernel[di + 1, dw + 1]
    return out


def test_span_convolution_term_matches_explicit_formula():
    """conv_layers > 0 adds K g + k, g the span grid (start x width) after residual 3 x 3
    convolutions, every span outside one word segment zeroed before and after each and no span
    reading one that starts in another segment; at initialisation (K, k = 0) the term is
    silent, and without segments the scorer refuses."""
    words = jax.random.normal(jax.random.key(0), (2, 6, 8))
    segment = jnp.array([[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 1, 1]])
    plain = SpanScorer(num_classes=3, hidden_dim=4, max_width=3)
    conv = SpanScorer(num_classes=3, hidden_dim=4, max_width=3, conv_layers=2, conv_dim=5)
    params = conv.init(jax.random.key(1), words, segment=segment)["params"]
    base = {k: v for k, v in params.items() if k in plain.init(jax.random.key(1), words)["params"]}
    np.testing.assert_array_equal(  # silent at initialisation
        conv.apply({"params": params}, words, segment=segment), plain.apply({"params": base}, words)
    )
    params["conv_classes"] = {
        "kernel": jax.random.normal(jax.random.key(3), (5, 3)),
        "bias": jax.random.normal(jax.random.key(4), (3,)),
    }
    extra = np.asarray(conv.apply({"params": params}, words, segment=segment)) - np.asarray(
        plain.apply({"params": base}, words)
    )
    x, p = np.asarray(words), jax.tree.map(np.asarray, params)
    s = np.maximum(x @ p["start"]["kernel"] + p["start"]["bias"], 0)
    e = np.maximum(x @ p["end"]["kernel"] + p["end"]["bias"], 0)
    gelu = lambda v: np.asarray(jax.nn.gelu(v))  # noqa: E731
    for b in range(2):
        grid, valid = np.zeros((6, 3, 5)), np.zeros((6, 3, 1))
        for i in range(6):
            for w in range(3):
                if i + w < 6 and segment[b, i] > 0 and segment[b, i + w] == segment[b, i]:
                    valid[i, w] = 1
                    grid[i, w] = (
                        s[b, i] @ p["conv_start"]["kernel"]
                        + p["conv_start"]["bias"]
                        + e[b, i + w] @ p["conv_end"]["kernel"]
                        + p["conv_width"]["embedding"][w]
                    )
        grid = gelu(grid) * valid
        for k in range(2):
            kernel = p[f"conv_{k}"]["kernel"].reshape(3, 3, 5, 5)  # (di, dw) row-major
            update = _conv_in_segments(grid, kernel, p[f"conv_{k}"]["bias"], np.asarray(segment[b]))
            grid = (grid + gelu(update)) * valid
        classes = grid @ p["conv_classes"]["kernel"] + p["conv_classes"]["bias"]
        for i in range(6):
            for j in range(i, min(i + 3, 6)):
                np.testing.assert_allclose(extra[b, i, j], classes[i, j - i], rtol=1e-4, atol=1e-4)
    # Row 0: span (2, 3) crosses from criterion 1 into 2; zeroed, it scores the bias alone.
    np.testing.assert_allclose(extra[0, 2, 3], p["conv_classes"]["bias"], rtol=1e-5)
    with pytest.raises(ValueError, match="word segments"):
        conv.init(jax.random.key(1), words)


@pytest.mark.parametrize(
    "options",
    [
        {"word_features": "first_last"},
        {"layer_mix": True},
        {"word_lstm_dim": 4},
        {"span_pooling_dim": 8},
        {"span_pooling_dim": 8, "span_context": True},
        {"casing_embedding_dim": 4},
    ],
)
def test_word_feature_options_train_through_the_loss(options):
    """Each word-feature option builds, gives finite losses and gradients, and changes the
    features the heads read; first_last reads the last wordpiece of each word."""
    scheme = SpanScheme(2, 4)
    batch = model_batch()
    batch["word_end_index"] = jnp.array([[1, 3, 3, 4, 0, 0]])  # word 1 spans pieces 2-3
    batch["word_casing"] = jnp.array([[1, 2, 3, 2, 0, 0]])
    kwargs = dict(num_relations=3, pair_hidden_dim=8, span_hidden_dim=8, max_entities=4)
    model = JointModel.build(TINY, scheme, **kwargs, **options)
    variables = model.init(jax.random.key(0), batch, label_source="gold")
    options_ = LossOptions(scheme)

    def loss(params):
        outputs = model.apply({"params": params}, batch, label_source="gold")
        return total_loss(loss_terms(outputs, batch, options_))

    value, grads = jax.value_and_grad(loss)(variables["params"])
    assert np.isfinite(float(value))
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree_util.tree_leaves(grads))
    encoder_grad = grads["encoder"]["embeddings"]["word_embeddings"]["embedding"]
    assert float(jnp.abs(encoder_grad).sum()) > 0
    if "word_features" in options:
        read = lambda module, b: module.words(module.encoder, b, True)[0]  # noqa: E731
        words = model.apply(variables, batch, method=read)
        assert words.shape == (1, 6, 2 * TINY.hidden_size)
        np.testing.assert_allclose(words[0, 1, 16:], words[0, 2, :16], rtol=1e-6)  # piece 3
    if "casing_embedding_dim" in options:  # the last 4 features: the casing class's embedding
        read = lambda module, b: module.words(module.encoder, b, True)[0]  # noqa: E731
        words = np.asarray(model.apply(variables, batch, method=read))
        table = np.asarray(variables["params"]["casing_embedding"]["embedding"])
        assert words.shape == (1, 6, TINY.hidden_size + 4)
        np.testing.assert_allclose(words[0, :, -4:], table[[1, 2, 3, 2, 0, 0]], rtol=1e-6)
        assert float(jnp.abs(grads["casing_embedding"]["embedding"][2]).sum()) > 0


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


def test_entity_pair_relation_scores_are_the_explicit_formula():
    """Span decoder: entity features = words at its first and last word + type embedding, and
    the pair scores of two entities are the bilinear formula on those features."""
    batch = model_batch()
    model = JointModel.build(
        TINY, SpanScheme(2, 4), num_relations=3, pair_hidden_dim=8, span_hidden_dim=8,
        max_entities=4,
    )  # fmt: skip
    variables = model.init(jax.random.key(0), batch)
    out, state = model.apply(
        variables, batch, tables=("gold",), capture_intermediates=True, mutable=["intermediates"]
    )
    params = variables["params"]
    hidden = state["intermediates"]["encoder"]["__call__"][0]
    words = np.asarray(hidden)[0, np.asarray(batch["word_index"][0])]
    emb = np.asarray(params["label_embedding"]["embedding"])
    h, t = 0, 1  # entity A [0, 2) and entity B [1, 2)
    feats = [
        np.concatenate([words[0], words[1], emb[1]]),
        np.concatenate([words[1], words[1], emb[2]]),
    ]
    pairs = params["pairs"]
    head = np.maximum(feats[h] @ pairs["head"]["kernel"] + pairs["head"]["bias"], 0)
    tail = np.maximum(feats[t] @ pairs["tail"]["kernel"] + pairs["tail"]["bias"], 0)
    expected = np.einsum("d,rde,e->r", head, pairs["bilinear"], tail)
    np.testing.assert_allclose(
        np.asarray(out["re_logits_gold"])[0, h, t], expected, rtol=1e-4, atol=1e-5
    )


def gold_batch():
    """One row: gold entities A [0, 2), B [1, 2) (nested), A [3, 4); R(0 -> 1) = 2."""
    g = table([0, 1, 3], [2, 2, 4], [1, 2, 1])
    relations = np.zeros((1, 4, 4), np.int32)
    relations[0, 0, 1] = 2
    return {
        "entity_start": g["start"],
        "entity_end": g["end"],
        "entity_type": g["type"],
        "relations": jnp.asarray(relations),
        "row_mask": jnp.array([True]),
        "word_mask": jnp.array([[True, True, True, True, False, False]]),
        "ner_labels": jnp.array([[1, 2, 0, 1, 0, 0]]),
    }


def model_batch():
    batch = gold_batch()
    batch["input_ids"] = jnp.array([[2, 7, 8, 9, 10, 3]])
    batch["input_mask"] = jnp.ones((1, 6), bool)
    batch["word_index"] = jnp.array([[1, 2, 3, 4, 0, 0]])
    return batch


def test_gs_based_pairs_are_all_gold_entity_pairs():
    batch = gold_batch()
    gold = table([0, 1, 3], [2, 2, 4], [1, 2, 1])
    mask, targets = relation_pairs(gold, batch["relations"], batch["row_mask"], "gs-based")
    assert sorted(map(tuple, np.argwhere(np.asarray(mask[0])))) == list(
        itertools.permutations([0, 1, 2], 2)
    )
    assert np.asarray(targets)[0, 0, 1] == 2 and np.asarray(targets).sum() == 2


def test_incremental_pairs_known_answer():
    batch = gold_batch()
    gold = table([0, 1, 3], [2, 2, 4], [1, 2, 1])
    # Decoded: A [0, 2) right; B [1, 3) wrong span; nothing at [3, 4).
    predicted = table([0, 1], [2, 3], [1, 2])
    joined = incremental_table(gold, predicted)
    assert np.asarray(joined["mask"])[0].tolist() == [1, 1, 1, 0, 0, 1, 0, 0]
    assert np.asarray(joined["predicted"])[0].tolist() == [1, 0, 0, 0, 0, 1, 0, 0]
    mask, targets = relation_pairs(joined, batch["relations"], batch["row_mask"], "incremental")
    pairs = sorted(map(tuple, np.argwhere(np.asarray(mask[0]))))
    assert pairs == [(0, 1), (0, 5), (5, 0)]  # gold positive kept; decoded pairs negatives
    assert np.asarray(targets)[0, 0, 1] == 2 and np.asarray(targets)[0, 0, 5] == 0


def python_incremental(gold, relations, predicted):
    """Plain-Python reference of the incremental pairs, as (head key, tail key) -> target."""
    out = {}
    gold_keys = [tuple(x) for x in gold if x[2]]
    found = [tuple(x) for x in predicted if x[2]]
    for i, j in itertools.permutations(range(len(gold_keys)), 2):
        if relations[i, j]:
            out[(gold_keys[i], gold_keys[j])] = int(relations[i, j])
    for a, b in itertools.permutations(found, 2):
        out.setdefault((a, b), 0)
    return out


def test_incremental_mask_equals_python_reference():
    rng = np.random.default_rng(0)
    for _ in range(20):
        g_spans = sorted(
            {(int(a), int(a) + int(w)) for a, w in rng.integers(0, 6, (4, 2)) + [0, 1]}
        )
        p_spans = sorted(
            {(int(a), int(a) + int(w)) for a, w in rng.integers(0, 6, (4, 2)) + [0, 1]}
        )
        g_types = rng.integers(1, 3, len(g_spans)).tolist()
        p_types = [
            g_types[g_spans.index(s)] if s in g_spans and rng.random() < 0.7 else rng.integers(1, 3)
            for s in p_spans
        ]
        g_rows = [(a, b, k) for (a, b), k in zip(g_spans, g_types, strict=True)]
        p_rows = [(a, b, int(k)) for (a, b), k in zip(p_spans, p_types, strict=True)]
        gold = table(*zip(*g_rows, strict=True), size=6)
        predicted = table(*zip(*p_rows, strict=True), size=6)
        relations = np.zeros((1, 6, 6), np.int32)
        relations[0, : len(g_spans), : len(g_spans)] = (
            rng.random((len(g_spans),) * 2) > 0.6
        ) * rng.integers(1, 4, (len(g_spans),) * 2)
        np.fill_diagonal(relations[0], 0)
        joined = incremental_table(gold, predicted)
        mask, targets = relation_pairs(
            joined, jnp.asarray(relations), jnp.array([True]), "incremental"
        )
        keys = np.stack([np.asarray(joined[k])[0] for k in ("start", "end", "type")], -1)
        got = {
            (tuple(map(int, keys[i])), tuple(map(int, keys[j]))): int(targets[0, i, j])
            for i, j in np.argwhere(np.asarray(mask[0]))
        }
        assert got == python_incremental(g_rows, relations[0], p_rows)


@pytest.mark.parametrize("decoder", ["bio", "span"])
@pytest.mark.parametrize("method", ["joint", "ner", "re", "pipeline"])
def test_both_decoders_through_one_interface(method, decoder):
    scheme = BioScheme(2) if decoder == "bio" else SpanScheme(2, 4)
    batch = model_batch()
    model = JointModel.build(
        TINY, scheme, num_relations=3, method=method, pair_hidden_dim=8, span_hidden_dim=8,
        max_entities=4,
    )  # fmt: skip
    variables = model.init(jax.random.key(0), batch, label_source="gold")
    for negatives in ("gs-based", "incremental") if method == "joint" else ("gs-based",):
        options = LossOptions(scheme, negatives)
        outputs = model.apply(variables, batch, label_source="gold", tables=(options.re_table,))
        assert ("ner_logits" in outputs) == (method != "re")
        assert (f"re_logits_{options.re_table}" in outputs) == (method != "ner")
        terms = loss_terms(outputs, batch, options)
        ner_count = {"bio": 4.0, "span": 4 + 3 + 2 + 1.0}[decoder] if method != "re" else 0.0
        assert float(terms["ner_count"]) == ner_count
        if method != "ner" and negatives == "gs-based":
            assert float(terms["re_pairs"]) == 6.0
        assert np.isfinite(float(total_loss(terms)))
    assert ("re_encoder" in variables["params"]) == (method == "pipeline")


def test_loss_sums_and_denominators_known_answer():
    logits = jnp.zeros((1, 6, 5))  # uniform: CE = log(5) per word
    terms = loss_terms({"ner_logits": logits}, gold_batch(), LossOptions(BioScheme(2)))
    assert float(terms["ner_count"]) == 4
    np.testing.assert_allclose(float(terms["ner_loss_sum"]), 4 * np.log(5), rtol=1e-6)
    np.testing.assert_allclose(float(total_loss(terms)), np.log(5), rtol=1e-6)


def test_decision_rule_argmax_or_threshold():
    probs = jnp.array([[0.4, 0.35, 0.25], [0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    label, score = decide(probs, 0.0)  # argmax, "none" included
    assert label.tolist() == [0, 0, 2] and np.allclose(score, [0.4, 0.7, 0.6])
    label, score = decide(probs, 0.5)  # an entity when 1 - P(none) >= 0.5
    assert label.tolist() == [1, 0, 2] and np.allclose(score, [0.35, 0.7, 0.6])


def test_the_config_sets_the_nesting_rule_and_old_runs_keep_any(tmp_path):
    import json

    from configs import default, minilm_span
    from jointre_jax.inference import saved_config
    from jointre_jax.labels import make_scheme

    scheme = make_scheme(minilm_span.get_config())
    assert (scheme.nesting, scheme.fragments, scheme.num_classes) == ("other_type", True, 31)
    config = default.get_config()
    assert make_scheme(config).name == "bio"  # BIO has no nesting to choose
    saved = {"model": {"ner_decoder": "span", "max_span_width": 8}}  # a run saved before it
    (tmp_path / "config.json").write_text(json.dumps(saved))
    scheme = make_scheme(saved_config(tmp_path / "config.json"))
    assert (scheme.name, scheme.nesting, scheme.max_width) == ("span", "any", 8)
    assert not scheme.fragments and scheme.num_classes == 16


def test_merge_fragments_reads_chains_back():
    from jointre_jax.labels import merge_fragments

    # Types: 0, 1 (2 types); labels 2, 3 are fragments of 0, 1. Link label 9.
    spans = [(0, 1), (2, 3), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12)]
    labels = [2, 2, 0, 2, 3, 2, 1]
    relations = [
        (0, 3, 9, 0.9),  # heart -> cancer: entity 0+3
        (1, 3, 9, 0.8),  # lung -> cancer: shares the tail
        (3, 5, 9, 0.7),  # cancer -> 5: continues both chains
        (4, 5, 9, 0.6),  # a link across types: ignored
        (5, 0, 9, 0.5),  # backwards: ignored
        (0, 6, 4, 0.4),  # a relation of the fragment that begins an entity
        (2, 6, 5, 0.3),  # between plain entities
    ]
    entities, merged, first = merge_fragments(spans, labels, relations, 2, 9)
    assert entities == [
        (((0, 1), (5, 6), (9, 10)), 0),
        (((2, 3), (5, 6), (9, 10)), 0),
        (((3, 4),), 0),
        (((11, 12),), 1),
    ]  # sorted; fragment 4 links to no fragment of its type: no entity
    assert first == [0, 1, 2, 6]
    assert merged == [(0, 3, 4, 0.4), (2, 3, 5, 0.3)]


def test_word_masking_replaces_whole_chosen_words_in_training_only():
    """mask_words covers every wordpiece of each chosen word and nothing else (a word ending
    at the last wordpiece included); the model masks only when not deterministic, and a rate
    without a [MASK] id is refused."""
    ids = jnp.array([[101, 7, 8, 9, 10, 102], [101, 20, 21, 22, 23, 24]])
    batch = {
        "word_index": jnp.array([[1, 2, 4, 0], [1, 3, 0, 0]]),
        "word_end_index": jnp.array([[1, 3, 4, 0], [2, 5, 0, 0]]),
    }
    chosen = jnp.array([[False, True, True, False], [True, True, False, False]])
    out = np.asarray(mask_words(ids, batch, chosen, 103))
    np.testing.assert_array_equal(out[0], [101, 7, 103, 103, 103, 102])
    np.testing.assert_array_equal(out[1], [101, 103, 103, 103, 103, 103])
    none = np.asarray(mask_words(ids, batch, jnp.zeros((2, 4), bool), 103))
    np.testing.assert_array_equal(none, ids)

    scheme = SpanScheme(2, 4)
    batch = model_batch()
    batch["word_end_index"] = batch["word_index"]  # one wordpiece each
    kwargs = dict(num_relations=3, pair_hidden_dim=8, span_hidden_dim=8, max_entities=4)
    plain = JointModel.build(TINY, scheme, **kwargs)
    masked = JointModel.build(TINY, scheme, **kwargs, word_masking=0.5, mask_token_id=1)
    variables = plain.init(jax.random.key(0), batch, label_source="gold")
    assert jax.tree_util.tree_structure(variables) == jax.tree_util.tree_structure(
        masked.init(jax.random.key(0), batch, label_source="gold")
    )
    read = lambda module, b, det: module.words(module.encoder, b, det)[0]  # noqa: E731
    np.testing.assert_array_equal(  # prediction never masks
        masked.apply(variables, batch, True, method=read),
        plain.apply(variables, batch, True, method=read),
    )
    # Training: each key's features are those of the row with some whole words masked (one of
    # the 2^4 subsets of its 4 words); over 8 keys, more than one subset turns up.
    subsets = {}
    for bits in itertools.product([False, True], repeat=4):
        chosen = jnp.array([list(bits) + [False, False]]) & batch["word_mask"]
        masked_batch = {**batch, "input_ids": mask_words(batch["input_ids"], batch, chosen, 1)}
        subsets[bits] = np.asarray(plain.apply(variables, masked_batch, True, method=read))
    quiet = dataclasses.replace(TINY, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    options = dataclasses.replace(masked.options, dropout_rate=0.0)
    no_dropout = masked.clone(options=options, encoder_config=quiet)
    seen = set()
    for k in range(8):
        rng = {"dropout": jax.random.key(k)}
        got = np.asarray(no_dropout.apply(variables, batch, False, method=read, rngs=rng))
        match = [bits for bits, want in subsets.items() if np.allclose(got, want, atol=1e-5)]
        assert len(match) == 1, k
        seen.add(match[0])
    assert len(seen) > 1
    with pytest.raises(ValueError, match="mask_token_id"):
        JointModel.build(TINY, scheme, **kwargs, word_masking=0.5).apply(
            variables, batch, False, method=read, rngs={"dropout": jax.random.key(0)}
        )
