"""The whole pipeline on the real Chia corpus in ../shared (skipped with a reason without it).

An independent, deliberately plain scan of the .ann files is the oracle: every mention of every
kept entity is in an example with exactly its text, or counted in a dropped counter.
"""

import collections
import json
import os
import subprocess
import sys

import pytest

from configs import minilm_m2
from jointre_jax.data.batching import Batcher, padding_stats
from jointre_jax.data.corpus import load_split, make_encoder
from jointre_jax.labels import BioScheme
from tests.conftest import CHIA_DIR, MINILM_DIR, REPO, default_optimisation_env, needs_chia

pytestmark = needs_chia
SPLITS = ("train", "dev", "test")


@pytest.fixture(scope="module")
def chia():
    config = minilm_m2.get_config()
    config.data.dir, config.model.encoder = str(CHIA_DIR), str(MINILM_DIR)
    encoder = make_encoder(config)
    return config, {s: load_split(config, s, encoder, progress=False) for s in SPLITS}


def plain_scan(split):
    """{(doc_id, T id): mention} of the kept entity types, and the kept-type relation count."""
    kept_types = set(minilm_m2.get_config().data.entity_types)
    relation_types = set(minilm_m2.get_config().data.relation_types)
    ids = (CHIA_DIR / "splits" / f"{split}.txt").read_text().split()
    mentions, relations = {}, 0
    for trial in ids:
        for part in ("inc", "exc"):
            ann = (CHIA_DIR / "brat" / f"{trial}_{part}.ann").read_text(encoding="utf-8")
            for line in ann.split("\n"):
                fields = line.rstrip("\r").split("\t")
                if line.startswith("T") and fields[1].split(" ")[0] in kept_types:
                    mentions[(f"{trial}_{part}", fields[0])] = fields[2]
                elif line.startswith("R") and fields[1].split(" ")[0] in relation_types:
                    relations += 1
                elif line.startswith("*\tOR "):
                    relations += len(set(fields[1].split()[1:])) - 1
    return mentions, relations


def test_every_kept_entity_has_exactly_its_text_or_is_counted(chia):
    _, data = chia
    for split in SPLITS:
        mentions, raw_relations = plain_scan(split)
        acc = data[split].accounting
        assert acc.entities.raw == len(mentions)
        assert acc.relations.raw == raw_relations
        acc.check()  # raw == kept + sum(dropped), entities and relations
        seen = collections.Counter()
        for ex in data[split].examples:
            for span in ex.entities:
                key = (ex.doc_id, span.ann_id)
                seen[key] += 1
                text = ex.text[span.char_start : span.char_end]
                # The file's mention; whitespace-trimmed offsets are counted as repaired.
                assert text == mentions[key] or text == mentions[key].strip(), key
                # The words of the span cover exactly that text.
                assert ex.words[span.start][0] == span.char_start
                assert ex.words[span.end - 1][1] == span.char_end
        assert max(seen.values()) == 1  # no entity in two examples
        assert len(seen) == acc.entities.kept
        assert acc.entities.kept / acc.entities.raw > 0.85  # the ceiling is reported, not hidden


def test_bio_tags_decode_to_the_kept_entities(chia):
    config, data = chia
    scheme = BioScheme(len(config.data.entity_types))
    for ex in data["dev"].examples:
        expected = [(s.start, s.end, s.label) for s in ex.entities]
        assert BioScheme.spans(scheme.tags(expected, ex.num_words), ex.num_words) == expected
        assert ex.length <= config.data.max_length and ex.num_words <= ex.length - 2


def test_span_scheme_raises_the_ceiling_to_every_contiguous_entity(chia):
    config, data = chia
    span_config = minilm_m2.get_config()
    span_config.data.dir, span_config.model.encoder = str(CHIA_DIR), str(MINILM_DIR)
    span_config.model.ner_decoder = "span"
    span = load_split(span_config, "test", progress=False)
    bio = data["test"].accounting.entities
    assert span.accounting.entities.kept > bio.kept + 0.03 * bio.raw  # nested ones are kept
    dropped = span.accounting.entities.dropped
    assert "overlap" not in dropped and dropped["discontinuous"] > 0
    assert span.accounting.entities.kept / span.accounting.entities.raw > 0.93
    # The corpus gold holds every annotation of the kept types, whatever the encoding keeps.
    assert len(span.corpus_gold.entities) >= span.accounting.entities.kept


def test_bucketed_batches_waste_under_20_percent(chia):
    config, data = chia
    for split in SPLITS:
        batcher = Batcher(
            data[split].examples,
            config.data.bucket_boundaries,
            config.data.batch_size if split == "train" else config.data.eval_batch_size,
        )
        plan = batcher.epoch_plan(0) if split == "train" else batcher.eval_plan()
        stats = padding_stats(batcher, plan)
        assert stats["padding_waste"] < 0.20, (split, stats)
        assert {p.length for p in plan} <= set(config.data.bucket_boundaries)


def test_splits_are_disjoint_by_trial(chia):
    _, data = chia
    trials = {s: {ex.doc_id.split("_")[0] for ex in data[s].examples} for s in SPLITS}
    assert not trials["train"] & trials["dev"] and not trials["train"] & trials["test"]
    assert not trials["dev"] & trials["test"]
    assert (len(trials["train"]), len(trials["dev"]), len(trials["test"])) == (700, 100, 100)


def test_report_cli_on_chia():
    env = {**os.environ, "JOINTRE_DATA_DIR": str(CHIA_DIR), "JOINTRE_ENCODER": str(MINILM_DIR)}
    command = [sys.executable, "-m", "jointre_jax.tools.report", "--config=configs/minilm_m2.py"]
    out = subprocess.run(
        [*command, "--json"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    for split in SPLITS:
        entry = report["splits"][split]
        assert entry["documents"] == {"train": 1400, "dev": 200, "test": 200}[split]
        for kind in ("entities", "relations"):
            assert entry[kind]["raw"] == entry[kind]["kept"] + sum(entry[kind]["dropped"].values())
        assert "Non-query-able" in entry["excluded"]["entities"]
        assert entry["padding"]["padding_waste"] < 0.2


def test_tiny_training_run_on_chia_raises_scores(tmp_path):
    """MiniLM on 128 Chia criteria for a few steps, through the training CLI: dev (= those
    criteria) scores rise. Its own process compiles with XLA's default optimisation (the suite's
    is off, tests/conftest.py): a MiniLM's steps run slower unoptimised than they compile."""
    overrides = {
        "data.dir": CHIA_DIR, "model.encoder": MINILM_DIR, "data.max_train_examples": 128,
        "data.eval_split": "train", "data.test_split": "train", "data.max_eval_examples": 64,
        "data.batch_size": 8, "num_epochs": 4, "checkpoint_every_steps": 0,
        "optim.learning_rate": 3e-4,
        # One device: packed batches of one row (about 6 criteria), not a row per fake device.
        "num_devices": 1,
    }  # fmt: skip
    command = [sys.executable, "-m", "jointre_jax.main", "--config=configs/minilm_m2.py",
               f"--workdir={tmp_path / 'run'}"]  # fmt: skip
    command += [f"--config.{key}={value}" for key, value in overrides.items()]
    env = default_optimisation_env()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    results = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert lines[0]["epoch"] == 0 and lines[-1]["epoch"] == 4
    assert max(x["dev_ner_f1"] for x in lines[1:]) > lines[0]["dev_ner_f1"] + 0.05
    assert max(x["dev_re_gs_f1"] for x in lines[1:]) > lines[0]["dev_re_gs_f1"] + 0.02
    assert results["ner"]["f1"] > lines[0]["dev_ner_f1"]


def test_span_decoder_trains_a_real_step_on_chia(tmp_path):
    """The span path on Chia with the MiniLM: one epoch of a few real steps, then scores
    against both golds."""
    from jointre_jax import train

    config = minilm_m2.get_config()
    config.data.dir, config.model.encoder = str(CHIA_DIR), str(MINILM_DIR)
    config.model.ner_decoder = "span"
    config.model.negative_sampling = "incremental"
    config.model.discontinuous = True  # fragments and their links through the whole path
    config.data.max_train_examples = 32
    config.data.eval_split = config.data.test_split = "train"
    config.data.max_eval_examples = 32
    config.data.bucket_boundaries = (128,)
    config.data.batch_size = 16
    config.num_epochs = 1
    config.eval_before_training = False
    config.checkpoint_every_steps = 0
    results = train.train_and_evaluate(config, tmp_path / "run")
    (line,) = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert line["step"] == 2 and 0 < line["train_ner_loss"] < 10 and 0 < line["train_re_loss"] < 10
    corpus = results["corpus"]  # the documents all of whose criteria were scored
    assert corpus["gold"]["documents"] >= 1 and corpus["gold"]["entities"] > 0
    assert 0.0 <= corpus["ner"]["f1"] <= 1.0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["model"]["max_entities"] >= 8  # resolved from the data and saved


def test_discontinuous_entities_as_fragments_raise_the_ceiling_and_read_back_exactly():
    """With model.discontinuous, Chia's test split keeps its discontinuous entities as linked
    fragments; predicting the encoded gold back (read through merge_fragments) scores
    precision 1 and recall >= 98% against the corpus gold, entities and relations."""
    from jointre_jax.evaluation import CorpusScorer, Scorer
    from jointre_jax.predictor import PredictedEntity, Prediction

    config = minilm_m2.get_config()
    config.data.dir, config.model.encoder = str(CHIA_DIR), str(MINILM_DIR)
    config.model.ner_decoder, config.model.discontinuous = "span", True
    split = load_split(config, "test", progress=False)
    dropped = split.accounting.entities.dropped
    assert "discontinuous" not in dropped and dropped["fragments_ambiguous"] < 20
    scorer = Scorer(split.schema.entity_types, split.schema.relation_labels)
    corpus = CorpusScorer(split.corpus_gold)
    disc = 0
    for example in split.examples:
        entities, relations = scorer.gold(example)
        found = []
        for fragments, label in entities:
            chars = tuple(
                (int(example.words[a, 0]), int(example.words[b - 1, 1])) for a, b in fragments
            )
            many = len(fragments) > 1
            disc += many
            found.append(
                PredictedEntity(
                    fragments[0][0], fragments[-1][1], label, chars[0][0], chars[-1][1], 1.0,
                    fragments if many else (), chars if many else (),
                )
            )  # fmt: skip
        corpus.add(example, Prediction(found, [(h, t, r, 1.0) for h, t, r in relations], None))
    assert disc >= 140  # 145 of the test split's 167 discontinuous entities (2026-11-27)
    results = corpus.results()
    for key in ("ner", "re_e2e"):
        assert results[key]["precision"] == 1.0
        assert results[key]["recall"] > 0.97
