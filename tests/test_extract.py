"""Extraction from raw text with a tiny trained run: exact offsets (CRLF, tabs, Unicode,
trailing spaces), windowed long lines, BRAT round trip, the CLI, the grouped view, and a
split extracted as a vote member (benchmarks/votes/member.sh) scoring as ``evaluate`` does."""

import csv
import io
import json
import os
import subprocess
import sys

import pytest

from benchmarks import extraction as extraction_benchmark
from jointre_jax import inference, voting, writers
from jointre_jax.data.brat import BratFormatError, read_document
from jointre_jax.data.inputs import read_inputs
from jointre_jax.data.schema import Schema
from jointre_jax.errors import UserError
from jointre_jax.extraction import Criterion, Entity, Extractor, Relation
from jointre_jax.grouping import group_criterion
from tests.conftest import REPO
from tests.test_train import train_tiny

LONG = (
    "patients with type 2 diabetes and hba1c > 7 % within the last 3 months and no history "
    "of heart failure or stroke"
)
TEXT = (
    "Patients with type 2 diabetes\r\n\r\nHbA1c > 7 %\twithin the last 3 months  \r\n"
    "women aged ≥ 18 years é\r\n" + LONG + "\r\n"
)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    # A maximum length of 12 wordpieces, so that the long line needs several windows.
    return train_tiny(tmp_path_factory.mktemp("extract"), max_length=12)[1]


def test_offsets_index_the_input_exactly_and_long_lines_are_windowed(run_dir):
    extractor = Extractor.from_workdir(run_dir)
    (doc,) = extractor.extract(TEXT, ["d"])
    assert [c.line for c in doc.criteria] == [1, 3, 4, 5]  # the blank line gives nothing
    for criterion in doc.criteria:
        assert TEXT[criterion.start : criterion.end] == criterion.text
        for entity in criterion.entities:
            assert criterion.start <= entity.start < entity.end <= criterion.end
            assert TEXT[entity.start : entity.end] == entity.text
            # Whole words: no entity begins or ends between two letters or digits.
            for a, b in ((entity.start - 1, entity.start), (entity.end - 1, entity.end)):
                assert not (a >= 0 and b < len(TEXT) and TEXT[a].isalnum() and TEXT[b].isalnum())
    assert doc.criteria[3].text == LONG and doc.criteria[3].windows >= 3  # not truncated
    assert doc.entities, "the trained tiny model should find entities in its training text"
    ids = {e.id for e in doc.entities}
    assert all(r.head in ids and r.tail in ids for r in doc.relations)
    compiled = extractor.predictor.predict_fn._cache_size()
    again = extractor.extract([TEXT, "", "stroke"], ["d", "empty", "short"])
    assert again[0].entities == doc.entities and again[1].criteria == []
    assert (
        extractor.predictor.predict_fn._cache_size() == compiled
    )  # shapes are reused across calls


def test_brat_and_csv_outputs_read_back_unchanged(run_dir, tmp_path):
    extractor = Extractor.from_workdir(run_dir)
    extractions = extractor.extract([TEXT, "stroke\n"], ["d", "e"])
    writers.write_brat(extractions, tmp_path / "out")
    for extraction in extractions:
        txt = tmp_path / "out" / f"{extraction.doc_id}.txt"
        assert txt.read_bytes() == extraction.text.encode("utf-8")
        doc = read_document(txt, lenient=False)
        read = {
            (e.type, e.fragments[0][0], e.fragments[0][1], e.text) for e in doc.entities.values()
        }
        assert read == {(e.type, e.start, e.end, e.text) for e in extraction.entities}
        assert {(r.type, r.arg1, r.arg2) for r in doc.relations} == {
            (r.type, r.head, r.tail) for r in extraction.relations
        }
    stream = io.StringIO()
    writers.write_csv(extractions, stream)
    rows = list(csv.DictReader(io.StringIO(stream.getvalue())))
    entities = [r for r in rows if r["kind"] == "entity"]
    assert [(r["doc_id"], r["text"]) for r in entities] == [
        (x.doc_id, e.text) for x in extractions for e in x.entities
    ]
    assert sum(r["kind"] == "relation" for r in rows) == sum(len(x.relations) for x in extractions)


def test_cli_reads_stdin_and_writes_jsonl_csv_and_grouped(run_dir, tmp_path):
    command = [
        sys.executable,
        "-m",
        "jointre_jax.tools.extract",
        f"--workdir={run_dir}",
        "--input=-",
    ]
    done = subprocess.run(
        [*command, f"--output={tmp_path / 'out.jsonl'}", f"--grouped={tmp_path / 'g.jsonl'}"],
        input=TEXT.encode("utf-8"), cwd=REPO, capture_output=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert b"4 criteria (1 longer than the model's maximum length" in done.stderr
    assert b"1 blank lines skipped" in done.stderr
    records = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    expected = Extractor.from_workdir(run_dir).extract(TEXT, ["stdin"])[0]
    assert records == [c.to_dict() for c in expected.criteria]
    grouped = [json.loads(x) for x in (tmp_path / "g.jsonl").read_text().splitlines()]
    assert [g["line"] for g in grouped] == [1, 3, 4, 5]


def test_a_vote_member_scores_as_evaluates_corpus_block(run_dir, tmp_path):
    """benchmarks/votes/member.sh (extract --split_file over a corpus, gzipped), then the
    vote's scorer against the split's gold: the counts of ``evaluate``'s ``corpus`` block for
    the same run, to the entity."""
    corpus = run_dir.parent / "corpus"
    chia = tmp_path / "chia"
    (chia / "splits").mkdir(parents=True)
    (chia / "brat").symlink_to(corpus / "brat")
    (chia / "splits" / "dev.txt").write_text("NCT3\n")
    (chia / "splits" / "test.txt").write_text("NCT1\nNCT3\n")
    env = dict(os.environ, CHIA=str(chia), OUT=str(tmp_path / "votes"), PYTHON=sys.executable)
    done = subprocess.run(
        ["bash", "benchmarks/votes/member.sh", str(run_dir), "m0"],
        cwd=REPO, capture_output=True, timeout=900, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    record = json.loads((tmp_path / "votes" / "m0.metrics.json").read_text())
    assert record["test"]["corpus"]["ner"]["f1"] > 0 and record["dev_by_epoch"][-1]["epoch"] > 0
    dev = voting.read_extraction(tmp_path / "votes" / "m0.dev.jsonl.gz")
    assert {c["doc_id"] for c in dev} == {"NCT3_exc"}
    criteria = voting.read_extraction(tmp_path / "votes" / "m0.test.jsonl.gz")
    assert {c["doc_id"] for c in criteria} == {"NCT1_inc", "NCT1_exc", "NCT3_exc"}
    split = chia / "splits" / "test.txt"
    schema = Schema.from_config(inference.saved_config(run_dir / "config.json").data)
    gold, skipped = voting.corpus_gold(schema, chia / "brat", split)
    assert not skipped
    scored = voting.score(criteria, gold)
    expected = inference.evaluate_folder(run_dir, chia / "brat", split)["corpus"]
    assert expected["ner"]["tp"] > 0
    for block in ("ner", "re_e2e", "re_e2e_boundaries"):
        for count in ("tp", "fp", "fn"):
            assert scored[block][count] == expected[block][count], (block, count)
    with pytest.raises(UserError, match="--split_file needs a folder"):
        read_inputs(str(corpus / "brat" / "NCT1_inc.txt"), str(split))


def test_non_utf8_input_names_the_file_and_line(tmp_path):
    bad = tmp_path / "criteria.txt"
    bad.write_bytes(b"age > 18\nna\xefve patients\n")
    with pytest.raises(BratFormatError, match=r"criteria\.txt:2"):
        read_inputs(str(bad))
    with pytest.raises(UserError, match="not found"):
        read_inputs(str(tmp_path / "missing.txt"))


def test_grouped_view_attaches_attributes_to_their_main_entity():
    text = "no HbA1c > 7% within the last 3 months or stroke"
    spans = {"no": "Negation", "HbA1c": "Measurement", "> 7%": "Value",
             "within the last 3 months": "Temporal", "stroke": "Condition"}  # fmt: skip
    entities = []
    for n, (mention, kind) in enumerate(spans.items()):
        start = text.index(mention)
        entities.append(Entity(f"T{n + 1}", kind, start, start + len(mention), mention))
    relations = [
        Relation("Has_value", "T2", "T3", 0.9),
        Relation("Has_temporal", "T2", "T4", 0.8),
        Relation("Has_negation", "T2", "T1", 0.7),
        Relation("OR", "T2", "T5", 0.6),
    ]
    criterion = Criterion("d", 1, 0, len(text), text, entities, relations)
    grouped = group_criterion(criterion)
    assert [r["entity"]["text"] for r in grouped["records"]] == ["HbA1c", "stroke"]
    hba1c, stroke = grouped["records"]
    assert [v["text"] for v in hba1c["values"]] == ["> 7%"]
    assert [t["text"] for t in hba1c["temporal"]] == ["within the last 3 months"]
    assert hba1c["negated"] is True and hba1c["links"] == {"or": ["T5"]}
    assert stroke["negated"] is False and "links" not in stroke


def test_extraction_benchmark_counts_what_it_timed_and_padding_changes_nothing(run_dir):
    extractor = Extractor.from_workdir(run_dir)
    texts, doc_ids = [TEXT, "stroke\n", ""], ["d", "e", "empty"]
    results = extraction_benchmark.run(extractor, doc_ids, texts, rounds=1)
    expected = extractor.extract(texts, doc_ids)
    assert results["criteria"] == 5 and results["documents"] == 3 and results["windowed"] == 1
    assert results["entities"] == sum(len(x.entities) for x in expected)
    for name in ("cold", "warm", "fixed"):
        seconds = results[name]["seconds"]
        assert seconds > 0 and results[name]["criteria_per_s"] == pytest.approx(5 / seconds)
    assert results["speedup"] == pytest.approx(
        results["fixed"]["seconds"] / results["warm"]["seconds"]
    )
    assert 0 < results["encode_seconds"] < results["warm"]["seconds"]
    assert results["packing"] is True  # the run's own batches: packed rows
    fixed = extraction_benchmark.fixed_length_extractor(extractor)
    assert not fixed.config.data.packing and fixed.config.data.bucket_boundaries == (12,)
    padded = fixed.extract(texts, doc_ids)  # the same predictions padded to full length
    assert [x.entities for x in padded] == [x.entities for x in expected]
    assert _same_relations_up_to_rounding(padded, expected)


def _same_relations_up_to_rounding(padded, expected) -> bool:
    """Same relations; scores (rounded to 4 places) may differ in the last place."""
    pairs = zip(
        [r for x in padded for r in x.relations],
        [r for x in expected for r in x.relations],
        strict=True,
    )
    return all(
        (a.type, a.head, a.tail) == (b.type, b.head, b.tail) and abs(a.score - b.score) < 2e-4
        for a, b in pairs
    )


def test_a_discontinuous_entity_round_trips_through_brat_csv_and_the_page(tmp_path):
    from jointre_jax.extraction import DocumentExtraction
    from jointre_jax.review_page import _highlighted

    text = "heart or lung cancer\n"
    heart_cancer = Entity("T1", "Condition", 0, 20, "heart cancer", ((0, 5), (14, 20)))
    lung_cancer = Entity("T2", "Condition", 9, 20, "lung cancer")
    criterion = Criterion("d", 1, 0, 20, text[:20], [heart_cancer, lung_cancer])
    extraction = DocumentExtraction("d", text, [criterion])
    writers.write_brat([extraction], tmp_path / "out")
    doc = read_document(tmp_path / "out" / "d.txt", lenient=False)
    assert {(e.fragments, e.text) for e in doc.entities.values()} == {
        (((0, 5), (14, 20)), "heart cancer"),
        (((9, 20),), "lung cancer"),
    }
    stream = io.StringIO()
    writers.write_csv([extraction], stream)
    rows = list(csv.DictReader(io.StringIO(stream.getvalue())))
    assert [(r["id"], r["fragments"]) for r in rows] == [("T1", "0 5;14 20"), ("T2", "")]
    page = _highlighted(criterion, "c")
    assert page.count('data-id="c-T1"') == 2 and page.count('data-id="c-T2"') == 1
    assert ">heart</mark>" in page and " or " in page  # the gap is not highlighted as T1
