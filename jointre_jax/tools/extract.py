"""Extract entities and relations from criteria with a trained run.

    jointre extract --workdir=DIR --input=PATH|- --output=PATH|- \
        [--format=jsonl|brat|csv|html] [--input_format=auto|text|ctgov|aact] [--lenient] \
        [--grouped=FILE] [--split_file=F] [--ensemble=DIR2,DIR3]

Input (``--input_format``, detected from the content by default):

* plain text: a file (one criterion per line), a folder of ``.txt`` files (one document
  each; with ``--split_file``, only the documents it lists, as ``evaluate`` reads a corpus
  split), or ``-`` for standard input;
* ClinicalTrials.gov records (:mod:`jointre_jax.data.trials`): API v2 study JSON (one study, the
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

import os
import pathlib
import sys
import time

from absl import app, flags
from absl import logging as absl_logging

from jointre_jax import cli, review_page
from jointre_jax.data import trials
from jointre_jax.data.encode import split_lines
from jointre_jax.data.inputs import read_inputs
from jointre_jax.errors import UserError
from jointre_jax.extraction import Extractor, extract_trials, iter_records
from jointre_jax.writers import write_brat, write_csv, write_grouped, write_jsonl, write_to

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
        write_to(FLAGS.output, lambda stream: stream.write(page))
    else:
        writer = write_jsonl if FLAGS.format == "jsonl" else write_csv
        write_to(FLAGS.output, lambda stream: writer(extractions, stream))
    if FLAGS.grouped:
        write_to(FLAGS.grouped, lambda stream: write_grouped(extractions, stream))
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
