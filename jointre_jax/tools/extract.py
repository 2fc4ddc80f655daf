"""Extract entities and relations from criteria with a trained run, streamed into a store.

    jointre extract --model=DIR|HUB_ID|--workdir=RUN --input=PATH|-|postgresql://...
        --output=FILE.duckdb|postgresql://...|PATH|- [--format=jsonl|brat|csv|html]
        [--input_format=auto|text|ctgov|aact] [--lenient]
        [--grouped=FILE] [--split_file=F] [--ensemble=DIR2,DIR3]
        [--shard=I/N] [--chunk_records=256] [--input_table=ctgov.eligibilities]
        [--db_schema=jointre]

Input (``--input_format``, detected from the content by default):

* plain text: a file (one criterion per line), a folder of ``.txt`` files (one document
  each; with ``--split_file``, only the documents it lists, as ``evaluate`` reads a corpus
  split), or ``-`` for standard input;
* ClinicalTrials.gov records (:mod:`jointre_jax.data.trials`): API v2 study JSON (one study, the
  search page ``{"studies": [...]}``, JSON lines, or a folder of ``.json`` files), or AACT's
  ``eligibilities.txt``, read as a stream. Each record's criteria text is split into criteria,
  each with its ``nct_id``, ``section`` (inclusion, exclusion, none) and ``start``/``end``
  offsets in the record's criteria string. A bad record stops with the file and record, or
  with ``--lenient`` is skipped and counted (in the summary, and in a database's ``skipped``);
* ``postgresql://...``: AACT's ``ctgov.eligibilities`` (``nct_id``, ``criteria``;
  ``--input_table``), read in ``nct_id`` order through a server-side cursor.

Input must be UTF-8; anything else stops with the file and line of the first bad byte. Output:

* ``FILE.duckdb`` (DuckDB) or ``postgresql://...`` (tables in ``--db_schema``): the store's
  schema (:mod:`jointre_jax.store.schema`), a chunk per transaction;
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
* ``html``: one self-contained page to review the extraction (:mod:`jointre_jax.review_page`;
  made whole at the end, so for small inputs).

Records are read, extracted and written ``--chunk_records`` at a time
(:mod:`jointre_jax.streaming`); rerunning the same command after a kill, a full disk or a lost
node goes on after the last committed chunk, and an output made by another model, config or
input is refused by name. ``--shard=I/N``: this process does chunks I, I+N, ... (0-based); a
database is shared by the shards of PostgreSQL, while files and DuckDB get one per shard
(``out.shard-I-of-N.duckdb``; ``jointre merge`` joins DuckDB's). ``--grouped=FILE`` also
writes the grouped view (``jointre_jax.grouping``). A summary goes to standard error.
"""

from __future__ import annotations

import os
import pathlib
import sys

from absl import app, flags
from absl import logging as absl_logging

from jointre_jax import cli, review_page, store, streaming
from jointre_jax.data import trials
from jointre_jax.data.encode import split_lines
from jointre_jax.data.inputs import read_inputs
from jointre_jax.errors import UserError
from jointre_jax.extraction import Extractor
from jointre_jax.store import postgres
from jointre_jax.writers import write_to

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """Command-line flags, defined only when run as a program (imports never clash)."""
    cli.define_model_flags()
    flags.DEFINE_string(
        "input", None,
        "Text file, folder of .txt files, - (stdin), ClinicalTrials.gov records (JSON, JSON "
        "lines, folder, AACT eligibilities.txt) or postgresql://... (AACT's table).",
    )  # fmt: skip
    flags.DEFINE_string(
        "split_file", None,
        "With a folder --input: only the documents it lists (id prefixes, one a line; "
        "a corpus split, as in evaluate).",
    )  # fmt: skip
    flags.DEFINE_string(
        "output", None,
        "FILE.duckdb, postgresql://..., a file (jsonl, csv, html; - = stdout) or a folder "
        "(brat).",
    )  # fmt: skip
    flags.DEFINE_enum("format", "jsonl", ["jsonl", "brat", "csv", "html"],
                      "Output format of a file or folder --output.")  # fmt: skip
    flags.DEFINE_enum(
        "input_format", "auto", list(trials.FORMATS),
        "auto: detected from the content; text: one criterion a line; ctgov: "
        "ClinicalTrials.gov API v2 study records (JSON, search page, JSON lines, folder); "
        "aact: AACT's pipe-delimited eligibilities.txt.",
    )  # fmt: skip
    flags.DEFINE_bool("lenient", False, "Skip (and count) bad records instead of stopping.")
    flags.DEFINE_string("grouped", None, "Also write the grouped view (JSON lines).")
    flags.DEFINE_integer("num_devices", None, "Devices to use (default: the run's).")
    flags.DEFINE_string("shard", "0/1", "I/N: this process does chunks I, I+N, ... (0-based).")
    flags.DEFINE_integer("chunk_records", 256, "Records per chunk (the unit of resuming).",
                         lower_bound=1)  # fmt: skip
    flags.DEFINE_string("input_table", postgres.DEFAULT_TABLE,
                        "The table of a postgresql:// --input (nct_id, criteria).")  # fmt: skip
    flags.DEFINE_string("db_schema", "jointre",
                        "The schema of a postgresql:// --output's tables.")  # fmt: skip


def _shard(value: str) -> tuple[int, int]:
    try:
        shard, num_shards = (int(x) for x in value.split("/"))
    except ValueError:
        raise UserError(f"--shard={value}: give I/N, such as 0/4") from None
    if not 0 <= shard < num_shards:
        raise UserError(f"--shard={value}: I must be at least 0 and below N")
    return shard, num_shards


class _Collected:
    """The store of the review page: the extractions kept in memory, written at the end."""

    name = "html"

    def __init__(self):
        self.extractions = []

    def committed(self):
        return {}

    def write(self, chunk, extractions, shard, num_shards):
        self.extractions.extend(extractions)
        return store.schema.counts(extractions)

    def finish(self, *_):
        pass

    def close(self):
        pass


def _name(model: str) -> str:
    """A model as the store's ``runs`` row names it: a folder resolved, a hub id as given."""
    path = pathlib.Path(os.path.expanduser(model))
    return str(path.resolve()) if path.exists() else model


def _entries():
    """(entries, total or None, input name, blank lines) of ``--input``; bad paths, formats,
    servers and tables stop here, before any work."""
    source = FLAGS.input
    if store.is_url(source):
        table = postgres.Eligibilities(source, FLAGS.input_table)
        return table.entries(FLAGS.lenient), table.count(), table.name, 0
    fmt = FLAGS.input_format
    if fmt == "auto" and source != "-" and os.path.exists(source):
        fmt = trials.detect_format(pathlib.Path(source))
    if fmt in ("ctgov", "aact"):
        if FLAGS.split_file:
            raise UserError("--split_file selects .txt documents, not trial records")
        # One pass before any work counts the records (the progress bar's ETA) and, without
        # --lenient, finds a bad record now rather than hours into the job; a JSON-lines
        # file is counted by its lines. The records are then streamed again.
        total = trials.count_entries(source, fmt) if FLAGS.lenient else None
        if total is None:
            total = sum(1 for _ in trials.iter_entries(source, fmt, FLAGS.lenient))
        if not total:
            raise UserError(f"--input={source}: no records")
        name = str(pathlib.Path(source).resolve())
        return trials.iter_entries(source, fmt, FLAGS.lenient), total, name, 0
    doc_ids, texts = read_inputs(source, FLAGS.split_file)
    blank = sum(not t[a:b].strip() for t in texts for _, a, b in split_lines(t) if a < len(t))
    name = "stdin" if source == "-" else str(pathlib.Path(source).resolve())
    if FLAGS.split_file:
        name += f" split {pathlib.Path(FLAGS.split_file).resolve()}"
    documents = [streaming.TextDocument(d, t) for d, t in zip(doc_ids, texts, strict=True)]
    return documents, len(documents), name, blank


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    absl_logging.set_verbosity(absl_logging.WARNING)
    shard, num_shards = _shard(FLAGS.shard)
    model = cli.model_flag()
    kind = store.output_kind(FLAGS.output, FLAGS.format)
    if kind == "brat" and FLAGS.output == "-":
        raise UserError("--format=brat needs an output folder, not -")
    if kind == "html" and num_shards > 1:
        raise UserError("--format=html is one page of the whole input: no --shard")
    if kind in ("duckdb", "postgresql") and FLAGS.grouped:
        raise UserError("--grouped is a file output; a database holds every row already")
    output = FLAGS.output if kind == "postgresql" else store.shard_path(FLAGS.output, shard,
                                                                        num_shards)  # fmt: skip
    grouped = FLAGS.grouped and store.shard_path(FLAGS.grouped, shard, num_shards)
    if kind != "postgresql":
        cli.prepare_output(output, "output", folder=kind == "brat")
    if grouped:
        cli.prepare_output(grouped, "grouped")
    entries, total, input_name, blank = _entries()
    open_target = lambda: store.open_store(output, FLAGS.format, grouped, FLAGS.db_schema)  # noqa: E731
    # A server is checked before the model loads; a file is made only once the model has.
    target = open_target() if kind == "postgresql" else None
    extractor = Extractor.load(model, FLAGS.num_devices, FLAGS.ensemble)
    if target is None:
        target = _Collected() if kind == "html" else open_target()
    names = ",".join(_name(m) for m in [model, *FLAGS.ensemble])
    identity = streaming.run_identity(extractor, names, input_name, FLAGS.chunk_records,
                                      FLAGS.lenient)  # fmt: skip
    with store.writing(target):
        if kind != "html":
            target.open(identity)
        if kind == "postgresql":
            target.hold_shard(identity.key, shard, num_shards)
        summary = streaming.extract_into(
            extractor, entries, target, chunk_records=FLAGS.chunk_records, shard=shard,
            num_shards=num_shards, total=total,
        )  # fmt: skip
        totals = target.totals() if kind in ("duckdb", "postgresql") else None
    if kind == "html":
        info = review_page.run_info(extractor, model, FLAGS.ensemble)
        page = review_page.render(target.extractions, info)
        write_to(output, lambda stream: stream.write(page))
    records = not isinstance(entries, list)  # text inputs are a list of documents
    _report(summary, totals, blank, output if kind != "postgresql" else target.name, records)


def _report(summary, totals, blank: int, output: str, records: bool) -> None:
    say = lambda line: print(f"extract: {line}", file=sys.stderr)  # noqa: E731
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(summary.skipped.items())) or "none"
    resumed = f" ({summary.resumed} chunks were already committed)" if summary.resumed else ""
    what = "trial records" if records else "documents"
    say(f"{summary.records} {what} read; skipped: {skipped}{resumed}")
    for message in summary.messages[:20]:
        say(f"  {message}")
    say(f"{summary.criteria} criteria ({summary.windowed} longer than the model's maximum "
        f"length, windowed), {blank} blank lines skipped; {summary.entities} entities, "
        f"{summary.relations} relations; {summary.criteria / max(summary.seconds, 1e-9):.1f} "
        "criteria/s")  # fmt: skip
    if totals is not None:
        say(f"{output} holds {totals.chunks} chunks: {totals.records} records, "
            f"{totals.skipped} skipped, {totals.criteria} criteria, {totals.entities} entities, "
            f"{totals.relations} relations")  # fmt: skip


if __name__ == "__main__":
    _define_flags()
    cli.run(main, "extract", required=("input", "output"))
