"""Knowledge distillation of the span decoder: a teacher's span distributions as soft targets.

A *teacher* (one trained run, or an ensemble of runs of one config: the mean of their span
class probabilities, as :func:`jointre_jax.steps.predict_step` decodes them) reads every
criterion of the training split once; ``python -m jointre_jax.tools.teach`` writes what it predicts
for each candidate span to a file (:func:`save_teacher`). A *student* run names that file
(``data.teacher_file``) and a weight w (``model.distillation_weight``): the target of each
span in its NER loss is then ``(1 - w) * gold + w * teacher`` (the gold target after boundary
smoothing; which negatives a step counts is drawn from the gold alone), the knowledge
distillation of Hinton et al. (2015) at temperature 1, from an ensemble
(ensemble distillation, as in Kim and Rush 2016 for sequences). The relation loss is
unchanged.

The file holds, for example i of the split (w_i words, W = ``model.max_span_width``, C = span
classes):

* ``probs`` float16 [sum w_i, W, C]: the examples' tables one after the other (example i's
  w_i rows follow those of the examples before it), row s column k the distribution of
  the span from word s to word s + k (inclusive); spans past the last word hold zeros;
* ``words`` int32 [n]: w_i; ``fingerprints`` [n] str: a digest of each example's document,
  line, window and word offsets, so a student whose examples differ (another tokenizer,
  split, window size) is refused with the first example that differs.
"""

from __future__ import annotations

import hashlib
import pathlib
from collections.abc import Sequence

import jax
import numpy as np
from tqdm import tqdm

from jointre_jax import parallel, runtime, steps
from jointre_jax.data.encode import Example
from jointre_jax.errors import UserError
from jointre_jax.labels import span_table
from jointre_jax.model.joint import JointModel


def fingerprint(example: Example) -> str:
    """A short digest of what places an example's spans: document, line, window, words."""
    words = np.asarray(example.words, np.int64).tobytes()
    key = f"{example.doc_id}\0{example.line}\0{example.window}\0".encode() + words
    return hashlib.sha1(key).hexdigest()[:16]


def mean_span_probs(params, batch, *, model: JointModel):
    """float32 [B, L, L, C]: the members' mean span class probabilities of a batch."""
    members = params if isinstance(params, tuple) else (params,)
    logits = [
        model.apply({"params": p}, batch, method=JointModel.encode)["ner_logits"] for p in members
    ]
    return jax.nn.softmax(steps.mean_log_probs(logits).astype(np.float32), -1)


def teacher_span_probs(
    predictor, examples: Sequence[Example], desc: str | None = "teacher"
) -> list[np.ndarray]:
    """The span distributions of a predictor's model (or ensemble) for every example, in
    order: float16 [w_i, W, C] each (:func:`span_table`)."""
    model = predictor.model
    if not model.scheme.scores_spans:
        raise UserError("a teacher must be a span-decoder run (model.ner_decoder='span')")
    width = int(model.scheme.max_width)
    step = jax.jit(lambda p, b: mean_span_probs(p, b, model=model))
    batcher = predictor.batcher(examples)
    sharding = parallel.batch_sharding(parallel.params_mesh(predictor.params))
    tables: list[np.ndarray | None] = [None] * len(examples)
    for planned in tqdm(batcher.eval_plan(), desc=desc, leave=False, disable=desc is None):
        batch = parallel.global_batch(runtime.host_rows(batcher, planned), sharding)
        probs = np.asarray(jax.device_get(step(predictor.params, batch)))
        for place in batcher.example_offsets(planned):
            n, at = examples[place.index].num_words, place.words
            block = probs[place.row, at : at + n, at : at + n]
            tables[place.index] = span_table(block, n, width)
    missing = [i for i, t in enumerate(tables) if t is None]
    if missing:  # every example sits in some row of the plan; this would be a bug
        raise RuntimeError(f"{len(missing)} examples were not predicted, e.g. {missing[:3]}")
    return tables


def save_teacher(path, examples: Sequence[Example], tables: Sequence[np.ndarray], **meta):
    """Writes the tables of ``examples`` (:func:`teacher_span_probs`) to ``path`` (.npz);
    ``meta``: strings kept beside them (e.g. the teacher runs)."""
    words = np.array([t.shape[0] for t in tables], np.int32)
    empty = np.zeros((0, *tables[0].shape[1:]), np.float16) if tables else np.zeros((0, 0, 0))
    probs = np.concatenate(tables) if len(tables) else empty
    prints = np.array([fingerprint(ex) for ex in examples])
    np.savez(path, probs=probs, words=words, fingerprints=prints, **{
        f"meta_{k}": np.array(str(v)) for k, v in meta.items()
    })  # fmt: skip


def load_teacher(path, examples: Sequence[Example], scheme) -> list[np.ndarray]:
    """The teacher tables of ``examples`` from ``path``, checked against them: a UserError
    naming the file and the first example that differs, or the width or classes that
    differ from ``scheme``'s."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no teacher file (write one with jointre teach)")
    with np.load(path) as data:
        probs, words, prints = data["probs"], data["words"], data["fingerprints"]
    if len(words) != len(examples):
        raise UserError(
            f"{path}: {len(words)} examples, but the training split has {len(examples)} "
            "(another split, or max_train_examples)"
        )
    expected = (int(scheme.max_width), int(scheme.num_classes))
    if tuple(probs.shape[1:]) != expected:
        raise UserError(
            f"{path}: span tables of width x classes {tuple(probs.shape[1:])}, but this model "
            f"has {expected} (model.max_span_width, entity types + 1)"
        )
    for i, ex in enumerate(examples):
        if prints[i] != fingerprint(ex) or words[i] != ex.num_words:
            raise UserError(
                f"{path}: example {i} ({ex.doc_id}, line {ex.line}, window {ex.window}) is not "
                "the one the teacher read: the teacher ran on other data, another tokenizer "
                "or other data.max_length / context_length"
            )
    offsets = np.concatenate([[0], np.cumsum(words, dtype=np.int64)])
    return [probs[offsets[i] : offsets[i + 1]] for i in range(len(words))]


def teacher_tables(config, examples: Sequence[Example], scheme) -> list[np.ndarray] | None:
    """The teacher's span tables of the training ``examples`` when ``config`` distils
    (``model.distillation_weight`` > 0 with ``data.teacher_file``: both or neither, as
    :func:`jointre_jax.validation.validate` checks), else None."""
    path = str(config.data.teacher_file)
    return load_teacher(path, examples, scheme) if path else None
