"""Extract entities and relations from criteria with a trained run.

    python -m jointre_jax.extract --workdir=DIR --input=PATH|- --output=PATH|- \
        [--format=jsonl|brat|csv|html] [--input_format=auto|text|ctgov|aact] [--lenient] \
        [--grouped=FILE] [--split_file=F] [--ensemble=DIR2,DIR3]

Input (``--input_format``, detected from the content by default):

* plain text: a file (one criterion per line), a folder of ``.txt`` files (one document
  each; with ``--split_file``, only the documents it lists, as ``evaluate`` reads a corpus
  split), or ``-`` for standard input;
* ClinicalTrials.gov records (:mod:`jointre_jax.trials`): API v2 study JSON (one study, the
  search page ``{"studies": [...]}``, JSON lines, or a folder of ``.json`` files), or AACT's
  ``eligibilities.txt``. Each record's criteria text is split into criteria, each with its
  ``nct_id``, ``section`` (inclusion, exclusion, none) and ``start``/``end`` offsets in the
  record's criteria string. A bad record stops with the file and record, or with
  ``--lenient`` is skipped and counted in the summary.

Input must be UTF-8; anything else stops with the file and line of the first bad byte. Output:

* ``jsonl``: one JSON object per criterion (``doc_id``, ``nct_id``, ``section``, ``line``,
  ``start``, ``end``, ``text``, ``entities`` [id, type, start, end, text], ``relations``
  [type, head, tail, score], ``windows``), offsets into the input document (for a record,
  its criteria string);
* ``brat``: a folder with ``DOC.txt`` and ``DOC.ann`` (T and R lines) per document, which
  ``jointre_jax.data.brat.read_document`` reads back unchanged: the input text byte for byte,
  or for records one document per record and section (``NCT..._inc``, ``NCT..._exc``), a
  criterion a line;
* ``csv``: one row per entity and per relation (``kind`` column), with the criterion's
  ``nct_id``, ``section`` and offsets;
* ``html``: one self-contained page to review the extraction (:mod:`jointre_jax.review_page`).

``--grouped=FILE`` also writes the grouped view (``jointre_jax.grouping``), one JSON object per
criterion. A summary (records and skips, documents, criteria, blank lines, windowed lines,
entities, relations, criteria/s) goes to standard error.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import pathlib
import sys
import time

from absl import app, flags
from absl import logging as absl_logging

from jointre_jax import cli, review_page, trials
from jointre_jax.data.brat import BratFormatError, read_text, write_document
from jointre_jax.data.corpus import find_documents, read_split_ids
from jointre_jax.data.encode import split_lines
from jointre_jax.errors import UserError
from jointre_jax.extraction import DocumentExtraction, Extractor, extract_trials, iter_records
from jointre_jax.grouping import group_criterion

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """Command-line flags, defined only when run as a program (imports never clash)."""
    flags.DEFINE_string("workdir", None, "Training run directory (best checkpoint).")
    cli.define_ensemble_flag()
    flags.DEFINE_string("input", None, "Text file, folder of .txt files, or - (stdin).")
    flags.DEFINE_string(
        "split_file", None,
        "With a folder --input: only the documents it lists (id prefixes, one a line; "
        "a corpus split, as in evaluate).",
    )  # fmt: skip
    flags.DEFINE_string("output", None, "Output file (jsonl, csv; - = stdout) or folder.")
    flags.DEFINE_enum("format", "jsonl", ["jsonl", "brat", "csv", "html"], "Output format.")
    flags.DEFINE_enum(
        "input_format", "auto", list(trials.FORMATS),
        "auto: detected from the content; text: one criterion a line; ctgov: "
        "ClinicalTrials.gov API v2 study records (JSON, search page, JSON lines, folder); "
        "aact: AACT's pipe-delimited eligibilities.txt.",
    )  # fmt: skip
    flags.DEFINE_bool("lenient", False, "Skip (and count) bad records instead of stopping.")
    flags.DEFINE_string("grouped", None, "Also write the grouped view (JSON lines).")
    flags.DEFINE_integer("num_devices", None, "Devices to use (default: the run's).")


def read_inputs(source: str, split_file: str | None = None) -> tuple[list[str], list[str]]:
    """(doc_ids, texts) of ``source``: a file, a folder of .txt files, or "-" (stdin).
    ``split_file``: a folder's documents it lists only (:func:`find_documents`; an id that
    matches no document is an error naming the file and line).

    Raises UserError for a missing path or an empty folder, BratFormatError (file and line)
    for text that is not UTF-8.
    """
    if split_file is not None:
        if not pathlib.Path(source).is_dir():
            raise UserError(f"--split_file needs a folder of .txt files as --input, not {source}")
        files = find_documents(source, read_split_ids(split_file), split_file)
        return [f.stem for f in files], [read_text(f) for f in files]
    if source == "-":
        data = sys.stdin.buffer.read()
        try:
            return ["stdin"], [data.decode("utf-8")]
        except UnicodeDecodeError as err:
            line = data[: err.start].count(b"\n") + 1
            raise BratFormatError("<stdin>", line, "not valid UTF-8") from None
    path = pathlib.Path(source)
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise UserError(f"--input={source}: no .txt files in this folder")
        return [f.stem for f in files], [read_text(f) for f in files]
    if not path.is_file():
        raise UserError(f"--input={source}: not found")
    return [path.stem], [read_text(path)]


def write_jsonl(extractions: list[DocumentExtraction], stream) -> None:
    for criterion in iter_records(extractions):
        stream.write(json.dumps(criterion.to_dict(), ensure_ascii=False) + "\n")


def write_grouped(extractions: list[DocumentExtraction], stream) -> None:
    for criterion in iter_records(extractions):
        stream.write(json.dumps(group_criterion(criterion), ensure_ascii=False) + "\n")


def write_csv(extractions: list[DocumentExtraction], stream) -> None:
    columns = ["kind", "doc_id", "nct_id", "section", "line", "criterion_start", "criterion_end",
               "id", "type", "start", "end", "text", "head", "tail", "score",
               "fragments"]  # fmt: skip
    writer = csv.writer(stream)
    writer.writerow(columns)
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


def _write(target: str, write) -> None:
    """``write(stream)`` into ``target``: standard output for ``-``, else the file (whose
    folder :func:`jointre_jax.cli.prepare_output` made before the work)."""
    if target == "-":
        stream = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", newline="")
        write(stream)
        stream.flush()
        stream.detach()  # standard output stays open
        return
    with open(target, "w", encoding="utf-8", newline="") as stream:
        write(stream)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    absl_logging.set_verbosity(absl_logging.WARNING)
    if FLAGS.format == "brat" and FLAGS.output == "-":
        raise UserError("--format=brat needs an output folder, not -")
    cli.prepare_output(FLAGS.output, "output", folder=FLAGS.format == "brat")
    if FLAGS.grouped:
        cli.prepare_output(FLAGS.grouped, "grouped")
    fmt = FLAGS.input_format
    if fmt == "auto" and FLAGS.input != "-":
        fmt = (
            trials.detect_format(pathlib.Path(FLAGS.input)) if os.path.exists(FLAGS.input) else fmt
        )
    records = None
    if fmt in ("ctgov", "aact"):
        if FLAGS.split_file:
            raise UserError("--split_file selects .txt documents, not trial records")
        read = trials.read_records(FLAGS.input, fmt, FLAGS.lenient)
        records = read.records
        if not records:
            raise UserError(f"--input={FLAGS.input}: no usable records")
    else:
        doc_ids, texts = read_inputs(FLAGS.input, FLAGS.split_file)
    extractor = Extractor.from_workdir(FLAGS.workdir, FLAGS.num_devices, FLAGS.ensemble)
    started = time.perf_counter()
    if records is not None:
        extractions = extract_trials(extractor, records, progress=True)
        texts = [r.criteria for r in records]
    else:
        extractions = extractor.extract(texts, doc_ids, progress=True)
    seconds = time.perf_counter() - started
    if FLAGS.format == "brat":
        write_brat(extractions, pathlib.Path(FLAGS.output))
    elif FLAGS.format == "html":
        info = review_page.run_info(extractor, FLAGS.workdir, FLAGS.ensemble)
        page = review_page.render(extractions, info)
        _write(FLAGS.output, lambda stream: stream.write(page))
    else:
        writer = write_jsonl if FLAGS.format == "jsonl" else write_csv
        _write(FLAGS.output, lambda stream: writer(extractions, stream))
    if FLAGS.grouped:
        _write(FLAGS.grouped, lambda stream: write_grouped(extractions, stream))
    criteria = list(iter_records(extractions))
    blank = (
        0
        if records is not None
        else sum(not t[a:b].strip() for t in texts for _, a, b in split_lines(t) if a < len(t))
    )
    if records is not None:
        skipped = ", ".join(f"{k} {v}" for k, v in read.skipped.items()) or "none"
        print(f"extract: {len(records)} trial records read; skipped: {skipped}", file=sys.stderr)
        for message in read.messages[:20]:
            print(f"extract:   {message}", file=sys.stderr)
    print(
        f"extract: {len(extractions)} documents, {len(criteria)} criteria "
        f"({sum(c.windows > 1 for c in criteria)} longer than the model's maximum length, "
        f"windowed), {blank} blank lines skipped; {sum(len(c.entities) for c in criteria)} "
        f"entities, {sum(len(c.relations) for c in criteria)} relations; "
        f"{len(criteria) / max(seconds, 1e-9):.1f} criteria/s",
        file=sys.stderr,
    )


if __name__ == "__main__":
    _define_flags()
    cli.run(main, "extract", required=("workdir", "input", "output"))
