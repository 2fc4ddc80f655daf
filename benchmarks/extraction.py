"""End-to-end extraction throughput of a trained run: raw criteria text to JSON lines.

    python -m benchmarks.extraction --workdir=RUN [--input=FILE|DIR] [--split=test]
        [--rounds=2] [--json=FILE]

Times ``Extractor.extract`` plus the JSON-lines serialisation of its output, the whole of what
``python -m jointre_jax.tools.extract`` does between reading the input and writing it, on the raw
``.txt`` documents of a split of the run's corpus (default: Chia's test split) or on
``--input``. The first pass compiles the run's shapes (``cold``); later passes alternate the
run's own batches (packed rows, or length buckets for a run trained before packing: ``warm``)
and one criterion a row padded to the maximum length (``fixed``) on the same Extractor state,
and the fastest pass of each counts. ``encode_seconds`` is the share of that fastest warm pass
spent reading lines, tokenising and windowing (no model).

The JSON holds ``criteria``, ``documents``, ``windowed`` lines, ``entities`` and ``relations``
found, ``cold``, ``warm`` and ``fixed`` (seconds, criteria/s), ``speedup`` (fixed seconds over
warm seconds), ``packing``, ``compiled_shapes`` and the machine.
"""

from __future__ import annotations

import copy
import io
import time

from absl import app, flags
from absl import logging as absl_logging

from benchmarks.throughput import machine, print_and_save
from jointre_jax import cli
from jointre_jax.data.brat import read_text
from jointre_jax.data.corpus import split_documents
from jointre_jax.data.inputs import read_inputs
from jointre_jax.extraction import Extractor, iter_records
from jointre_jax.writers import write_jsonl

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """Command-line flags, defined only when run as a program (imports never clash)."""
    flags.DEFINE_string("workdir", None, "Trained run (best checkpoint).")
    flags.DEFINE_string("input", None, "Text file or folder of .txt files (default: --split).")
    flags.DEFINE_string("split", "test", "Split of the run's corpus whose raw text is used.")
    flags.DEFINE_integer("rounds", 2, "Timed passes per side (the fastest counts).")
    flags.DEFINE_string("json", None, "Write the results to this JSON file.")


def split_texts(config, split: str) -> tuple[list[str], list[str]]:
    """(doc_ids, raw texts) of the documents of ``split`` in the corpus at ``config.data.dir``."""
    paths = split_documents(config, split)
    return [p.stem for p in paths], [read_text(p) for p in paths]


def _timed_pass(extractor: Extractor, doc_ids, texts) -> tuple[float, float, list]:
    """Seconds to extract ``texts`` and serialise them as JSON lines, the seconds of that pass
    spent encoding (no model), and the extractions."""
    start = time.perf_counter()
    encoded = extractor.encode(texts, doc_ids)
    encode_seconds = time.perf_counter() - start
    extractions = extractor.extract_encoded(texts, doc_ids, *encoded)
    write_jsonl(extractions, io.StringIO())
    return time.perf_counter() - start, encode_seconds, extractions


def fixed_length_extractor(extractor: Extractor) -> Extractor:
    """The same parameters and jitted function, one criterion a row padded to the model's
    maximum length (``data.max_length``)."""
    config = copy.deepcopy(extractor.config)
    with config.unlocked():
        config.data.packing = False
        config.data.bucket_boundaries = (int(config.data.max_length),)
    predictor = copy.copy(extractor.predictor)  # the same parameters and jitted function
    predictor.config = config
    return Extractor(config, predictor, extractor.encoder)


def run(extractor: Extractor, doc_ids, texts, rounds: int = 2) -> dict:
    """All measurements of ``extractor`` on ``texts`` (see the module docstring)."""
    cold, _, extractions = _timed_pass(extractor, doc_ids, texts)
    compiled = extractor.predictor.predict_fn._cache_size()
    fixed = fixed_length_extractor(extractor)
    _timed_pass(fixed, doc_ids, texts)  # compiles the full-length shape
    best = {"warm": (float("inf"), 0.0), "fixed": (float("inf"), 0.0)}
    for _ in range(rounds):
        for name, side in (("warm", extractor), ("fixed", fixed)):
            best[name] = min(best[name], _timed_pass(side, doc_ids, texts)[:2])
    (warm, encode), (fixed_seconds, _) = best["warm"], best["fixed"]
    criteria = list(iter_records(extractions))
    count = len(criteria)
    rate = lambda seconds: {"seconds": seconds, "criteria_per_s": count / seconds}
    return {
        "criteria": count,
        "documents": len(texts),
        "windowed": sum(c.windows > 1 for c in criteria),
        "entities": sum(len(c.entities) for c in criteria),
        "relations": sum(len(c.relations) for c in criteria),
        "cold": rate(cold),
        "warm": rate(warm),
        "fixed": rate(fixed_seconds),
        "speedup": fixed_seconds / warm,
        "encode_seconds": encode,
        "packing": bool(extractor.config.data.packing),
        "compiled_shapes": compiled,
        "bucket_boundaries": list(extractor.config.data.bucket_boundaries),
        "eval_batch_size": int(extractor.config.data.eval_batch_size),
        "rounds": rounds,
        "machine": machine(),
    }


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    absl_logging.set_verbosity(absl_logging.WARNING)
    if FLAGS.json:
        cli.prepare_output(FLAGS.json, "json")  # before the measurements
    extractor = Extractor.from_workdir(FLAGS.workdir)
    if FLAGS.input:
        doc_ids, texts = read_inputs(FLAGS.input)
    else:
        doc_ids, texts = split_texts(extractor.config, FLAGS.split)
    results = {"workdir": str(FLAGS.workdir), "input": FLAGS.input or f"split {FLAGS.split}"}
    results.update(run(extractor, doc_ids, texts, FLAGS.rounds))
    print_and_save(results, FLAGS.json)


if __name__ == "__main__":
    _define_flags()
    cli.run(main, "bench-extract", required=("workdir",))
