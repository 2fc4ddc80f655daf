"""The output formats of extraction: JSON lines, the grouped view, CSV and BRAT.

Each writer takes the :class:`~jointre_jax.extraction.DocumentExtraction` of ``Extractor`` and
writes one format (the review page is :mod:`jointre_jax.review_page`):

* ``jsonl``: one JSON object per criterion (``doc_id``, ``nct_id``, ``section``, ``line``,
  ``start``, ``end``, ``text``, ``entities`` [id, type, start, end, text, fragments],
  ``relations`` [type, head, tail, score], ``windows``);
* grouped: one JSON object per criterion in the grouped view (:mod:`jointre_jax.grouping`);
* ``csv``: one row per entity and per relation (``kind`` column);
* ``brat``: ``DOC.txt`` and ``DOC.ann`` per document; for ClinicalTrials.gov records one
  document per record and section (``NCT..._inc``, ``NCT..._exc``), a criterion a line.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import pathlib
import sys

from jointre_jax.data import trials
from jointre_jax.data.brat import write_document
from jointre_jax.extraction import DocumentExtraction, iter_records
from jointre_jax.grouping import group_criterion


def write_jsonl(extractions: list[DocumentExtraction], stream) -> None:
    for criterion in iter_records(extractions):
        stream.write(json.dumps(criterion.to_dict(), ensure_ascii=False) + "\n")


def write_grouped(extractions: list[DocumentExtraction], stream) -> None:
    for criterion in iter_records(extractions):
        stream.write(json.dumps(group_criterion(criterion), ensure_ascii=False) + "\n")


CSV_COLUMNS = ["kind", "doc_id", "nct_id", "section", "line", "criterion_start", "criterion_end",
               "id", "type", "start", "end", "text", "head", "tail", "score",
               "fragments"]  # fmt: skip


def write_csv(extractions: list[DocumentExtraction], stream) -> None:
    write_csv_header(stream)
    write_csv_rows(extractions, stream)


def write_csv_header(stream) -> None:
    csv.writer(stream).writerow(CSV_COLUMNS)


def write_csv_rows(extractions: list[DocumentExtraction], stream) -> None:
    """The CSV rows of ``extractions`` without the header (a chunk of a streamed output)."""
    writer = csv.writer(stream)
    for c in iter_records(extractions):
        where = [c.doc_id, c.nct_id, c.section, c.line, c.start, c.end]
        for e in c.entities:
            fragments = ";".join(f"{a} {b}" for a, b in e.fragments)  # BRAT's way; "" if one
            writer.writerow(["entity", *where, e.id, e.type, e.start, e.end, e.text, "", "", "",
                             fragments])  # fmt: skip
        for n, r in enumerate(c.relations):
            relation_id = f"R{c.line}_{n + 1}"
            writer.writerow(["relation", *where, relation_id, r.type, "", "", "", r.head, r.tail,
                             r.score, ""])  # fmt: skip


def write_brat(extractions: list[DocumentExtraction], folder: pathlib.Path) -> None:
    """One BRAT document per input document; for ClinicalTrials.gov records, one per record
    and section, named like Chia's (``NCT..._inc``, ``NCT..._exc``), a criterion a line."""
    if any(c.nct_id for e in extractions for c in e.criteria):
        extractions = [part for e in extractions for part in by_section(e)]
    for extraction in extractions:
        entities = [(e.id, e.type, list(e.spans), e.text) for e in extraction.entities]
        relations = [
            (f"R{n + 1}", r.type, r.head, r.tail) for n, r in enumerate(extraction.relations)
        ]
        write_document(extraction.doc_id, extraction.text, entities, relations, folder)


def by_section(extraction: DocumentExtraction) -> list[DocumentExtraction]:
    """A record's extraction as one document per section: its criteria one a line (line breaks
    inside a criterion become spaces), offsets moved to that text."""
    parts = []
    for section in trials.SECTIONS:
        criteria = [c for c in extraction.criteria if c.section == section]
        if not criteria:
            continue
        doc_id = f"{extraction.doc_id}_{trials.SECTION_SUFFIX[section]}"
        lines, moved, offset = [], [], 0
        for number, c in enumerate(criteria, start=1):
            flat = trials.one_line(c.text)
            shift = offset - c.start
            entities = [
                dataclasses.replace(
                    e, start=e.start + shift, end=e.end + shift,
                    text=" ".join(flat[a - c.start : b - c.start] for a, b in e.spans),
                    fragments=tuple((a + shift, b + shift) for a, b in e.fragments),
                )
                for e in c.entities
            ]  # fmt: skip
            moved.append(dataclasses.replace(c, doc_id=doc_id, line=number, start=offset,
                                             end=offset + len(flat), text=flat,
                                             entities=entities))  # fmt: skip
            lines.append(flat)
            offset += len(flat) + 1
        parts.append(DocumentExtraction(doc_id, "\n".join(lines) + "\n", moved))
    return parts


def stdout_stream():
    """Standard output as a UTF-8 text stream that leaves it open (``detach()`` when done)."""
    return io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", newline="")


def write_to(target: str, write) -> None:
    """``write(stream)`` into ``target``: standard output for ``-``, else the file (whose
    folder :func:`jointre_jax.cli.prepare_output` made before the work), written beside as
    ``.NAME.part``, flushed to disk and renamed into place once whole: a failed write (a full
    disk) or a crash never leaves a truncated file where the output should be."""
    if target == "-":
        stream = stdout_stream()
        write(stream)
        stream.flush()
        stream.detach()  # standard output stays open
        return
    path = pathlib.Path(target)
    part = path.with_name(f".{path.name}.part")
    try:
        with open(part, "w", encoding="utf-8", newline="") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)
