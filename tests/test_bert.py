"""The Flax BERT encoder: FlaxBertModel's layout and outputs, weight conversion and merging."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jointre_jax.model.bert import BertConfig, BertModel
from jointre_jax.model.pretrained import convert_pytorch_state, load_weights, merge_pretrained
from tests.conftest import MINILM_DIR, needs_chia

transformers = pytest.importorskip("transformers")


def inputs(vocab, batch=2, length=12, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab, (batch, length)).astype(np.int32)
    mask = np.arange(length)[None, :] < rng.integers(length // 2, length + 1, (batch, 1))
    mask[0] = True
    return ids, mask


def shapes(tree):
    return {"/".join(k): tuple(v.shape) for k, v in traverse_util.flatten_dict(tree).items()}


def our_outputs(directory, config, ids, mask):
    model = BertModel(config, add_pooling_layer=True)
    params = model.init(jax.random.key(1), jnp.asarray(ids), jnp.asarray(mask))["params"]
    params = merge_pretrained(params, load_weights(directory), prefix=())
    hidden, _ = model.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask))
    return params, np.asarray(hidden)


def test_flax_checkpoint_layout_and_outputs_match_transformers(tmp_path):
    hf_config = transformers.BertConfig(
        vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64,
    )  # fmt: skip
    reference = transformers.FlaxBertModel(hf_config, seed=3)
    reference.save_pretrained(tmp_path)  # flax_model.msgpack + config.json
    config = BertConfig.from_json(tmp_path / "config.json")
    ids, mask = inputs(97)
    params, ours = our_outputs(tmp_path, config, ids, mask)
    assert shapes(params) == shapes(reference.params)
    expected = reference(input_ids=ids, attention_mask=mask.astype(np.int32)).last_hidden_state
    np.testing.assert_allclose(ours[mask], np.asarray(expected)[mask], atol=1e-5)


@needs_chia
def test_minilm_safetensors_matches_flax_bert_model():
    config = BertConfig.from_json(MINILM_DIR / "config.json")
    ids, mask = inputs(config.vocab_size, batch=3, length=24)
    params, ours = our_outputs(MINILM_DIR, config, ids, mask)
    reference = transformers.FlaxBertModel.from_pretrained(str(MINILM_DIR), from_pt=True)
    assert shapes(params) == shapes(reference.params)
    expected = reference(input_ids=ids, attention_mask=mask.astype(np.int32)).last_hidden_state
    assert np.abs(ours[mask] - np.asarray(expected)[mask]).max() < 1e-4


def test_convert_pytorch_names():
    state = {
        "bert.embeddings.word_embeddings.weight": np.zeros((10, 4)),
        "bert.embeddings.LayerNorm.gamma": np.ones(4),
        "bert.embeddings.LayerNorm.beta": np.zeros(4),
        "bert.embeddings.position_ids": np.arange(8)[None],
        "bert.encoder.layer.0.attention.self.query.weight": np.arange(12.0).reshape(3, 4),
        "bert.encoder.layer.0.attention.self.query.bias": np.zeros(3),
        "cls.predictions.bias": np.zeros(10),
    }
    flat = convert_pytorch_state(state)
    assert set(flat) == {
        ("embeddings", "word_embeddings", "embedding"),
        ("embeddings", "LayerNorm", "scale"),
        ("embeddings", "LayerNorm", "bias"),
        ("encoder", "layer", "0", "attention", "self", "query", "kernel"),
        ("encoder", "layer", "0", "attention", "self", "query", "bias"),
    }
    kernel = flat[("encoder", "layer", "0", "attention", "self", "query", "kernel")]
    np.testing.assert_array_equal(kernel, np.arange(12.0).reshape(3, 4).T)


def test_merge_keeps_new_heads_and_fails_loudly():
    params = {
        "encoder": {"a": {"kernel": np.zeros((2, 3), np.float32)}},
        "ner_head": {"kernel": np.full((3, 5), 7, np.float32)},
    }
    merged = merge_pretrained(params, {("a", "kernel"): np.ones((2, 3))})
    assert merged["encoder"]["a"]["kernel"].dtype == np.float32
    assert (merged["encoder"]["a"]["kernel"] == 1).all() and (
        merged["ner_head"]["kernel"] == 7
    ).all()
    with pytest.raises(ValueError, match=r"a/kernel: \(3, 2\) vs model \(2, 3\)"):
        merge_pretrained(params, {("a", "kernel"): np.ones((3, 2))})
    with pytest.raises(ValueError, match="missing a/kernel"):
        merge_pretrained(params, {("b", "kernel"): np.ones((2, 3))})
