"""BRAT reader: every line kind, CRLF and Unicode offsets, and each failure (strict/lenient)."""

import pytest

from jointre_jax.data.brat import BratFormatError, read_document, write_document
from tests.conftest import t_line, write_brat

TEXT = "Patients with diabetes\nno history of heart failure\nHbA1c > 7 %\n"


def test_crlf_offsets_are_exact(tmp_path):
    crlf_text = TEXT.replace("\n", "\r\n")
    start = crlf_text.index("heart failure")  # counts the \r of line 1
    ann = f"T1\tCondition {start} {start + 13}\theart failure\n"
    path = write_brat(tmp_path, "doc", TEXT, ann, crlf=True)
    doc = read_document(path)
    entity = doc.entities["T1"]
    assert doc.text[entity.start : entity.end] == "heart failure"
    assert entity.problem is None
    assert "\r\n" in doc.text  # no newline translation


def test_unicode_offsets_count_code_points(tmp_path):
    text = "Edad ≥ 18 años; niño\n"
    ann = t_line("T1", "Value", text, "≥ 18 años") + "\n" + t_line("T2", "Person", text, "niño")
    doc = read_document(write_brat(tmp_path, "doc", text, ann))
    assert doc.entities["T1"].text == "≥ 18 años"
    assert doc.entities["T2"].fragments == ((16, 20),)
    assert all(e.problem is None for e in doc.entities.values())


def test_discontinuous_fragments_in_any_order(tmp_path):
    text = "breast or lung cancer\n"
    # BRAT joins fragments with one space, in the order written.
    ann = "T1\tCondition 0 6;15 21\tbreast cancer\nT2\tCondition 15 21;10 14\tcancer lung\n"
    doc = read_document(write_brat(tmp_path, "doc", text, ann))
    assert doc.entities["T1"].fragments == ((0, 6), (15, 21))
    assert doc.entities["T2"].fragments == ((10, 14), (15, 21))  # stored in text order
    assert doc.entities["T2"].problem is None


def test_relations_groups_and_other_lines(tmp_path):
    ann = "\n".join(
        [
            t_line("T1", "Condition", TEXT, "diabetes"),
            t_line("T2", "Condition", TEXT, "heart failure"),
            t_line("T3", "Negation", TEXT, "no"),
            "R1\tHas_negation Arg1:T2 Arg2:T3\t",
            "*\tOR T1 T2",
            "E1\tDiagnosis:T1 Theme:T2",
            "A1\tNegated T2",
            "M1\tSpeculation T1 High",
            "N1\tReference T1 UMLS:C0011849\tDiabetes Mellitus",
            "#1\tAnnotatorNotes T1\tchecked",
            "",
        ]
    )
    doc = read_document(write_brat(tmp_path, "doc", TEXT, ann))
    assert [(r.type, r.arg1, r.arg2) for r in doc.relations] == [("Has_negation", "T2", "T3")]
    assert [(g.type, g.members) for g in doc.groups] == [("OR", ("T1", "T2"))]
    assert doc.ignored == {"event": 1, "attribute": 2, "normalization": 1, "note": 1}
    assert not doc.skipped


def test_trailing_carriage_return_in_offsets_is_repaired_and_counted(tmp_path):
    text = "no stroke\r\nage 18\r\n"
    ann = "T1\tCondition 3 10\tstroke\n"  # offsets include the \r of the CRLF
    doc = read_document(write_brat(tmp_path, "doc", text, ann))
    assert doc.entities["T1"].fragments == ((3, 9),)
    assert doc.entities["T1"].problem is None
    assert doc.repaired == {"trimmed_whitespace": 1}


def test_line_separator_inside_mention_does_not_split_the_line(tmp_path):
    text = "heart\u2028failure\n"
    ann = "T1\tCondition 0 13\theart\u2028failure\n"
    doc = read_document(write_brat(tmp_path, "doc", text, ann))
    assert doc.entities["T1"].problem is None and not doc.skipped


@pytest.mark.parametrize(
    "ann_line, reason, message",
    [
        ("T1\tCondition 14\tdiabetes", "malformed_line", "bad offsets"),
        ("T1 Condition 14 22 diabetes", "malformed_line", "3 tab-separated"),
        ("Q1\tsomething", "malformed_line", "unknown annotation kind"),
        ("R1\tHas_value Arg1:T1", "malformed_line", "R line body"),
        ("*\tOR T1", "malformed_line", "two members"),
    ],
)
def test_malformed_lines(tmp_path, ann_line, reason, message):
    ann = t_line("T9", "Condition", TEXT, "diabetes") + "\n" + ann_line + "\n"
    path = write_brat(tmp_path, "doc", TEXT, ann)
    with pytest.raises(BratFormatError, match=rf"doc\.ann:2: .*{message}"):
        read_document(path)
    doc = read_document(path, lenient=True)
    assert doc.skipped == {reason: 1}
    assert len(doc.messages) == 1
    assert "doc.ann:2: " in doc.messages[0] and message in doc.messages[0]


@pytest.mark.parametrize(
    "ann_line, reason",
    [
        ("T1\tCondition 14 99\tdiabetes", "offset_out_of_range"),
        ("T1\tCondition 20 14\tdiabetes", "end_before_start"),
        ("T1\tCondition 14 14\t", "empty_fragment"),
        ("T1\tCondition 0 8;4 12\tPatients ts with", "overlapping_fragments"),
        ("T1\tCondition 14 22\tdiabetic", "text_mismatch"),
    ],
)
def test_annotation_problems_raise_or_are_kept_as_problems(tmp_path, ann_line, reason):
    path = write_brat(tmp_path, "doc", TEXT, ann_line + "\n")
    with pytest.raises(BratFormatError, match=r"doc\.ann:1: "):
        read_document(path)
    doc = read_document(path, lenient=True)
    assert doc.entities["T1"].problem == reason
    assert doc.messages and "doc.ann:1:" in doc.messages[0]


def test_duplicate_id(tmp_path):
    ann = t_line("T1", "Condition", TEXT, "diabetes") + "\n" + t_line("T1", "Value", TEXT, "7 %")
    path = write_brat(tmp_path, "doc", TEXT, ann)
    with pytest.raises(BratFormatError, match=r"doc\.ann:2: annotation id T1 defined twice"):
        read_document(path)
    assert read_document(path, lenient=True).skipped == {"duplicate_id": 1}


def test_non_utf8_text_names_the_line(tmp_path):
    (tmp_path / "doc.txt").write_bytes(b"line one\nline two \xff\n")
    (tmp_path / "doc.ann").write_bytes(b"T1\tCondition 0 4\tline\n")
    with pytest.raises(BratFormatError, match=r"doc\.txt:2: not valid UTF-8 \(byte 0xff"):
        read_document(tmp_path / "doc.txt")
    doc = read_document(tmp_path / "doc.txt", lenient=True)
    assert doc.skipped == {"document_not_utf8": 1}
    assert doc.entities["T1"].problem == "document_unreadable"


def test_missing_annotation_file(tmp_path):
    (tmp_path / "doc.txt").write_text("text\n")
    with pytest.raises(BratFormatError, match=r"doc\.ann: annotation file is missing"):
        read_document(tmp_path / "doc.txt", lenient=True)


def test_write_then_read_round_trip(tmp_path):
    text = "Edad ≥ 18\r\nno diabetes\r\n"
    entities = [("T1", "Value", [(5, 9)], "≥ 18"), ("T2", "Condition", [(14, 22)], "diabetes")]
    relations = [("R1", "Has_value", "T2", "T1")]
    write_document("rt", text, entities, relations, tmp_path, [("OR", ("T1", "T2"))])
    doc = read_document(tmp_path / "rt.txt")
    assert doc.text == text
    assert {k: (e.type, e.fragments, e.text) for k, e in doc.entities.items()} == {
        "T1": ("Value", ((5, 9),), "≥ 18"),
        "T2": ("Condition", ((14, 22),), "diabetes"),
    }
    assert [(r.arg1, r.arg2) for r in doc.relations] == [("T2", "T1")]
    assert [(g.type, g.members) for g in doc.groups] == [("OR", ("T1", "T2"))]
