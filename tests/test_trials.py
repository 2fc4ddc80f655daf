"""ClinicalTrials.gov records in, a review page out: the splitting rules on hand-made records,
the readers and their errors, Chia-derived records (the criteria found are Chia's lines),
extraction with a tiny trained run in every output format, and the page in a real browser."""

import csv
import json
import os
import pathlib
import shutil
import subprocess
import sys
import zlib

import pytest

from jointre_jax import review_page
from jointre_jax.data import trials
from jointre_jax.data.brat import read_document, read_text
from jointre_jax.errors import UserError
from jointre_jax.extraction import Criterion, DocumentExtraction, Entity, Relation
from tests.conftest import REPO, SHARED
from tests.test_train import train_tiny

EXTRACT = "jointre_jax.tools.extract"  # the program, as python -m runs it


def found(text):
    """(section, criterion text) of every criterion the splitter finds."""
    return [(s.section, text[s.start : s.end]) for s in trials.split_criteria(text)]


def study(nct_id, criteria, **extra):
    """A study record in the ClinicalTrials.gov API v2 layout."""
    record = {"protocolSection": {"identificationModule": {"nctId": nct_id}}}
    if criteria is not None:
        module = {"eligibilityCriteria": criteria, "sex": "ALL", "minimumAge": "18 Years"}
        record["protocolSection"]["eligibilityModule"] = module
    record["protocolSection"].update(extra)
    return record


# ------------------------------------------------------------------- splitting rules


def test_sections_headers_bullets_and_text_outside_sections():
    text = (
        "Participants must be able to consent.\n\n"
        "INCLUSION CRITERIA:\n\n"
        "  * Adults aged 18 years\n"
        "  - HbA1c > 7 %\n"
        "  • BMI below 40\n"
        "  1. eGFR above 30\n"
        "  2) stable dose of metformin\n"
        "  a. able to walk\n"
        "  (3) signed consent\n\n"
        "exclusion   criteria :\n"
        "* pregnancy\n"
    )
    assert found(text) == [
        ("none", "Participants must be able to consent."),
        ("inclusion", "Adults aged 18 years"),
        ("inclusion", "HbA1c > 7 %"),
        ("inclusion", "BMI below 40"),
        ("inclusion", "eGFR above 30"),
        ("inclusion", "stable dose of metformin"),
        ("inclusion", "able to walk"),
        ("inclusion", "signed consent"),
        ("exclusion", "pregnancy"),
    ]


def test_continuation_lines_subheaders_inline_headers_and_crlf():
    text = (
        "Key Inclusion Criteria: adults with type 2 diabetes\r\n"
        "\r\n"
        "DISEASE CHARACTERISTICS:\r\n"
        "  * Histologically confirmed breast cancer that has\r\n"
        "    spread to the lymph nodes\r\n"
        "  * Patients with any of the following:\r\n"
        "      * heart failure\r\n"
        "Exclusion Criteria:\r\n"
        "No prior chemotherapy\r\n"
        "No prior radiotherapy   \r\n"
    )
    assert found(text) == [
        ("inclusion", "adults with type 2 diabetes"),
        (
            "inclusion",
            "Histologically confirmed breast cancer that has\r\n    spread to the lymph nodes",
        ),
        ("inclusion", "Patients with any of the following:"),
        ("inclusion", "heart failure"),  # a bullet starts a criterion, however deep
        ("exclusion", "No prior chemotherapy"),
        ("exclusion", "No prior radiotherapy"),  # trailing spaces are not part of it
    ]
    spans = trials.split_criteria(text)
    assert [s.line for s in spans] == [1, 4, 6, 7, 9, 10]  # where each criterion begins
    assert [s.line for s in trials.split_criteria("a\rb\r\rc")] == [1, 2, 4]  # lone \r too
    flat = trials.model_text(text, spans)
    assert len(flat) == len(text)  # offsets into the model's text are offsets into the record
    lines = [x.strip() for x in flat.splitlines() if x.strip()]
    assert (
        lines[1] == "Histologically confirmed breast cancer that has      spread to the lymph nodes"
    )
    assert len(lines) == len(spans)  # one criterion a line, headers and bullets blanked


def test_no_sections_at_all_is_section_none():
    assert found("age over 18\nno dementia\n") == [("none", "age over 18"), ("none", "no dementia")]


# ---------------------------------------------------------------------------- readers


def test_every_v2_layout_and_aact_are_read(tmp_path):
    one = study("NCT00000001", "Inclusion Criteria:\n\n* adults\n")
    two = study("NCT00000002", "Exclusion Criteria:\n\n* pregnancy\n")
    (tmp_path / "one.json").write_text(json.dumps(one))
    (tmp_path / "page.json").write_text(json.dumps({"studies": [one, two], "nextPageToken": "x"}))
    (tmp_path / "lines.jsonl").write_text(json.dumps(one) + "\n" + json.dumps(two) + "\n")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.json").write_text(json.dumps(one))
    (folder / "b.json").write_text(json.dumps(two))
    (tmp_path / "eligibilities.txt").write_text(
        'id|nct_id|sampling_method|gender|criteria\n'
        '1|NCT00000001||All|"Inclusion Criteria:\n\n  * adults\n  * ""no"" smokers\n"\n'
        "2|NCT00000002||All|Exclusion Criteria: pregnancy\n"
    )  # fmt: skip
    for name, ids in [("one.json", ["NCT00000001"]), ("page.json", ["NCT00000001", "NCT00000002"]),
                      ("lines.jsonl", ["NCT00000001", "NCT00000002"]),
                      ("folder", ["NCT00000001", "NCT00000002"]),
                      ("eligibilities.txt", ["NCT00000001", "NCT00000002"])]:  # fmt: skip
        assert trials.detect_format(tmp_path / name) == (
            "aact" if name.endswith(".txt") else "ctgov"
        )
        result = trials.read_records(tmp_path / name)
        assert [r.nct_id for r in result.records] == ids, name
    aact = trials.read_records(tmp_path / "eligibilities.txt").records
    assert found(aact[0].criteria) == [("inclusion", "adults"), ("inclusion", '"no" smokers')]
    assert found(aact[1].criteria) == [("exclusion", "pregnancy")]


@pytest.mark.parametrize(
    "content, reason, where",
    [
        (json.dumps(study("NCT1", None)), "no_eligibility_module", "(NCT1) has no eligibilityMod"),
        (json.dumps(study("NCT1", "  \n")), "empty_criteria", "(NCT1) has empty eligibilityCrit"),
        (json.dumps(study("NCT1", "* a")) + "\n{not json\n", "not_json",
         "records.jsonl:2: not JSON"),
        (json.dumps(study("NCT1", "* a")) + "\n" + json.dumps(study("NCT1", "* b")),
         "duplicate_nct_id", "records.jsonl:2: NCT1 already read at"),
    ],
)  # fmt: skip
def test_bad_records_name_the_file_and_record_or_are_counted(tmp_path, content, reason, where):
    path = tmp_path / "records.jsonl"
    path.write_text(content + "\n")
    with pytest.raises(UserError, match="--lenient") as caught:
        trials.read_records(path)
    assert where in str(caught.value) and str(path) in str(caught.value)
    result = trials.read_records(path, lenient=True)
    assert result.skipped == {reason: 1}
    assert len(result.messages) == 1 and where in result.messages[0]


# ---------------------------------------------------------------- Chia-derived records


def chia_study_records(folder, count=None):
    """v2 records built around the criteria texts of Chia's test split: the criteria of each
    trial, as bullets under the two headers; returns {nct_id: (inclusion lines, exclusion)}."""
    chia = SHARED / "data" / "chia"
    ids = read_text(chia / "splits" / "test.txt").split()[:count]
    studies, expected = [], {}
    for nct_id in ids:
        lines = {}
        for section, suffix in (("inclusion", "inc"), ("exclusion", "exc")):
            text = read_text(chia / "brat" / f"{nct_id}_{suffix}.txt")
            lines[section] = [x.strip() for x in text.splitlines() if x.strip()]
        studies.append(trials.study_from_brat(nct_id, lines))
        expected[nct_id] = lines
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "search_page.json").write_text(json.dumps({"studies": studies}))
    return folder / "search_page.json", expected


@pytest.mark.skipif(not (SHARED / "data" / "chia").is_dir(), reason="needs ../shared (Chia)")
def test_chia_derived_records_give_back_chia_lines(tmp_path):
    path, expected = chia_study_records(tmp_path)
    records = trials.read_records(path).records
    assert len(records) == len(expected) == 100
    for record in records:
        got = found(record.criteria)
        want = [(s, x) for s in ("inclusion", "exclusion") for x in expected[record.nct_id][s]]
        assert got == want, record.nct_id


# ------------------------------------------------------------------ extraction and page


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("trials"))[1]


RECORD_TEXT = (
    "Inclusion Criteria:\n\n  * Patients with type 2 diabetes\n  * HbA1c > 7 %\n    within "
    "the last 3 months\n\nExclusion Criteria:\n\n  * heart failure or stroke\n  * pregnant women\n"
)


def extract(run_dir, tmp_path, fmt, source, *extra):
    out = tmp_path / ("out" if fmt == "brat" else f"out.{fmt}")
    done = subprocess.run(
        [sys.executable, "-m", EXTRACT, f"--workdir={run_dir}", f"--input={source}",
         f"--output={out}", f"--format={fmt}", *extra],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done


def test_extract_reads_a_study_and_every_format_carries_the_trial_fields(run_dir, tmp_path):
    source = tmp_path / "study.json"
    source.write_text(json.dumps(study("NCT09999999", RECORD_TEXT)))
    out, done = extract(run_dir, tmp_path, "jsonl", source, f"--grouped={tmp_path / 'g.jsonl'}")
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(r["nct_id"], r["section"]) for r in rows] == [("NCT09999999", "inclusion")] * 2 + [
        ("NCT09999999", "exclusion")
    ] * 2
    for row in rows:
        assert RECORD_TEXT[row["start"] : row["end"]] == row["text"]
        for entity in row["entities"]:
            assert RECORD_TEXT[entity["start"] : entity["end"]] == entity["text"]
    assert rows[1]["text"] == "HbA1c > 7 %\n    within the last 3 months"  # wrapped: one
    assert sum(len(r["entities"]) for r in rows) > 0, "the tiny run finds entities here"
    assert "1 trial records read; skipped: none" in done.stderr
    grouped = [json.loads(x) for x in (tmp_path / "g.jsonl").read_text().splitlines()]
    assert [g["section"] for g in grouped] == [r["section"] for r in rows]

    out, _ = extract(run_dir, tmp_path, "csv", source)
    table = list(csv.DictReader(out.open()))
    assert table and all(r["nct_id"] == "NCT09999999" for r in table)
    assert {r["section"] for r in table} <= {"inclusion", "exclusion"}

    out, _ = extract(run_dir, tmp_path, "brat", source)
    assert sorted(p.name for p in out.iterdir()) == [
        "NCT09999999_exc.ann", "NCT09999999_exc.txt", "NCT09999999_inc.ann", "NCT09999999_inc.txt",
    ]  # fmt: skip
    inc = read_document(out / "NCT09999999_inc.txt", lenient=False)
    assert inc.text.splitlines() == [
        "Patients with type 2 diabetes",
        "HbA1c > 7 %     within the last 3 months",
    ]
    assert len(inc.entities) == sum(len(r["entities"]) for r in rows if r["section"] == "inclusion")


def test_extract_lenient_counts_bad_records(run_dir, tmp_path):
    source = tmp_path / "studies.jsonl"
    source.write_text(
        json.dumps(study("NCT1", RECORD_TEXT)) + "\n" + json.dumps(study("NCT2", None)) + "\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", EXTRACT, f"--workdir={run_dir}", f"--input={source}",
         f"--output={tmp_path / 'o.jsonl'}"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "studies.jsonl:2: study (NCT2) has no eligibilityModule" in done.stderr
    _, done = extract(run_dir, tmp_path, "jsonl", source, "--lenient")
    assert "skipped: no_eligibility_module 1" in done.stderr


def page_extraction():
    """A hand-made extraction with nested entities, a relation and special characters."""
    text = "HbA1c > 7 % & <no> type 2 diabetes"
    entities = [
        Entity("T1", "Measurement", 0, 5, "HbA1c"),
        Entity("T2", "Value", 6, 11, "> 7 %"),
        Entity("T3", "Condition", 19, 34, "type 2 diabetes"),
        Entity("T4", "Qualifier", 19, 25, "type 2"),  # nested in T3
    ]
    relations = [Relation("Has_value", "T1", "T2", 0.91)]
    criterion = Criterion(
        "NCT5", 1, 0, len(text), text, entities, relations, 1, "NCT5", "inclusion"
    )
    return DocumentExtraction("NCT5", text, [criterion])


def test_page_highlights_nested_entities_and_lists_relations():
    page = review_page.render([page_extraction()], {"run": "r", "encoder": "e", "decoder": "span"})
    assert (
        '<mark class="t-Condition" data-id="c1-T3" title="Condition T3">'
        '<mark class="t-Qualifier" data-id="c1-T4" title="Qualifier T4">'
        "type 2</mark> diabetes</mark>"
    ) in page
    assert "&amp; &lt;no&gt;" in page  # the text is escaped
    assert 'data-ref="c1-T1">HbA1c</a> <span class="rel">Has_value</span>' in page
    assert "values: &gt; 7 %" in page  # the grouped view
    assert "http" not in page.replace("http-equiv", "")  # nothing from the network


def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def browse(page: pathlib.Path, *args):
    done = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--enable-logging=stderr", "--v=0", *args, page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    console = [x for x in done.stderr.splitlines() if ":CONSOLE" in x]
    return done, console


def png_pixels(path: pathlib.Path) -> bytes:
    """The decompressed image data of a PNG (filter bytes included): enough to tell blank."""
    data, chunks, position = path.read_bytes(), [], 8
    while position < len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        kind = data[position + 4 : position + 8]
        if kind == b"IDAT":
            chunks.append(data[position + 8 : position + 8 + length])
        position += 12 + length
    return zlib.decompress(b"".join(chunks))


@pytest.mark.skipif(chromium() is None, reason="needs Chromium (Debian: apt-get install chromium)")
def test_page_in_a_real_browser(run_dir, tmp_path):
    # The console check can fail: a page with a script error is caught.
    broken = tmp_path / "broken.html"
    broken.write_text("<html><body><script>undefinedFunction();</script></body></html>")
    assert browse(broken, "--dump-dom")[1], "a script error must show on the console"

    source = tmp_path / "study.json"
    studies = [study("NCT09999999", RECORD_TEXT), study("NCT08888888", "* stroke\n* diabetes\n")]
    source.write_text(json.dumps({"studies": studies}))
    page, _ = extract(run_dir, tmp_path, "html", source)
    rows_out, _ = extract(run_dir, tmp_path, "jsonl", source)
    rows = [json.loads(x) for x in rows_out.read_text().splitlines()]
    done, console = browse(page, "--dump-dom")
    assert done.returncode == 0 and not console, console
    marks = marks_of(done.stdout)
    expected = sorted(
        (f"c{n}-{e['id']}", e["text"]) for n, r in enumerate(rows, start=1) for e in r["entities"]
    )
    assert expected and sorted(marks) == expected  # every entity, with its exact text
    shot = tmp_path / "page.png"
    done, console = browse(page, "--window-size=1200,900", f"--screenshot={shot}")
    assert shot.exists() and not console, console
    assert len(set(png_pixels(shot))) > 20  # not blank: many distinct byte values


def marks_of(dom: str) -> list[tuple[str, str]]:
    """(data-id, text content) of every ``<mark data-id>`` of a page (nested ones included)."""
    from html.parser import HTMLParser

    class Marks(HTMLParser):
        def __init__(self):
            super().__init__(convert_charrefs=True)
            self.open, self.done = [], []

        def handle_starttag(self, tag, attrs):
            if tag == "mark":
                self.open.append([dict(attrs).get("data-id"), ""])

        def handle_endtag(self, tag):
            if tag == "mark":
                key, text = self.open.pop()
                if self.open:
                    self.open[-1][1] += text
                if key:
                    self.done.append((key, text))

        def handle_data(self, data):
            if self.open:
                self.open[-1][1] += data

    parser = Marks()
    parser.feed(dom)
    return parser.done


def test_the_readme_quickstart_runs_as_written(run_dir, tmp_path):
    """The README's quickstart, its shell block and its Python block, run as a user runs them
    (the console script ``jointre``), on a small trained run in place of workdirs/demo."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    shell = section.split("```bash\n", 1)[1].split("```", 1)[0]
    python = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert "workdirs/demo" in shell and "workdirs/demo" in python
    venv_bin = pathlib.Path(sys.executable).parent
    script = (
        shell.replace("source .venv/bin/activate", f"export PATH={venv_bin}:$PATH")
        .replace("workdirs/demo", str(run_dir))
        .replace("docs/", f"{REPO}/docs/")
    )
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, capture_output=True,
        text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert rows and all(r["nct_id"].startswith("NCT") for r in rows)
    assert "<html" in (tmp_path / "review.html").read_text()[:500].lower()
    assert done.stdout.startswith("kind,doc_id,nct_id,section")  # the CSV of criteria.txt
    code = python.replace("workdirs/demo", str(run_dir))
    ran = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
