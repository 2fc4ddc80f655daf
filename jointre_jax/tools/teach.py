"""Writes a teacher's span distributions of a split, for knowledge distillation.

    jointre teach --workdir=runs/span_s0 --ensemble=runs/span_s1,runs/span_s2 \
        --out=runs/teacher.npz
    python -m jointre_jax.main --config=configs/minilm_span.py --workdir=runs/student \
        --config.data.teacher_file=runs/teacher.npz --config.model.distillation_weight=0.5

The teacher is the run in ``--workdir`` (its best parameters), or the ensemble of it and the
``--ensemble`` runs (mean span probabilities); it reads the training split of its own config
(``--split``: another). The file (:mod:`jointre_jax.distillation`) holds, for every example, the
distribution over span classes of each candidate span; a student reads it when its own
training examples are the same (checked example by example).
"""

from __future__ import annotations

import json

from absl import app, flags
from absl import logging as absl_logging

from jointre_jax import cli
from jointre_jax.data.corpus import load_split
from jointre_jax.distillation import save_teacher, teacher_span_probs
from jointre_jax.inference import load_run

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """Command-line flags, defined only when run as a program (imports never clash)."""
    flags.DEFINE_string("workdir", None, "Run directory of a trained span-decoder model.")
    cli.define_ensemble_flag()
    flags.DEFINE_string("split", None, "Split to read (default: the run's data.train_split).")
    flags.DEFINE_string("out", None, "Where to write the teacher's span tables (.npz).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    absl_logging.set_verbosity(absl_logging.WARNING)
    out = cli.prepare_output(FLAGS.out, "out")
    config, predictor, encoder = load_run(FLAGS.workdir, None, {}, tuple(FLAGS.ensemble))
    split = FLAGS.split or str(config.data.train_split)
    data = load_split(config, split, encoder)
    tables = teacher_span_probs(predictor, data.examples, desc=f"teacher on {split}")
    runs = ",".join([FLAGS.workdir, *FLAGS.ensemble])
    with open(out, "wb") as f:
        save_teacher(f, data.examples, tables, runs=runs, split=split)
    spans = int(sum((t.sum(-1) > 0).sum() for t in tables))
    entity = float(sum((t[..., 1:].sum(-1)).sum() for t in tables))  # expected entities
    print(json.dumps({
        "out": FLAGS.out, "split": split, "examples": len(tables), "spans": spans,
        "teacher_runs": runs.split(","), "expected_entities": round(entity, 1),
        "bytes": int(sum(t.nbytes for t in tables)), "dtype": "float16",
    }))  # fmt: skip


if __name__ == "__main__":
    _define_flags()
    cli.run(main, "teach", required=("workdir", "out"))
