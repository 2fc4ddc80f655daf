"""The jitted steps: ``train_step`` and ``predict_step``, pure and module-level.

* ``train_step(state, batch, rng, *, options)``: one optimiser step; the loss options
  (:class:`~jointre_jax.model.losses.LossOptions`) are bound with ``functools.partial``. It is
  jitted once per batch shape with explicit shardings (:func:`jit_step`: batch split over
  every device; state replicated, or FSDP-sharded with ``config.sharding.fsdp`` > 1, see
  :mod:`jointre_jax.parallel`) and ``donate_argnums=0``; dropout keys are
  ``fold_in(rng, state.step)``.
* ``predict_step(params, batch)`` decodes entities and scores their relations on the device
  (:mod:`jointre_jax.predictor` turns its arrays into entities and relations of examples),
  for one model or an ensemble (a tuple of parameters: mean probabilities).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from jointre_jax import parallel
from jointre_jax.labels import decide, gold_as_decoded, gold_table
from jointre_jax.model.joint import JointModel
from jointre_jax.model.losses import LossOptions, loss_terms, ner_consistency, total_loss
from jointre_jax.optim import ENCODERS, path_keys
from jointre_jax.state import TrainState

# Below an encoder: the word-embedding table that adversarial training perturbs.
WORD_EMBEDDINGS = ("embeddings", "word_embeddings", "embedding")


def perturb_word_embeddings(params, grads, epsilon: float):
    """``params`` with each encoder's word-embedding table E moved by ``epsilon * g / ||g||``
    (g: its gradient, ||g|| its Frobenius norm): the fast gradient method's adversarial
    direction (Miyato et al. 2017), the rest unchanged."""

    def move(path, p, g):
        keys = path_keys(path)
        if keys[0] in ENCODERS and keys[1:] == WORD_EMBEDDINGS:
            norm = jnp.sqrt(jnp.sum(jnp.square(g.astype(jnp.float32))))
            return p + (epsilon / jnp.maximum(norm, 1e-12)) * g
        return p

    return jax.tree_util.tree_map_with_path(move, params, grads)


def train_step(state: TrainState, batch: dict, rng: jax.Array, *, options: LossOptions):
    """One optimiser step.

    Args:
      state: the TrainState (donated).
      batch: arrays of ``data.batching`` for the global batch [B, L] (rows split over every device).
      rng: the run's base key; the step's dropout key is ``fold_in(rng, state.step)``.
      options: the loss's static options (bound with ``functools.partial``). With
        ``adversarial_epsilon`` > 0 the gradient is that of the loss plus that of the loss
        at the word embeddings moved in the adversarial direction
        (:func:`perturb_word_embeddings`; a second forward and backward pass, with another
        dropout key); with ``adversarial_consistency`` w > 0 too, that second loss adds
        w * :func:`~jointre_jax.model.losses.ner_consistency` of its NER logits against the
        first pass's. The metrics are those of the first.
    Returns:
      (new state, metrics: dict of scalar sums ``ner_loss_sum``, ``ner_count``,
      ``re_loss_sum``, ``re_pairs`` and the scalar ``loss``).
    """
    dropout_rng = jax.random.fold_in(rng, state.step)

    def loss_fn(params, key, reference=None):
        outputs = state.apply_fn(
            {"params": params},
            batch,
            deterministic=False,
            label_source=options.train_label_source,
            tables=(options.re_table,),
            rngs={"dropout": key},
        )
        terms = loss_terms(outputs, batch, options, jax.random.fold_in(key, 2))
        loss = total_loss(terms, options.ner_loss_weight, options.re_loss_weight)
        if reference is not None:
            consistency = ner_consistency(outputs["ner_logits"], reference, batch, options)
            loss = loss + options.adversarial_consistency * consistency
        return loss, (terms, outputs.get("ner_logits"))

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, (terms, ner_logits)), grads = grad_fn(state.params, dropout_rng)
    if options.adversarial_epsilon:
        moved = perturb_word_embeddings(state.params, grads, options.adversarial_epsilon)
        reference = ner_logits if options.adversarial_consistency else None
        _, adversarial = grad_fn(moved, jax.random.fold_in(dropout_rng, 1), reference)
        grads = jax.tree.map(jnp.add, grads, adversarial)
    return state.apply_gradients(grads=grads), {**terms, "loss": loss}


def mean_log_probs(logits: list) -> jax.Array:
    """Log of the members' mean class probabilities, from each member's logits [..., C]: what
    decoding reads as the ensemble's logits (its softmax is the mean). One member: its logits,
    unchanged."""
    if len(logits) == 1:
        return logits[0]
    probs = [jax.nn.softmax(x.astype(jnp.float32), -1) for x in logits]
    return jnp.log(sum(probs) / len(probs))


def predict_step(params, batch: dict, *, model: JointModel) -> dict:
    """Predictions of a batch (N = entity slots):

    * ``entities``: the decoded entity table (``start``, ``end``, ``type``, ``mask``,
      ``score`` [B, N], ``overflow`` [B]); the gold table for a model without NER;
    * with RE: ``re_labels`` int32 [B, N, N] (best relation label between decoded entities),
      ``re_probs`` float32 [B, N, N] (its probability), ``gold_re_labels`` int32 [B, N, N]
      (best label between the gold entities of the batch: RE among gold entities).

    ``params``: one model's parameters, or a tuple of several (an ensemble of runs of one
    config, e.g. seeds): each member encodes the batch; entities are decoded from the mean of
    their NER probabilities; each member scores the relations between those entities, and the
    decision reads the mean of their relation probabilities.
    """
    members = params if isinstance(params, tuple) else (params,)
    stages = [model.apply({"params": p}, batch, method=JointModel.encode) for p in members]
    has_re = model.method != "ner"
    ner_logits = None
    if model.method != "re":
        ner_logits = mean_log_probs([stage["ner_logits"] for stage in stages])
    if ner_logits is None:
        entities = gold_as_decoded(batch)
    else:
        entities = model.scheme.decode(
            ner_logits, batch["word_mask"], model.max_entities, batch.get("word_segment")
        )
    out = {"entities": entities}
    if has_re:
        labels = model.entity_labels(ner_logits, batch, "predicted")

        def relations(table):  # (label int32 [B, N, N], its probability): the mean's decision
            logits = [
                model.apply(
                    {"params": p},
                    stage["pair_words"],
                    table,
                    labels,
                    method=JointModel.relation_logits,
                )
                for p, stage in zip(members, stages, strict=True)
            ]
            probs = jax.nn.softmax(mean_log_probs(logits).astype(jnp.float32), -1)
            label, prob = decide(probs, model.scheme.threshold)
            return label.astype(jnp.int32), prob

        out["re_labels"], out["re_probs"] = relations(entities)
        out["gold_re_labels"] = relations(gold_table(batch))[0]
    return out


def jit_step(step_fn, mesh: Mesh, state):
    """``step_fn(state, batch, rng) -> (state, metrics)`` jitted with explicit shardings on
    ``mesh``: the state keeps its shardings and is donated, batches are split over every
    device, the key and the metrics are replicated. Training's step and the masked-LM
    adaptation's are both jitted here."""
    state_sharding = jax.tree.map(lambda x: x.sharding, state)
    return jax.jit(
        step_fn,
        in_shardings=(state_sharding, parallel.batch_sharding(mesh), parallel.replicated(mesh)),
        out_shardings=(state_sharding, parallel.replicated(mesh)),
        donate_argnums=0,
    )


def jit_train_step(mesh: Mesh, state, options: LossOptions):
    """``train_step`` with ``options`` bound, jitted by :func:`jit_step`."""
    return jit_step(functools.partial(train_step, options=options), mesh, state)


def jit_predict_step(mesh: Mesh, params, model: JointModel):
    """``predict_step(params, batch)`` of ``model`` jitted on ``mesh``; predictions come back
    replicated, so every process can read them."""
    param_sharding = jax.tree.map(lambda x: x.sharding, params)
    return jax.jit(
        functools.partial(predict_step, model=model),
        in_shardings=(param_sharding, parallel.batch_sharding(mesh)),
        out_shardings=parallel.replicated(mesh),
    )
