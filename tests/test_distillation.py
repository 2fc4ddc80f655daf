"""Knowledge distillation of the span decoder: the span tables' layout, their place in packed
rows, the distilled loss against its formula, the teacher file's checks, a teacher's tables
equal to what its model predicts, and a student trained from a file."""

import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jointre_jax import distillation, inference, train
from jointre_jax.data.corpus import load_split
from jointre_jax.data.packing import PackedBatcher
from jointre_jax.errors import UserError
from jointre_jax.labels import SpanScheme, place_span_table, span_table
from jointre_jax.model.losses import (
    LossOptions,
    loss_terms,
    ner_targets,
    sampled_negatives,
    smoothed_span_targets,
)
from tests.test_train import tiny_model, tiny_train_config

REPO = pathlib.Path(__file__).parents[1]


def random_tables(examples, width, classes, seed=0):
    """A random distribution for every span of each example, [w, W, C] (zeros past the end)."""
    rng = np.random.default_rng(seed)
    tables = []
    for ex in examples:
        n = ex.num_words
        block = rng.dirichlet(np.ones(classes), size=(n, n))
        tables.append(span_table(block, n, width))
    return tables


def test_a_span_table_reads_spans_by_start_and_width_and_places_back():
    n, width, classes = 5, 3, 4
    block = np.random.default_rng(1).random((n + 2, n + 2, classes))
    table = span_table(block, n, width)
    assert table.shape == (n, width, classes) and table.dtype == np.float16
    for s in range(n):
        for k in range(width):
            expected = block[s, s + k] if s + k < n else np.zeros(classes)
            np.testing.assert_allclose(table[s, k], expected, rtol=1e-3)
    row = np.zeros((10, 10, classes), np.float32)
    place_span_table(row, table, words=4)
    inside = [(4 + s, 4 + s + k) for s in range(n) for k in range(width) if s + k < n]
    for i in range(10):
        for j in range(10):
            expected = table[i - 4, j - i] if (i, j) in inside else np.zeros(classes)
            np.testing.assert_array_equal(row[i, j], expected)


def test_packed_rows_carry_each_examples_teacher_table_at_its_words(tmp_path):
    config = tiny_train_config(tmp_path, decoder="span")
    encoder, data, _ = tiny_model(config)
    scheme = encoder.scheme
    tables = random_tables(data.examples, scheme.max_width, scheme.num_classes)
    batcher = PackedBatcher(data.examples, 12, 2, 0, scheme, soft_targets=tables)
    seen = 0
    for planned in batcher.epoch_plan(0):
        batch = batcher.build(planned)
        soft = batch["ner_soft_targets"]
        assert soft.shape == (*batch["word_mask"].shape, 12, scheme.num_classes)
        expected = np.zeros_like(soft)
        for place in batcher.example_offsets(planned):
            place_span_table(expected[place.row], tables[place.index], place.words)
            seen += 1
        np.testing.assert_array_equal(soft, expected)
        # Every candidate span of the loss has the teacher's distribution, nothing else does.
        _, mask = ner_targets(scheme, batch)
        np.testing.assert_array_equal(np.asarray(mask), soft.sum(-1) > 0.5)
    assert seen == len(data.examples) and len(data.examples) > 3  # several a row
    plain = PackedBatcher(data.examples, 12, 2, 0, scheme).build(batcher.epoch_plan(0)[0])
    assert "ner_soft_targets" not in plain


@pytest.mark.parametrize("smoothing, keep", [(0.0, 1.0), (0.1, 0.5)])
def test_the_distilled_span_loss_follows_its_formula(smoothing, keep):
    scheme = SpanScheme(2, 3)
    length, classes = 6, scheme.num_classes
    batch = {
        "word_mask": jnp.array([[True] * 5 + [False]]),
        "row_mask": jnp.array([True]),
        "entity_start": jnp.array([[0, 3]]),
        "entity_end": jnp.array([[2, 4]]),
        "entity_type": jnp.array([[1, 2]]),
    }
    rng = np.random.default_rng(0)
    teacher = rng.dirichlet(np.ones(classes), size=(1, length, length)).astype(np.float32)
    batch["ner_soft_targets"] = jnp.asarray(teacher)
    logits = jnp.asarray(rng.normal(size=(1, length, length, classes)), jnp.float32)
    key = jax.random.key(3)
    base = LossOptions(scheme=scheme, boundary_smoothing=smoothing, span_negative_keep=keep)
    for weight in (0.0, 0.3, 1.0):
        options = LossOptions(
            scheme=scheme,
            boundary_smoothing=smoothing,
            span_negative_keep=keep,
            distillation_weight=weight,
        )
        got = loss_terms({"ner_logits": logits}, batch, options, key)
        # By hand: the gold target (smoothed), the spans a step counts drawn from it alone,
        # then (1 - w) gold + w teacher, cross-entropy summed over the counted spans.
        targets, mask = ner_targets(scheme, batch)
        gold = np.asarray(jax.nn.one_hot(targets, classes))
        if smoothing:
            gold = np.asarray(smoothed_span_targets(targets, mask, classes, smoothing))
        if keep < 1:
            mask = sampled_negatives(jnp.asarray(gold), mask, keep, key)
        mixed = (1 - weight) * gold + weight * teacher
        per_span = -(mixed * np.asarray(jax.nn.log_softmax(logits))).sum(-1)
        mask = np.asarray(mask)
        np.testing.assert_allclose(float(got["ner_count"]), mask.sum())
        np.testing.assert_allclose(float(got["ner_loss_sum"]), per_span[mask].sum(), rtol=1e-5)
        if weight == 0.0:
            plain = loss_terms({"ner_logits": logits}, batch, base, key)
            np.testing.assert_allclose(float(got["ner_loss_sum"]), float(plain["ner_loss_sum"]))


def test_distillation_options_are_checked():
    with pytest.raises(ValueError, match="distillation_weight 1.5 not in"):
        LossOptions(scheme=SpanScheme(2, 3), distillation_weight=1.5)
    with pytest.raises(ValueError, match="needs the span decoder"):
        LossOptions(distillation_weight=0.5)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    """A tiny trained span run, its config, and its train split's examples."""
    root = tmp_path_factory.mktemp("teacher")
    config = tiny_train_config(root / "corpus", epochs=3, decoder="span")
    config.checkpoint_every_steps = 0
    train.train_and_evaluate(config, root / "run")
    return root / "run", config


def test_a_teachers_tables_are_its_models_span_probabilities_for_each_example(teacher_run):
    run, _ = teacher_run
    config, predictor, encoder = inference.load_run(run)
    examples = load_split(config, "train", encoder, progress=False).examples
    tables = distillation.teacher_span_probs(predictor, examples, desc=None)
    width = predictor.model.scheme.max_width
    assert len(tables) == len(examples)
    # Each example alone in a row of its own (no packing) gives the same distributions.
    for index, ex in enumerate(examples):
        batcher = PackedBatcher([ex], 12, 1, 0, predictor.model.scheme, config.model.max_entities)
        batch = batcher.build(batcher.eval_plan()[0])
        probs = distillation.mean_span_probs(predictor.params, batch, model=predictor.model)
        alone = span_table(np.asarray(probs)[0], ex.num_words, width)
        np.testing.assert_allclose(tables[index], alone, atol=2e-3)
        inside = np.arange(ex.num_words)[:, None] + np.arange(width)[None] < ex.num_words
        np.testing.assert_allclose(tables[index].astype(np.float32).sum(-1), inside, atol=1e-2)
    # An ensemble of the run with itself is the run.
    twice = inference.load_run(run, members=(run,))[1]
    again = distillation.teacher_span_probs(twice, examples, desc=None)
    for a, b in zip(tables, again, strict=True):
        np.testing.assert_allclose(a, b, atol=2e-3)


def test_a_student_trains_from_a_teacher_file_and_a_mismatch_is_named(teacher_run, tmp_path):
    run, teacher_config = teacher_run
    config, predictor, encoder = inference.load_run(run)
    examples = load_split(config, "train", encoder, progress=False).examples
    path = tmp_path / "teacher.npz"
    with open(path, "wb") as f:
        distillation.save_teacher(
            f, examples, distillation.teacher_span_probs(predictor, examples, None)
        )
    student = tiny_train_config(tmp_path / "corpus", epochs=1, decoder="span")
    student.data.teacher_file = str(path)
    student.model.distillation_weight = 0.5
    train.train_and_evaluate(student, tmp_path / "student")
    plain = tiny_train_config(tmp_path / "corpus2", epochs=1, decoder="span")
    train.train_and_evaluate(plain, tmp_path / "plain")
    losses = [
        json.loads((tmp_path / name / "metrics.jsonl").read_text().splitlines()[-1])
        for name in ("student", "plain")
    ]
    distilled, alone = (line["train_ner_loss"] for line in losses)
    # Same seed, same batches: the teacher's targets are what changes the loss.
    assert np.isfinite(distilled) and abs(distilled - alone) > 1e-3
    # A teacher of other examples, or of another width, is refused by name.
    _, data, _ = tiny_model(tiny_train_config(tmp_path / "c2", decoder="span"))
    moved = list(data.examples)
    moved[0], moved[1] = moved[1], moved[0]
    with pytest.raises(UserError, match=r"teacher.npz: example 0 \(.*line \d+.*\) is not"):
        distillation.load_teacher(path, moved, encoder.scheme)
    with pytest.raises(UserError, match=r"examples, but the training split has 1 "):
        distillation.load_teacher(path, data.examples[:1], encoder.scheme)
    narrow = SpanScheme(encoder.scheme.num_types, 3)
    with pytest.raises(UserError, match=r"width x classes"):
        distillation.load_teacher(path, data.examples, narrow)
    # Weight without a file, and a file without weight, are refused before training.
    student.data.teacher_file = ""
    with pytest.raises(UserError, match="needs both"):
        train.train_and_evaluate(student, tmp_path / "student2")
    assert teacher_config.model.distillation_weight == 0.0


def test_the_teach_program_writes_a_file_a_student_reads_and_names_a_bad_run(teacher_run, tmp_path):
    run, _ = teacher_run
    out = tmp_path / "sub" / "teacher.npz"
    command = [sys.executable, "-m", "jointre_jax.tools.teach", f"--workdir={run}", f"--out={out}"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = json.loads(done.stdout.strip().splitlines()[-1])
    config, _, encoder = inference.load_run(run)
    examples = load_split(config, "train", encoder, progress=False).examples
    tables = distillation.load_teacher(out, examples, encoder.scheme)
    assert printed["examples"] == len(examples) == len(tables) and printed["split"] == "train"
    assert printed["spans"] == sum(int((t.sum(-1) > 0).sum()) for t in tables) > 0
    missing = tmp_path / "nothing"
    bad = [sys.executable, "-m", "jointre_jax.tools.teach", f"--workdir={missing}", f"--out={out}"]
    done = subprocess.run(bad, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2 and f"teach: run or model folder {missing} not found" in done.stderr
