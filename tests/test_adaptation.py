"""Task-adaptive pretraining (jointre_jax.adaptation, jointre_jax.tools.adapt): whole-word targets,
the masked-LM head against its formula, a frozen encoder while a fresh head learns, the loss
falling on the tiny corpus, an exported folder that loads as an encoder, and resume equality."""

import functools
import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util
from safetensors.numpy import save_file

from jointre_jax import adaptation
from jointre_jax import state as state_lib
from jointre_jax.adaptation import MaskedLM, adapt_encoder, choose_targets, pretrained_head
from jointre_jax.errors import UserError
from jointre_jax.model.bert import BertConfig, BertModel
from jointre_jax.model.pretrained import load_weights, merge_pretrained
from tests.conftest import TINY_BERT, override_flags
from tests.test_train import tiny_model, tiny_train_config


def host_batch():
    """Two rows of 12 wordpieces: row 0 two criteria (words of 1, 2, 1 | 3, 1 wordpieces),
    row 1 empty."""
    ids = np.zeros((2, 12), np.int32)
    ids[0, :11] = [2, 10, 11, 12, 13, 3, 2, 14, 15, 16, 17]
    mask = ids > 0
    words = np.zeros((2, 6), np.int32)
    ends = np.zeros((2, 6), np.int32)
    words[0, :5], ends[0, :5] = [1, 2, 4, 7, 10], [1, 3, 4, 9, 10]
    return {
        "input_ids": ids,
        "input_mask": mask,
        "segment_ids": mask.astype(np.int32),
        "position_ids": np.zeros_like(ids),
        "word_index": words,
        "word_end_index": ends,
        "word_mask": np.arange(6)[None, :] < np.array([[5], [0]]),
    }


def test_targets_are_whole_words_within_the_budget_and_replaced_80_10_10():
    batch = host_batch()
    spans = [
        set(range(a, b + 1))
        for a, b in zip(batch["word_index"][0][:5], batch["word_end_index"][0][:5], strict=True)
    ]
    kinds = np.zeros(3)
    for seed in range(300):
        out = choose_targets(batch, np.random.default_rng(seed), 0.3, 4, 100, 1)
        again = choose_targets(batch, np.random.default_rng(seed), 0.3, 4, 100, 1)
        assert all(np.array_equal(out[k], again[k]) for k in out)  # a function of the rng
        n = int(out["target_weight"][0].sum())
        taken = set(out["target_index"][0, :n].tolist())
        assert 1 <= n <= max(round(0.3 * 11), 3)  # the budget, or the first word if wider
        assert taken == set().union(*[s for s in spans if s & taken])  # whole words only
        assert out["target_weight"][1].sum() == 0  # an empty row predicts nothing
        wanted = batch["input_ids"][0, out["target_index"][0, :n]]
        assert np.array_equal(out["target_ids"][0, :n], wanted)  # the original wordpieces
        original = batch["input_ids"][0, out["target_index"][0, :n]]
        now = out["input_ids"][0, out["target_index"][0, :n]]
        kinds += [np.sum(now == 1), np.sum((now != 1) & (now != original)), np.sum(now == original)]
        untouched = np.setdiff1d(np.arange(12), list(taken))
        assert np.array_equal(out["input_ids"][0, untouched], batch["input_ids"][0, untouched])
    share = kinds / kinds.sum()  # random draws can hit the original or [MASK]: about 80/10/10
    assert share[0] == pytest.approx(0.8, abs=0.04) and share[2] == pytest.approx(0.1, abs=0.04)


def test_masked_lm_logits_are_the_head_on_bert_output_times_the_tied_table():
    config = BertConfig.from_dict(TINY_BERT | {"vocab_size": 40})
    batch = {k: jnp.asarray(v) for k, v in host_batch().items()}
    batch["target_index"] = jnp.array([[1, 3, 8], [0, 0, 0]], jnp.int32)
    model = MaskedLM(config)
    params = model.init(jax.random.key(0), batch)["params"]
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(1), p.shape), params)
    got = model.apply({"params": params}, batch)
    hidden = BertModel(config).apply(
        {"params": params["encoder"]},
        batch["input_ids"],
        batch["input_mask"],
        segment_ids=batch["segment_ids"],
        position_ids=batch["position_ids"],
    )
    chosen = jnp.take_along_axis(hidden, batch["target_index"][..., None], axis=1)
    h = chosen @ params["transform"]["kernel"] + params["transform"]["bias"]
    h = jax.nn.gelu(h, approximate=False)
    h = (h - h.mean(-1, keepdims=True)) / jnp.sqrt(h.var(-1, keepdims=True) + 1e-12)
    h = h * params["transform_norm"]["scale"] + params["transform_norm"]["bias"]
    table = params["encoder"]["embeddings"]["word_embeddings"]["embedding"]
    want = h @ table.T + params["output_bias"]
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-5)


def test_a_checkpoints_masked_lm_head_is_read_in_the_modules_layout(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {
        "cls.predictions.transform.dense.weight": rng.normal(size=(4, 3)).astype(np.float32),
        "cls.predictions.transform.dense.bias": rng.normal(size=4).astype(np.float32),
        "cls.predictions.transform.LayerNorm.gamma": rng.normal(size=4).astype(np.float32),
        "cls.predictions.transform.LayerNorm.beta": rng.normal(size=4).astype(np.float32),
        "cls.predictions.bias": rng.normal(size=7).astype(np.float32),
    }
    save_file(tensors, str(tmp_path / "model.safetensors"))
    head = pretrained_head(tmp_path)
    np.testing.assert_array_equal(
        head["transform"]["kernel"], tensors["cls.predictions.transform.dense.weight"].T
    )
    assert np.array_equal(
        head["transform_norm"]["scale"], tensors["cls.predictions.transform.LayerNorm.gamma"]
    )
    assert np.array_equal(head["output_bias"], tensors["cls.predictions.bias"])
    save_file(
        {"bert.pooler.dense.bias": tensors["cls.predictions.bias"]},
        str(tmp_path / "model.safetensors"),
    )
    assert pretrained_head(tmp_path) is None  # a sentence-transformer model: a fresh head


def adapt_config(tmp_path: pathlib.Path):
    """The tiny corpus with a 'pre-trained' tiny encoder: random weights saved in its folder."""
    config = tiny_train_config(tmp_path)
    config.model.pretrained = True
    folder = pathlib.Path(config.model.encoder)
    bert = BertConfig.from_json(folder / "config.json")
    dummy = (jnp.zeros((1, 4), jnp.int32), jnp.ones((1, 4), bool))
    params = BertModel(bert).init(jax.random.key(7), *dummy)["params"]
    from flax import serialization

    (folder / "flax_model.msgpack").write_bytes(serialization.msgpack_serialize(params))
    return config, params


def flat(tree) -> dict:
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}


def test_the_encoder_starts_adam_afresh_when_it_first_moves():
    """Frozen steps give the encoder zero updates, keep its gradient out of the clip and leave
    its Adam state alone: its first real update is a fresh Adam's (1 x the learning rate for a
    steady gradient), not one bias-corrected for the frozen steps (1.35 x after 200)."""
    schedule = optax.constant_schedule(1.0)
    tx = adaptation.adaptation_optimizer(schedule, weight_decay=0.0, head_steps=200)
    params = {"encoder": {"w": jnp.ones(3)}, "head": {"w": jnp.ones(3)}}
    state = tx.init(params)
    step = jax.jit(tx.update)
    head_alone = None
    for i in range(201):
        grads = {"encoder": {"w": jnp.full(3, 0.5)}, "head": {"w": jnp.full(3, 0.25)}}
        if i < 200:  # a huge encoder gradient must not shrink the head's through the clip
            grads["encoder"]["w"] = jnp.full(3, 1e6)
        updates, state = step(grads, state, params)
        if i == 0:
            head_alone = updates["head"]["w"]
        if i < 200:
            np.testing.assert_array_equal(updates["encoder"]["w"], 0.0)
    np.testing.assert_allclose(head_alone, -1.0, rtol=1e-5)  # a fresh Adam step of size 1
    np.testing.assert_allclose(updates["encoder"]["w"], -1.0, rtol=1e-5)
    plain = optax.scale_by_adam()  # the correction for 200 steps without a gradient
    moments = plain.init(params["encoder"])
    for i in range(201):
        g = {"w": jnp.full(3, 0.5 if i == 200 else 0.0)}
        late, moments = plain.update(g, moments)
    assert float(late["w"][0]) == pytest.approx(1.35, abs=0.01)


def test_the_encoder_stays_frozen_while_a_fresh_head_learns(tmp_path):
    config, source = adapt_config(tmp_path)
    out = tmp_path / "adapted"
    summary = adapt_encoder(
        config, out, epochs=1, learning_rate=3e-3, batch_size=2, head_steps=10_000
    )
    assert summary["steps"] > 0
    adapted, before = load_weights(out), flat(source)
    for key in before:
        np.testing.assert_array_equal(adapted[key], before[key])


def test_a_killed_adaptation_resumes_to_the_same_encoder(tmp_path, monkeypatch):
    config, _ = adapt_config(tmp_path)
    kwargs = dict(epochs=3, learning_rate=3e-3, batch_size=2, head_steps=1, checkpoint_every=1)
    whole = adapt_encoder(config, tmp_path / "whole", **kwargs)
    real, calls = adaptation.choose_targets, []

    def dies_in_the_second_epoch(*args, **kw):  # after its first step's checkpoint
        calls.append(1)
        if len(calls) == whole["steps_per_epoch"] + 2:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(adaptation, "choose_targets", dies_in_the_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        adapt_encoder(config, tmp_path / "killed", **kwargs)
    assert not (tmp_path / "killed" / "flax_model.msgpack").exists()
    monkeypatch.setattr(adaptation, "choose_targets", real)
    resumed = adapt_encoder(config, tmp_path / "killed", **kwargs)
    assert resumed["epoch_losses"] == pytest.approx(whole["epoch_losses"], rel=1e-6)
    assert resumed["heldout_losses"] == pytest.approx(whole["heldout_losses"], rel=1e-6)
    a, b = load_weights(tmp_path / "whole"), load_weights(tmp_path / "killed")
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-6, atol=1e-7)
    with pytest.raises(UserError, match="other settings"):  # another schedule: no resuming
        adapt_encoder(config, tmp_path / "killed", **{**kwargs, "epochs": 4})


def test_the_adaptation_splits_its_rows_and_parameters_over_the_devices(tmp_path):
    """One device, or two holding half the rows and half of every large array (FSDP): the same
    steps, losses and encoder."""
    config, _ = adapt_config(tmp_path)
    kwargs = dict(epochs=2, learning_rate=3e-3, batch_size=4, head_steps=1)
    one = adapt_encoder(config, tmp_path / "one", **kwargs)
    config.num_devices, config.sharding.fsdp, config.sharding.fsdp_min_size = 2, 2, 256
    two = adapt_encoder(config, tmp_path / "two", **kwargs)
    assert (one["devices"], two["devices"]) == (1, 2)
    assert two["rows_per_step"] == one["rows_per_step"] == 2  # the same batches, split
    assert two["steps"] == one["steps"] > 2
    assert two["epoch_losses"] == pytest.approx(one["epoch_losses"], rel=1e-5)
    assert two["heldout_losses"] == pytest.approx(one["heldout_losses"], rel=1e-5)
    a, b = load_weights(tmp_path / "one"), load_weights(tmp_path / "two")
    assert any(v.size >= 256 for v in a.values())  # some arrays were split
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=1e-6, err_msg=str(key))


def test_the_cli_adapts_lowers_the_loss_and_exports_an_encoder_folder(tmp_path):
    config, source = adapt_config(tmp_path)
    out = tmp_path / "adapted"
    flags = [
        "--config=configs/default.py",
        *override_flags(config),
        f"--out={out}",
        "--epochs=12",
        "--learning_rate=3e-3",
        "--batch_size=2",
        "--mask_rate=0.3",
        "--head_steps=2",
        "--config.data.pack_length=12",  # the tiny config's rows: several steps an epoch
        "--config.data.max_length=12",
        "--config.num_devices=1",  # rows of 4 devices would take the tiny split in one step
    ]
    done = subprocess.run(
        [sys.executable, "-m", "jointre_jax.tools.adapt", *flags],
        cwd=pathlib.Path(__file__).parents[1],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    printed = json.loads(done.stdout.strip().splitlines()[-1])
    summary = json.loads((out / "adaptation.json").read_text())
    losses = summary["epoch_losses"]
    assert printed["out"] == str(out) and printed["steps"] == summary["steps"]
    assert len(losses) == 12 and losses[-1] < 0.8 * losses[0], losses
    heldout = summary["heldout_losses"]  # the eval split's criteria, the same masks each epoch
    assert summary["heldout_split"] == config.data.eval_split and len(heldout) == 12
    assert heldout[-1] < 0.9 * heldout[0], heldout
    assert summary["fresh_head"] and summary["steps"] == 12 * summary["steps_per_epoch"] > 12
    for name in ("config.json", "vocab.txt"):
        assert (out / name).read_bytes() == (pathlib.Path(config.model.encoder) / name).read_bytes()
    adapted, before = load_weights(out), flat(source)
    assert adapted.keys() == before.keys()  # an encoder folder: FlaxBertModel's layout
    assert any(not np.allclose(adapted[k], before[k]) for k in before)  # the encoder moved
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == list(range(1, 13))
    # The folder is an encoder for training: its tokenizer reads the corpus, its weights fill
    # the joint model's encoder.
    config.model.encoder = str(out)
    _, _, model = tiny_model(config)
    abstract = jax.eval_shape(functools.partial(state_lib.init_params, model), jax.random.key(0))
    merged = flat(merge_pretrained(abstract, adapted)["encoder"])
    assert merged.keys() == adapted.keys()
    assert all(np.array_equal(merged[k], adapted[k]) for k in adapted)
    config.model.pretrained = False  # a user error (cli.run prints it as one line)
    with pytest.raises(UserError, match="needs its pre-trained weights"):
        adapt_encoder(config, tmp_path / "bad", epochs=1, learning_rate=1e-3)
