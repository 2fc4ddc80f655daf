"""Training regularisers of ``runtime``: the moving average of the parameters
(``optim.ema_decay``) and adversarial training on the word embeddings
(``model.adversarial_epsilon``, with ``model.adversarial_consistency``), each against its
formula, and an EMA run's scores from
``evaluate`` equal to its training's."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.training import train_state

from configs import default
from jointre_jax import checkpoints, inference, optim, runtime, steps, train, validation
from jointre_jax import state as state_lib
from jointre_jax.data.batching import Batcher
from jointre_jax.errors import UserError
from jointre_jax.model.losses import LossOptions, loss_terms, total_loss
from tests.test_train import assert_evaluate_matches_training, tiny_model, tiny_train_config


def tiny_state(tmp_path, decoder="span", **optim):
    """(config, model, state, options, batches) of a tiny joint run on one device."""
    config = tiny_train_config(tmp_path, epochs=1, decoder=decoder, packing=False)
    config.num_devices = 1
    for key, value in optim.items():
        config.optim[key] = value
    encoder, data, model = tiny_model(config)
    mesh = runtime.make_mesh(config)
    state = state_lib.create_state(config, model, None, 10, mesh)
    batcher = Batcher(data.examples, (16, 128), 4, scheme=encoder.scheme)
    batches = [batcher.build(p) for p in batcher.epoch_plan(0)]
    options = runtime.loss_options(config, encoder.scheme)
    return config, model, state, options, batches, mesh


def state_leaves(state):
    """The parameters and optimiser moments of ``state`` (the moments hold the gradients)."""
    return jax.tree.leaves((state.params, state.opt_state))


def largest_difference(leaves, other) -> float:
    """The largest absolute difference between two equal-shaped lists of arrays."""
    pairs = zip(leaves, other, strict=True)
    return max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in pairs)


def numpy_tree(tree):
    return jax.tree.map(lambda x: np.array(x, np.float64), tree)


def test_ema_params_follow_their_formula(tmp_path):
    decay = 0.6
    config, model, state, options, batches, mesh = tiny_state(tmp_path, ema_decay=decay)
    assert state_lib.eval_params(state) is state.ema_params
    expected = numpy_tree(state.params)  # the average starts at the initial parameters
    step_fn = steps.jit_train_step(mesh, state, options)
    rng = jax.random.key(0)
    for t in range(1, 5):
        state, _ = step_fn(state, batches[(t - 1) % len(batches)], rng)
        d = min(decay, (1 + t) / (state_lib.EMA_WARMUP + t))
        params = numpy_tree(state.params)
        expected = jax.tree.map(lambda e, p: d * e + (1 - d) * p, expected, params)  # noqa: B023
    average = jax.tree.leaves(state.ema_params)
    for e, a in zip(jax.tree.leaves(expected), average, strict=True):
        np.testing.assert_allclose(np.asarray(a), e, rtol=1e-5, atol=1e-6)
    assert largest_difference(average, jax.tree.leaves(state.params)) > 1e-4  # it lags them


def test_without_ema_checkpoints_keep_their_layout(tmp_path):
    """A run without the average restores checkpoints of flax's own TrainState (what every run
    saved before the average existed), and resumes them."""
    config, model, state, options, batches, mesh = tiny_state(tmp_path)
    assert state_lib.eval_params(state) is state.params
    old = train_state.TrainState(step=state.step, apply_fn=state.apply_fn, params=state.params,
                                 tx=state.tx, opt_state=state.opt_state)  # fmt: skip
    manager = checkpoints.checkpoint_manager(tmp_path / "ckpt")
    checkpoints.save(manager, 0, old, {"best_metric": None})
    restored, meta = checkpoints.restore(manager, state)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(old), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    config = default.get_config()
    config.optim.ema_decay = 1.0
    with pytest.raises(UserError, match="--config.optim.ema_decay=1.0: must be in"):
        validation.validate(config)


def test_perturbation_moves_each_word_embedding_table_by_epsilon(tmp_path):
    config, model, state, options, batches, mesh = tiny_state(tmp_path, decoder="bio")
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), state.params)
    moved = steps.perturb_word_embeddings(state.params, grads, 0.25)
    tables = 0
    for path, before in jax.tree_util.tree_leaves_with_path(state.params):
        keys = optim.path_keys(path)
        after = moved
        for k in keys:
            after = after[k]
        delta = np.asarray(after) - np.asarray(before)
        if keys[1:] == steps.WORD_EMBEDDINGS:
            tables += 1
            assert np.linalg.norm(delta) == pytest.approx(0.25, rel=1e-5)  # along g: all equal
            assert np.ptp(delta) < 1e-7 and delta.flat[0] > 0
        else:
            assert not delta.any(), keys
    assert tables == 1


@pytest.mark.parametrize("decoder,consistency", [("bio", 0.0), ("span", 0.0), ("span", 3.0)])
def test_adversarial_step_adds_the_gradient_at_the_moved_embeddings(tmp_path, decoder, consistency):
    config, model, state, options, batches, mesh = tiny_state(tmp_path, decoder=decoder)
    epsilon, batch, rng = 0.5, batches[0], jax.random.key(3)
    key = jax.random.fold_in(rng, state.step)

    def loss(params, dropout_key, reference=None):  # from the model and the loss module
        outputs = model.apply(
            {"params": params}, batch, deterministic=False, label_source="gold",
            tables=(options.re_table,), rngs={"dropout": dropout_key},
        )  # fmt: skip
        value = total_loss(loss_terms(outputs, batch, options), options.ner_loss_weight,
                           options.re_loss_weight)  # fmt: skip
        logits = outputs["ner_logits"]
        if reference is not None:  # KL(p_clean || p_adversarial), written out
            p = jax.nn.softmax(reference)
            kl = jnp.sum(p * (jnp.log(p) - jax.nn.log_softmax(logits)), axis=-1)
            if decoder == "span":
                mask = options.scheme.span_mask(batch["word_mask"], batch.get("word_segment"))
            value += consistency * jnp.sum(kl * mask) / jnp.sum(mask)
        return value, logits

    # The reference is compiled too: op by op, the backward pass of even the tiny model takes
    # minutes on a 2-core CI machine.
    grad = jax.jit(jax.grad(loss, has_aux=True))
    apply = jax.jit(lambda state, grads: state.apply_gradients(grads=grads))
    clean, logits = grad(state.params, key)
    table = clean["encoder"]["embeddings"]["word_embeddings"]["embedding"]
    moved = jax.tree.map(lambda x: x, state.params)
    words = moved["encoder"]["embeddings"]["word_embeddings"]
    words["embedding"] = words["embedding"] + epsilon * table / jnp.linalg.norm(table)
    reference = logits if consistency else None
    adversarial, _ = grad(moved, jax.random.fold_in(key, 1), reference)
    expected = apply(state, jax.tree.map(jnp.add, clean, adversarial))
    plain = apply(state, clean)
    step = jax.jit(steps.train_step, static_argnames="options")
    adv_options = dataclasses.replace(
        options, adversarial_epsilon=epsilon, adversarial_consistency=consistency
    )
    new, metrics = step(state, batch, rng, options=adv_options)
    assert float(metrics["loss"]) == pytest.approx(float(loss(state.params, key)[0]), rel=1e-5)
    for a, b in zip(state_leaves(new), state_leaves(expected), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-7)
    # the adversarial gradient changed the step
    assert largest_difference(state_leaves(expected), state_leaves(plain)) > 1e-6
    if consistency:  # and the consistency term changed it again
        fgm_only = dataclasses.replace(adv_options, adversarial_consistency=0.0)
        without = step(state, batch, rng, options=fgm_only)[0]
        assert largest_difference(state_leaves(new), state_leaves(without)) > 1e-6
    with pytest.raises(ValueError, match="adversarial_epsilon"):
        LossOptions(adversarial_epsilon=-1.0)
    with pytest.raises(ValueError, match="adversarial_consistency"):
        LossOptions(adversarial_consistency=1.0)  # needs the adversarial pass
    config.model.method, config.model.adversarial_consistency = "re", 1.0
    config.model.adversarial_epsilon = 1.0
    with pytest.raises(UserError, match="a standalone RE model"):  # no NER distributions
        validation.validate(config)


def test_an_ema_run_is_scored_and_restored_with_its_average(tmp_path):
    config = tiny_train_config(tmp_path, epochs=8, decoder="span")
    config.optim.ema_decay = 0.9
    config.model.adversarial_epsilon = 0.1
    trained = train.train_and_evaluate(config, tmp_path / "run")
    assert_evaluate_matches_training(tmp_path, trained)  # both with the average
    best = tmp_path / "run" / "best"
    folder = best / str(checkpoints.steps(best)[0])
    _, predictor, _ = inference.load_run(tmp_path / "run")
    params = checkpoints.restore_params(folder, predictor.params, "params")
    average = checkpoints.restore_params(folder, predictor.params, "ema_params")
    for a, b in zip(jax.tree.leaves(predictor.params), jax.tree.leaves(average), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # inference reads the EMA
    assert any(  # which is not the parameters themselves
        not np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(average), strict=True)
    )
