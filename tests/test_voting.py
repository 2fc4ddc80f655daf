"""Majority votes of saved extractions (:mod:`jointre_jax.voting`, ``python -m
jointre_jax.tools.vote``): what a vote keeps, its numbering and scores, bad files named by file and
line, scores against the corpus gold on a hand-made document with known counts, and the
recorded votes of benchmarks/votes/ rescored from their saved members against Chia's gold."""

import gzip
import json
import subprocess
import sys

import pytest

from configs import default, minilm_span
from jointre_jax import voting
from jointre_jax.data.schema import Schema
from jointre_jax.errors import UserError
from tests.conftest import CHIA_DIR, REPO, needs_chia, write_brat

VOTE = "jointre_jax.tools.vote"  # the program, as python -m runs it

# The count blocks of a score (voting.score, evaluate's corpus block) that a record must match.
SCORED_BLOCKS = ("ner", "re_e2e", "re_e2e_boundaries")
# The disjoint votes of benchmarks/votes/README.md's plan, fixed before any member was scored.
PLANNED_VOTES = ("s6_s7_s8", "s9_s10_s11", "s12_s13_s14")
TEXT = "no breast or lung cancer\nHbA1c > 7 %\n"
# Entities of the document: (type, spans) keys.
NO = ("Negation", ((0, 2),))
BREAST = ("Condition", ((3, 9), (18, 24)))  # "breast ... cancer", discontinuous
LUNG = ("Condition", ((13, 24),))
HBA1C = ("Measurement", ((25, 30),))
VALUE = ("Value", ((31, 36),))
SEVEN = ("Value", ((33, 34),))


def criterion(line, start, end, entities, relations=()):
    """One criterion of extract's jsonl, entities as keys, relations as (type, head key, tail
    key, score)."""
    ids = {key: f"T{k}" for k, key in enumerate(entities, start=10 * line)}
    return {
        "doc_id": "NCT9_exc",
        "nct_id": "",
        "section": "none",
        "line": line,
        "start": start,
        "end": end,
        "text": TEXT[start:end],
        "windows": 1,
        "entities": [
            {
                "id": ids[key],
                "type": key[0],
                "start": key[1][0][0],
                "end": key[1][-1][1],
                "text": " ".join(TEXT[a:b] for a, b in key[1]),
                "fragments": [list(s) for s in key[1]] if len(key[1]) > 1 else [],
            }
            for key in entities
        ],
        "relations": [
            {"type": kind, "head": ids[h], "tail": ids[t], "score": score}
            for kind, h, t, score in relations
        ],
    }


def three_runs():
    """Three runs' extractions of TEXT (two criteria)."""
    first = [
        criterion(1, 0, 24, [NO, BREAST, LUNG], [("Has_negation", BREAST, NO, 0.9)]),
        criterion(2, 25, 36, [HBA1C, VALUE], [("Has_value", HBA1C, VALUE, 0.8)]),
    ]
    second = [
        criterion(1, 0, 24, [BREAST, LUNG], []),
        criterion(2, 25, 36, [HBA1C, VALUE], [("Has_value", HBA1C, VALUE, 0.6)]),
    ]
    third = [
        criterion(1, 0, 24, [NO, BREAST], [("Has_negation", BREAST, NO, 0.7)]),
        criterion(2, 25, 36, [HBA1C, SEVEN], [("Has_value", HBA1C, SEVEN, 0.5)]),
    ]
    return [first, second, third]


def keys(criteria):
    return [voting.criterion_keys(c) for c in criteria]


def test_a_majority_keeps_what_two_of_three_runs_predict():
    voted = voting.vote(three_runs())
    (e1, r1), (e2, r2) = keys(voted)
    assert set(e1) == {NO, BREAST, LUNG} and r1 == [("Has_negation", BREAST, NO)]
    assert set(e2) == {HBA1C, VALUE} and r2 == [("Has_value", HBA1C, VALUE)]
    # Numbered through the document in (spans, type) order; fragments and texts kept.
    assert [e["id"] for c in voted for e in c["entities"]] == ["T1", "T2", "T3", "T4", "T5"]
    breast = voted[0]["entities"][1]
    assert breast["fragments"] == [[3, 9], [18, 24]] and breast["text"] == "breast cancer"
    assert (breast["start"], breast["end"]) == (3, 24)
    # A kept relation's score: the mean of the runs that predict it.
    assert voted[0]["relations"][0]["score"] == pytest.approx(0.8)
    assert voted[1]["relations"][0]["score"] == pytest.approx(0.7)
    assert {k: voted[0][k] for k in ("doc_id", "line", "start", "end", "text")} == {
        "doc_id": "NCT9_exc", "line": 1, "start": 0, "end": 24, "text": TEXT[:24],
    }  # fmt: skip


def test_one_vote_is_the_union_and_all_votes_the_intersection():
    runs = three_runs()
    union, everyone = voting.vote(runs, 1), voting.vote(runs, 3)
    assert set(keys(union)[1][0]) == {HBA1C, VALUE, SEVEN}
    assert len(keys(union)[1][1]) == 2
    assert keys(everyone) == [([BREAST], []), ([HBA1C], [])]
    # A relation the vote keeps has its two entities kept, at every threshold.
    for need in (1, 2, 3):
        for entities, relations in keys(voting.vote(runs, need)):
            assert all(h in entities and t in entities for _, h, t in relations)
    # One run voted alone is itself, renumbered.
    alone = voting.vote([runs[0]])
    assert keys(alone) == [(sorted(e, key=lambda k: k[::-1]), r) for e, r in keys(runs[0])]


def test_runs_of_other_criteria_and_bad_thresholds_are_errors():
    runs = three_runs()
    runs[2] = runs[2][:1]
    with pytest.raises(UserError, match="c.jsonl: its criteria .* differ from those of a.jsonl"):
        voting.vote(runs, names=["a.jsonl", "b.jsonl", "c.jsonl"])
    with pytest.raises(UserError, match="min_votes 4 not in"):
        voting.vote(three_runs(), 4)


def write_jsonl(path, criteria, compress=False):
    data = "".join(json.dumps(c) + "\n" for c in criteria).encode()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def test_extraction_files_read_back_and_bad_lines_name_the_file_and_line(tmp_path):
    run = three_runs()[0]
    assert voting.read_extraction(write_jsonl(tmp_path / "a.jsonl.gz", run, True)) == run
    assert voting.read_extraction(write_jsonl(tmp_path / "a.jsonl", run)) == run
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(run[0]) + "\n{not json\n")
    with pytest.raises(UserError, match=r"bad.jsonl:2: not JSON"):
        voting.read_extraction(bad)
    broken = dict(run[1], relations=[{"type": "Has_value", "head": "T20", "tail": "T99",
                                      "score": 1.0}])  # fmt: skip
    write_jsonl(bad, [run[0], broken])
    with pytest.raises(UserError, match=r"bad.jsonl:2: relation Has_value names tail 'T99'"):
        voting.read_extraction(bad)
    write_jsonl(bad, [{k: v for k, v in run[0].items() if k != "doc_id"}])
    with pytest.raises(UserError, match=r"bad.jsonl:1: criterion lacks doc_id"):
        voting.read_extraction(bad)
    with pytest.raises(UserError, match="extraction file not found"):
        voting.read_extraction(tmp_path / "missing.jsonl")


# The gold of TEXT: "breast ... cancer" discontinuous, "lung cancer" nested in no other,
# HbA1c > 7 % with its value, and an annotator flag (left out).
GOLD_ANN = (
    "T1\tNegation 0 2\tno\n"
    "T2\tCondition 3 9;18 24\tbreast cancer\n"
    "T3\tCondition 13 24\tlung cancer\n"
    "T4\tMeasurement 25 30\tHbA1c\n"
    "T5\tValue 31 36\t> 7 %\n"
    "T6\tParsing_Error 0 24\tno breast or lung cancer\n"
    "R1\tHas_negation Arg1:T2 Arg2:T1\n"
    "R2\tHas_negation Arg1:T3 Arg2:T1\n"
    "R3\tHas_value Arg1:T4 Arg2:T5\n"
)


def gold_folder(tmp_path):
    write_brat(tmp_path / "brat", "NCT9_exc", TEXT, GOLD_ANN)
    write_brat(tmp_path / "brat", "NCT8_inc", "adults\n", "T1\tPerson 0 6\tadults\n")
    (tmp_path / "test.txt").write_text("NCT9\n")
    return tmp_path / "brat", tmp_path / "test.txt"


def test_scores_against_the_corpus_gold_count_what_they_should(tmp_path):
    brat, split = gold_folder(tmp_path)
    gold, skipped = voting.corpus_gold(Schema.from_config(default.get_config().data), brat, split)
    assert not skipped and gold.documents == {"NCT9_exc"}
    assert len(gold.entities) == 5 and len(gold.relations) == 3
    runs = three_runs()
    scores = voting.score(runs[2], gold)  # NO, BREAST, HBA1C right; SEVEN wrong
    ner, re = scores["ner"], scores["re_e2e"]
    assert (ner["tp"], ner["fp"], ner["fn"]) == (3, 1, 2)
    assert (re["tp"], re["fp"], re["fn"]) == (1, 1, 2)
    voted = voting.score(voting.vote(runs), gold)
    assert (voted["ner"]["tp"], voted["ner"]["fp"], voted["ner"]["fn"]) == (5, 0, 0)
    assert (voted["re_e2e"]["tp"], voted["re_e2e"]["fp"], voted["re_e2e"]["fn"]) == (2, 0, 1)
    assert voted["ner"]["f1"] == 1.0 and voted["re_e2e"]["f1"] == pytest.approx(0.8)
    # Another split's extraction is an error, not a score of zero.
    other = [dict(c, doc_id="NCT8_inc") for c in runs[0]]
    with pytest.raises(UserError, match="not in the gold"):
        voting.score(other, gold, "x.jsonl")
    with pytest.raises(UserError, match="lacks 1 gold document"):
        voting.score([], gold, "x.jsonl")


def test_the_cli_writes_the_vote_and_its_scores(tmp_path):
    brat, split = gold_folder(tmp_path)
    files = [
        write_jsonl(tmp_path / f"{n}.jsonl.gz", run, True)
        for n, run in zip("abc", three_runs(), strict=True)
    ]
    out = subprocess.run(
        [sys.executable, "-m", VOTE, "--extractions=" + ",".join(map(str, files)),
         f"--output={tmp_path / 'voted.jsonl'}", "--config=configs/default.py",
         f"--brat_dir={brat}", f"--split_file={split}", f"--scores={tmp_path / 's.json'}"],
        cwd=REPO, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["min_votes"] == 2 and summary["f1"]["vote"]["ner"] == 1.0
    assert voting.read_extraction(tmp_path / "voted.jsonl") == voting.vote(three_runs())
    saved = json.loads((tmp_path / "s.json").read_text())["scores"]
    assert saved[str(files[2])]["ner"]["tp"] == 3
    bad = subprocess.run(
        [sys.executable, "-m", VOTE, f"--extractions={files[0]},{tmp_path}/no.jsonl",
         f"--output={tmp_path / 'v.jsonl'}"],
        cwd=REPO, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and "no.jsonl: extraction file not found" in bad.stderr


@needs_chia
def test_the_recorded_votes_rescore_from_their_saved_members():
    """benchmarks/votes/: every committed ``vote_*.{dev,test}.json`` (the figures of its README
    and of issue 10's record) is what its committed members score and vote to against Chia's
    corpus gold today, count for count; and every saved member scored alone on test counts what
    its run's own ``metrics.json`` ``corpus`` block counted. A change of the scorer, the gold
    reader or the vote that would move a recorded figure fails here."""
    votes = REPO / "benchmarks" / "votes"
    records = sorted(votes.glob("vote_*.json"))
    # The plan's three votes (benchmarks/votes/README.md), each on dev and test, are all recorded.
    planned = {f"vote_{m}.{s}.json" for m in PLANNED_VOTES for s in ("dev", "test")}
    assert planned <= {path.name for path in records}, records
    data = minilm_span.get_config().data
    # split: (its corpus gold, what the gold reader skipped)
    golds = {
        split: voting.corpus_gold(
            Schema.from_config(data), CHIA_DIR / "brat", CHIA_DIR / "splits" / f"{split}.txt",
            bool(data.lenient),
        )
        for split in ("dev", "test")
    }  # fmt: skip
    extractions, scored = {}, {}  # by member file, each read and scored once

    def member(name, split):
        if name not in scored:
            extractions[name] = voting.read_extraction(REPO / name)
            scored[name] = voting.score(extractions[name], golds[split][0], name)
        return scored[name]

    def counts(result):
        return {b: [result[b][k] for k in ("tp", "fp", "fn")] for b in SCORED_BLOCKS}

    for record_path in records:
        split = record_path.name.split(".")[-2]
        record = json.loads(record_path.read_text())
        assert record["skipped"] == golds[split][1] == []
        names = [name for name in record["scores"] if name != "vote"]
        seeds = record_path.name.split(".")[0].removeprefix("vote_").split("_")
        assert names == [f"benchmarks/votes/neg03_{seed}.{split}.jsonl.gz" for seed in seeds]
        assert record["min_votes"] == voting.majority(len(names))
        results = {name: member(name, split) for name in names}
        voted = voting.vote([extractions[name] for name in names], record["min_votes"])
        results["vote"] = voting.score(voted, golds[split][0])
        for name, expected in record["scores"].items():
            assert counts(results[name]) == counts(expected), (record_path.name, name)
    saved = sorted(votes.glob("*.metrics.json"))
    assert len(saved) >= 3 * len(PLANNED_VOTES), saved  # every planned vote's members
    for path in saved:
        name = f"benchmarks/votes/{path.name.removesuffix('.metrics.json')}.test.jsonl.gz"
        own = json.loads(path.read_text())["test"]["corpus"]
        assert counts(member(name, "test")) == counts(own), path.name
