"""A majority vote of several runs' saved extractions, and its scores against the corpus gold.

    jointre vote --extractions=A.jsonl.gz,B.jsonl.gz,C.jsonl.gz \
        [--min_votes=N] [--output=VOTED.jsonl] \
        [--config=configs/minilm_span.py --brat_dir=D [--split_file=F] --scores=FILE]

Each extraction is ``jointre extract --format=jsonl`` output (gzipped or not) of
the same documents; the vote keeps what at least ``--min_votes`` of them predict (default: a
strict majority; :mod:`jointre_jax.voting`). ``--output`` writes the voted extraction in the
same jsonl form. With ``--brat_dir``, every extraction and the vote are scored against that
folder's corpus gold (the schema of ``--config``: its kept entity and relation types), as the
``corpus`` block of ``evaluate`` scores a run, and ``--scores`` gets them all (JSON). A summary
goes to standard output.
"""

from __future__ import annotations

import json
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from jointre_jax import cli, voting
from jointre_jax.data.schema import Schema
from jointre_jax.errors import UserError

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """Command-line flags, defined only when run as a program (imports never clash)."""
    flags.DEFINE_list(
        "extractions", None, "extract --format=jsonl files (.gz too), comma-separated."
    )
    flags.DEFINE_integer(
        "min_votes", None, "Votes an entity or relation needs (default: majority)."
    )
    flags.DEFINE_string("output", None, "Where to write the voted extraction (jsonl).")
    config_flags.DEFINE_config_file("config", None, "Config file of the runs (its schema).")
    flags.DEFINE_string("brat_dir", None, "Folder of NAME.txt + NAME.ann files: the gold.")
    flags.DEFINE_string("split_file", None, "Optional list of document ids of --brat_dir.")
    flags.DEFINE_string("scores", None, "Where to write the scores (JSON; needs --brat_dir).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    absl_logging.set_verbosity(absl_logging.WARNING)
    if not FLAGS.output and not FLAGS.brat_dir:
        raise UserError("nothing to do: give --output (the voted extraction) or --brat_dir")
    if FLAGS.brat_dir and (FLAGS.config is None or not FLAGS.scores):
        raise UserError("--brat_dir needs --config (the runs' schema) and --scores")
    if FLAGS.scores and not FLAGS.brat_dir:
        raise UserError("--scores needs --brat_dir (the gold to score against)")
    output = cli.prepare_output(FLAGS.output, "output") if FLAGS.output else None
    scores_path = cli.prepare_output(FLAGS.scores, "scores") if FLAGS.scores else None
    runs = [voting.read_extraction(path) for path in FLAGS.extractions]
    min_votes = voting.majority(len(runs)) if FLAGS.min_votes is None else FLAGS.min_votes
    voted = voting.vote(runs, min_votes, FLAGS.extractions)
    if output is not None:
        with open(output, "w", encoding="utf-8") as f:
            for criterion in voted:
                f.write(json.dumps(criterion, ensure_ascii=False) + "\n")
    summary = {"extractions": len(runs), "min_votes": min_votes, "output": FLAGS.output}
    if FLAGS.brat_dir:
        schema = Schema.from_config(FLAGS.config.data)
        gold, skipped = voting.corpus_gold(
            schema, FLAGS.brat_dir, FLAGS.split_file, bool(FLAGS.config.data.lenient)
        )
        for message in skipped:
            print(f"vote: not read: {message}", file=sys.stderr)
        named = list(zip(FLAGS.extractions, runs, strict=True)) + [("vote", voted)]
        results = {name: voting.score(criteria, gold, name) for name, criteria in named}
        scores_path.write_text(
            json.dumps({"min_votes": min_votes, "skipped": skipped, "scores": results}, indent=1)
        )
        summary["f1"] = {
            name: {k: round(r[k]["f1"], 4) for k in ("ner", "re_e2e")}
            for name, r in results.items()
        }
        summary["gold"] = gold.to_dict()
    print(json.dumps(summary))


if __name__ == "__main__":
    _define_flags()
    cli.run(main, "vote", required=("extractions",))
