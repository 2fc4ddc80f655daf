"""Scores a trained run on any BRAT folder, in the form of ``metrics.json``.

    jointre evaluate --model=DIR|HUB_ID|--workdir=RUN --brat_dir=D [--split_file=F] \
        --out=FILE [--ensemble=DIR2,DIR3]

The model's own config (``RUN/config.json``, or a model folder's) gives the schema, tokenizer
and model; the best checkpoint (``RUN/best``, else the latest) or the model folder's weights
give the parameters. Scores count against the
corpus gold (every annotation of the kept types, the ``corpus`` block) and the encoded gold
(what the run's label scheme can hold). ``--split_file`` restricts the
folder to the documents it lists (id prefixes, one a line).
"""

from __future__ import annotations

import json
import sys

import jax
from absl import app, flags
from absl import logging as absl_logging

from jointre_jax import cli
from jointre_jax.inference import evaluate_folder
from jointre_jax.labels import SPAN_NESTING

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """Command-line flags, defined only when run as a program (imports never clash)."""
    cli.define_model_flags()
    flags.DEFINE_string("brat_dir", None, "Folder of NAME.txt + NAME.ann files.")
    flags.DEFINE_string("split_file", None, "Optional list of document ids.")
    flags.DEFINE_string("out", None, "Where to write the scores (JSON).")
    flags.DEFINE_float(
        "decision_threshold", None,
        "Override the run's model.decision_threshold (0: argmax; t: an entity or relation "
        "wherever 1 - P(none) >= t). Choose it on dev, never on test.",
    )  # fmt: skip
    flags.DEFINE_enum(
        "span_nesting", None, list(SPAN_NESTING),
        "Override the run's model.span_nesting (span decoder: which nested entities decoding "
        "keeps). Choose it on dev, never on test.",
    )  # fmt: skip


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    absl_logging.set_verbosity(absl_logging.WARNING)
    overrides = {}
    if FLAGS.decision_threshold is not None:
        overrides["model.decision_threshold"] = FLAGS.decision_threshold
    if FLAGS.span_nesting is not None:
        overrides["model.span_nesting"] = FLAGS.span_nesting
    model = cli.model_flag()
    out = cli.prepare_output(FLAGS.out, "out")  # before the work, not after
    results = evaluate_folder(
        model, FLAGS.brat_dir, FLAGS.split_file, None, overrides, FLAGS.ensemble
    )
    out.write_text(json.dumps(results, indent=1))
    encoded = {k: round(results[k]["f1"], 4) for k in ("ner", "re_gs", "re_e2e")}
    corpus = {k: round(results["corpus"][k]["f1"], 4) for k in ("ner", "re_e2e")}
    summary = {"corpus_gold": corpus, "encoded_gold": encoded}
    for line in problem_lines(results):
        print(f"evaluate: {line}", file=sys.stderr)
    print(json.dumps({"out": FLAGS.out, "f1": summary, "devices": jax.device_count()}))


def problem_lines(results: dict) -> list[str]:
    """What a user should know besides the F1s: what was not read or not representable, and
    scores with no gold to count against."""
    data, lines = results["data"], []
    lines.append(
        f"{data['documents']} documents, {data['criteria']} criteria; corpus gold: "
        f"{results['corpus']['gold']['entities']} entities, "
        f"{results['corpus']['gold']['relations']} relations"
    )
    for name in ("entities", "relations"):
        dropped = data[name]["dropped"]
        if dropped:
            listed = ", ".join(f"{k} {v}" for k, v in dropped.items())
            lines.append(f"{name} dropped from the encoded gold (by reason): {listed}")
    if data["skipped"]:
        listed = ", ".join(f"{k} {v}" for k, v in data["skipped"].items())
        lines.append(f"not read: {listed}; see 'problems' in {FLAGS.out}")
    if results.get("entity_overflow"):
        lines.append(f"entities beyond the model's table: {results['entity_overflow']}")
    gold = results["corpus"]["gold"]
    if not gold["entities"]:
        lines.append("no gold entities: NER and RE scores have nothing to count against")
    elif not gold["relations"]:
        lines.append("no gold relations: RE scores have nothing to count against (0.0)")
    return lines


if __name__ == "__main__":
    _define_flags()
    cli.run(main, "evaluate", required=("brat_dir", "out"))
