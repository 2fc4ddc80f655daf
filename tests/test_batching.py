"""Batches: static shapes per bucket, masks, determinism, per-process slices, padding stats."""

import numpy as np
import pytest

from configs import default
from jointre_jax.data.batching import Batcher, bucket_for, padding_stats
from jointre_jax.data.encode import EntitySpan, Example
from jointre_jax.data.tokenization import CASINGS, casing_class
from jointre_jax.labels import BioScheme

BOUNDARIES = (8, 16, 32)


def make_example(n, entities=(), relations=(), pieces_per_word=1):
    """n wordpieces ([CLS] and [SEP] included); words of ``pieces_per_word`` pieces each."""
    ids = np.arange(n, dtype=np.int32) + 100
    word_starts = np.arange(1, n - 1, pieces_per_word, dtype=np.int32)
    words = np.stack([word_starts, word_starts + 1], -1).astype(np.int32)
    return Example(
        "doc", 1, 0, 0, "x" * n, ids, np.zeros((n, 2), np.int32), words, word_starts,
        tuple(entities), tuple(relations),
    )  # fmt: skip


@pytest.fixture
def examples():
    rng = np.random.default_rng(0)
    return [make_example(int(n)) for n in rng.integers(3, 33, size=203)]


def test_bucket_for():
    assert [bucket_for(n, BOUNDARIES) for n in (1, 8, 9, 32)] == [8, 8, 16, 32]
    with pytest.raises(ValueError, match="exceeds the largest bucket"):
        bucket_for(33, BOUNDARIES)


def test_epoch_plan_covers_every_example_once_with_static_shapes(examples):
    batcher = Batcher(examples, BOUNDARIES, batch_size=16, seed=3)
    plan = batcher.epoch_plan(0)
    assert len(plan) == batcher.steps_per_epoch() == -(-203 // 16)
    indices = np.concatenate([p.indices for p in plan])
    assert sorted(indices[indices >= 0].tolist()) == list(range(203))
    assert sum((p.indices < 0).any() for p in plan) <= 1  # one partial batch at most
    shapes = set()
    for planned in plan:
        batch = batcher.build(planned)
        assert planned.length in BOUNDARIES
        lengths = batcher.lengths[planned.indices[planned.indices >= 0]]
        assert lengths.max() <= planned.length
        shapes.add(batch["input_ids"].shape)
        assert batch["word_mask"].shape == (16, planned.length)
        assert batch["relations"].shape == (16, batcher.max_entities, batcher.max_entities)
    assert shapes <= {(16, b) for b in BOUNDARIES}


def test_plans_are_deterministic_and_differ_across_epochs(examples):
    a = Batcher(examples, BOUNDARIES, 16, seed=3)
    b = Batcher(examples, BOUNDARIES, 16, seed=3)
    same = [p.indices.tolist() for p in a.epoch_plan(1)]
    assert same == [p.indices.tolist() for p in b.epoch_plan(1)]
    assert same != [p.indices.tolist() for p in a.epoch_plan(2)]
    other_seed = Batcher(examples, BOUNDARIES, 16, seed=4)
    assert same != [p.indices.tolist() for p in other_seed.epoch_plan(1)]


def test_eval_plan_is_sorted_and_complete(examples):
    batcher = Batcher(examples, BOUNDARIES, 32)
    plan = batcher.eval_plan()
    indices = np.concatenate([p.indices for p in plan])
    real = indices[indices >= 0]
    assert sorted(real.tolist()) == list(range(203))
    assert np.all(np.diff(batcher.lengths[real]) <= 0)  # longest first
    assert (plan[-1].indices < 0).any() and not any((p.indices < 0).any() for p in plan[:-1])


def test_masks_labels_and_entity_tables():
    spans = (EntitySpan(0, 2, 0, 0, 5, "T1"), EntitySpan(3, 4, 7, 6, 8, "T2"))
    # 10 wordpieces: [CLS], 4 words of 2 pieces each, [SEP].
    example = make_example(10, spans, relations=((0, 1, 3),), pieces_per_word=2)
    batcher = Batcher([example], (8, 16), batch_size=2, scheme=BioScheme(8))
    assert batcher.max_entities == 8  # 2 entities, rounded up to a multiple of 8
    batch = batcher.build(batcher.eval_plan()[0])
    assert batch["input_mask"][0].tolist() == [True] * 10 + [False] * 6
    assert batch["word_mask"][0].tolist() == [True] * 4 + [False] * 12
    assert batch["word_index"][0, :5].tolist() == [1, 3, 5, 7, 0]
    assert batch["ner_labels"][0, :5].tolist() == [1, 2, 0, 15, 0]  # one tag per word
    assert batch["entity_start"][0, :3].tolist() == [0, 3, 0]
    assert batch["entity_end"][0, :3].tolist() == [2, 4, 0]
    assert batch["entity_type"][0, :3].tolist() == [1, 8, 0]
    assert np.argwhere(batch["relations"][0]).tolist() == [[0, 1]]
    assert batch["relations"][0, 0, 1] == 3
    assert batch["row_mask"].tolist() == [True, False]
    assert batch["example_index"].tolist() == [0, -1]
    assert not batch["input_mask"][1].any()  # filler row is empty
    small = Batcher([example], (8, 16), batch_size=2, max_entities=1).build(batcher.eval_plan()[0])
    assert small["entity_overflow"].tolist() == [1, 0]  # counted, not silently lost
    assert not small["relations"].any()


def test_casing_classes_of_words():
    words = ["hiv", "HIV", "Visit", "A", "mRNA", "HbA1C", "130", "2.5", "≤7", "(", "-", "ÉTAT"]
    want = ["lower", "upper", "title", "title", "mixed", "alphanumeric", "number", "number",
            "number", "other", "other", "upper"]  # fmt: skip
    assert [CASINGS[casing_class(w)] for w in words] == want
    assert CASINGS[0] == "none"  # padding: no word


def test_each_word_gets_its_casing_class():
    text = "HIV or Hepatitis B, n=2"
    words = np.array([[0, 3], [4, 6], [7, 16], [17, 18], [18, 19], [20, 21], [21, 22], [22, 23]])
    n = len(words) + 2
    example = Example(
        "doc", 1, 0, 0, text, np.arange(n, dtype=np.int32) + 100, np.zeros((n, 2), np.int32),
        words.astype(np.int32), np.arange(1, n - 1, dtype=np.int32), (), (),
    )  # fmt: skip
    batcher = Batcher([example], (16,), batch_size=1)
    batch = batcher.build(batcher.eval_plan()[0])
    want = ["upper", "lower", "title", "title", "other", "lower", "other", "number"]
    assert [CASINGS[c] for c in batch["word_casing"][0]] == want + ["none"] * 8


def test_process_slices_partition_the_global_batch(examples):
    batcher = Batcher(examples, BOUNDARIES, batch_size=16, seed=1)
    plan = batcher.epoch_plan(0)
    full = list(batcher.iterate(plan))
    parts = [list(batcher.iterate(plan, process_index=p, process_count=4)) for p in range(4)]
    for step, batch in enumerate(full):
        for key, value in batch.items():
            joined = np.concatenate([parts[p][step][key] for p in range(4)])
            np.testing.assert_array_equal(joined, value, err_msg=key)
    resumed = list(batcher.iterate(plan, start_step=5))
    np.testing.assert_array_equal(resumed[0]["input_ids"], full[5]["input_ids"])
    with pytest.raises(ValueError, match="not divisible"):
        batcher.local_rows(0, 3)


def test_padding_stats(examples):
    batcher = Batcher(examples, BOUNDARIES, 16)
    stats = padding_stats(batcher, batcher.eval_plan())
    assert stats["real_tokens"] == sum(ex.length for ex in examples)
    assert stats["padded_slots"] == sum(p.length * 16 for p in batcher.eval_plan())
    assert stats["real_token_fraction"] + stats["padding_waste"] == pytest.approx(1)
    assert stats["fixed_padding_waste"] > stats["padding_waste"]


def test_config_is_locked_and_overridable_by_environment(monkeypatch):
    config = default.get_config()
    assert config.num_epochs == 20 and config.data.batch_size == 32
    assert config.optim.learning_rate == 2e-5 and config.data.max_length == 128
    assert config.model.ner_label_embedding_dim == 16
    with pytest.raises(AttributeError):
        config.data.bukcet_boundaries = (8,)
    from configs import minilm_m2

    monkeypatch.setenv("JOINTRE_DATA_DIR", "/data/elsewhere")
    monkeypatch.setenv("JOINTRE_ENCODER", "bert-base-uncased")
    config = minilm_m2.get_config()
    assert (config.data.dir, config.model.encoder) == ("/data/elsewhere", "bert-base-uncased")
    monkeypatch.delenv("JOINTRE_DATA_DIR")
    assert minilm_m2.get_config().data.dir.endswith("shared/data/chia")
