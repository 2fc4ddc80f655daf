"""Extract entities and relations from raw criteria with a trained run.

    python -m jointre_jax.extract --workdir=DIR --input=PATH|- --output=PATH|- \
        [--format=jsonl|brat|csv] [--grouped=FILE]

Input: a text file (one criterion per line), a folder of ``.txt`` files (one document each),
or ``-`` for standard input. Input must be UTF-8; anything else stops with the file and line of
the first bad byte. Output:

* ``jsonl``: one JSON object per criterion line (``doc_id``, ``line``, ``start``, ``end``,
  ``text``, ``entities`` [id, type, start, end, text], ``relations`` [type, head, tail,
  score], ``windows``), offsets into the input document;
* ``brat``: a folder with ``DOC.txt`` (the input text, byte for byte) and ``DOC.ann`` (T and R
  lines) per document, which ``jointre_jax.data.brat.read_document`` reads back unchanged;
* ``csv``: one row per entity and per relation (``kind`` column).

``--grouped=FILE`` also writes the grouped view (``jointre_jax.grouping``), one JSON object per
criterion. A summary (documents, criteria, blank lines, windowed lines, entities, relations,
sentences/s) goes to standard error.
"""

from __future__ import annotations

import csv
import io
import json
import pathlib
import sys
import time

from absl import app, flags
from absl import logging as absl_logging

from jointre_jax import cli
from jointre_jax.data.brat import BratFormatError, read_text, write_document
from jointre_jax.data.encode import split_lines
from jointre_jax.errors import UserError
from jointre_jax.extraction import DocumentExtraction, Extractor, iter_records
from jointre_jax.grouping import group_criterion

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """Command-line flags, defined only when run as a program (imports never clash)."""
    flags.DEFINE_string("workdir", None, "Training run directory (best checkpoint).")
    flags.DEFINE_string("input", None, "Text file, folder of .txt files, or - (stdin).")
    flags.DEFINE_string("output", None, "Output file (jsonl, csv; - = stdout) or folder.")
    flags.DEFINE_enum("format", "jsonl", ["jsonl", "brat", "csv"], "Output format.")
    flags.DEFINE_string("grouped", None, "Also write the grouped view (JSON lines).")
    flags.DEFINE_integer("num_devices", None, "Devices to use (default: the run's).")


def read_inputs(source: str) -> tuple[list[str], list[str]]:
    """(doc_ids, texts) of ``source``: a file, a folder of .txt files, or "-" (stdin).

    Raises UserError for a missing path or an empty folder, BratFormatError (file and line)
    for text that is not UTF-8.
    """
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
    columns = ["kind", "doc_id", "line", "id", "type", "start", "end", "text", "head", "tail"]
    writer = csv.writer(stream)
    writer.writerow([*columns, "score"])
    for criterion in iter_records(extractions):
        for e in criterion.entities:
            writer.writerow(
                ["entity", criterion.doc_id, criterion.line, e.id, e.type, e.start, e.end,
                 e.text, "", "", ""]
            )  # fmt: skip
        for n, r in enumerate(criterion.relations):
            writer.writerow(
                ["relation", criterion.doc_id, criterion.line, f"R{criterion.line}_{n + 1}",
                 r.type, "", "", "", r.head, r.tail, r.score]
            )  # fmt: skip


def write_brat(extractions: list[DocumentExtraction], folder: pathlib.Path) -> None:
    for extraction in extractions:
        entities = [(e.id, e.type, [(e.start, e.end)], e.text) for e in extraction.entities]
        relations = [
            (f"R{n + 1}", r.type, r.head, r.tail) for n, r in enumerate(extraction.relations)
        ]
        write_document(extraction.doc_id, extraction.text, entities, relations, folder)


def _open(target: str):
    if target == "-":
        return io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", newline=""), False
    pathlib.Path(target).parent.mkdir(parents=True, exist_ok=True)
    return open(target, "w", encoding="utf-8", newline=""), True


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    absl_logging.set_verbosity(absl_logging.WARNING)
    if FLAGS.format == "brat" and FLAGS.output == "-":
        raise UserError("--format=brat needs an output folder, not -")
    cli.prepare_output(FLAGS.output, "output", folder=FLAGS.format == "brat")
    if FLAGS.grouped:
        cli.prepare_output(FLAGS.grouped, "grouped")
    doc_ids, texts = read_inputs(FLAGS.input)
    extractor = Extractor.from_workdir(FLAGS.workdir, FLAGS.num_devices)
    started = time.perf_counter()
    extractions = extractor.extract(texts, doc_ids, progress=True)
    seconds = time.perf_counter() - started
    if FLAGS.format == "brat":
        write_brat(extractions, pathlib.Path(FLAGS.output))
    else:
        stream, close = _open(FLAGS.output)
        (write_jsonl if FLAGS.format == "jsonl" else write_csv)(extractions, stream)
        stream.close() if close else stream.flush()
    if FLAGS.grouped:
        stream, close = _open(FLAGS.grouped)
        write_grouped(extractions, stream)
        stream.close() if close else stream.flush()
    criteria = list(iter_records(extractions))
    blank = sum(not t[a:b].strip() for t in texts for _, a, b in split_lines(t) if a < len(t))
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
