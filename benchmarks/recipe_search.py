"""The recipe search: a few training recipes of one decoder on a subset of Chia, scored on dev.

    python -m benchmarks.recipe_search --config=configs/minilm_span_search.py \
        --workdir=runs/recipe_span --out=benchmarks/recipes/span [--recipes=all|NAME,...] \
        [--config.x=y ...]

Each recipe is a named set of overrides of the base config (learning rates, batch size, loss
weights), trained in ``WORKDIR/NAME`` with ``train.train_and_evaluate`` on the budget the
flags give (default: the first 2,048 training criteria, 4 epochs, the first 600 dev
criteria). A finished run (its ``metrics.jsonl`` has every epoch) is skipped and an interrupted
one resumes, so rerunning the command finishes the search. ``OUT.md`` and ``OUT.json`` rank the
recipes by the sum of dev NER F1 and dev strict end-to-end RE F1 against the corpus gold, at the
best epoch of each run. Test scores are never looked at here: the winner is confirmed on the
whole training split, then tested, by ``jointre_jax.main``.
"""

from __future__ import annotations

import copy
import json
import logging
import pathlib
import shlex
import sys

import jax
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from benchmarks.throughput import machine
from jointre_jax import cli, train
from jointre_jax.inference import apply_overrides

log = logging.getLogger("jointre_jax.recipe_search")

# name -> overrides of config.optim / config.model / config.data ("section.field": value).
RECIPES = {
    "base": {},
    "lr_2e-4": {"optim.learning_rate": 2e-4},
    "head_lr_1e-3": {"optim.head_learning_rate": 1e-3},
    "head_lr_same": {"optim.head_learning_rate": 0.0},
    "batch_16": {"data.batch_size": 16},
    "batch_8": {"data.batch_size": 8},
    "ner_weight_3": {"model.ner_loss_weight": 3.0},
}
FLAGS = flags.FLAGS


def _define_flags() -> None:
    config_flags.DEFINE_config_file("config", None, "Base config (configs/*.py).")
    flags.DEFINE_string("workdir", None, "Where the runs go.")
    flags.DEFINE_string("out", None, "Table path without suffix (.md and .json are written).")
    flags.DEFINE_list("recipes", ["all"], f"Recipes: all, or some of {sorted(RECIPES)}.")
    flags.DEFINE_integer("train_examples", 2048, "Training criteria of the subset.")
    flags.DEFINE_integer("eval_examples", 600, "Dev criteria scored after each epoch.")
    flags.DEFINE_integer("epochs", 4, "Epochs of each run.")


def recipe_config(base, overrides: dict, train_examples: int, eval_examples: int, epochs: int):
    """``base`` with a recipe's overrides on the search budget (a copy)."""
    config = copy.deepcopy(base)
    with config.unlocked():
        config.data.max_train_examples = train_examples
        config.data.max_eval_examples = eval_examples
        config.num_epochs = epochs
        config.eval_before_training = False
        config.checkpoint_every_steps = 0
    apply_overrides(config, overrides)
    return config


def best_epoch(rundir: pathlib.Path, epochs: int) -> dict | None:
    """The metrics.jsonl line of the best dev epoch (corpus NER + RE F1), None if unfinished."""
    path = rundir / "metrics.jsonl"
    if not path.exists():
        return None
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    lines = [x for x in lines if x["epoch"] > 0]
    if len(lines) < epochs:
        return None
    return max(lines, key=score)


def score(line: dict) -> float:
    return line["dev_corpus_ner_f1"] + line["dev_corpus_re_e2e_f1"]


def table(rows: list[dict], command: str, budget: str) -> str:
    """The markdown table of finished recipes, best first."""
    out = [
        f"Command: `{command}`",
        "",
        f"Budget: {budget}. Machine: {machine()['processor']}, {machine()['cpu_count']} cores, "
        f"{machine()['backend']} backend. Dev scores, best epoch of each run, F1 in "
        "percent against the corpus gold and against the encoded gold (as labelled).",
        "",
        "| recipe | overrides | best epoch | dev NER F1 (corpus) | dev RE e2e F1 (corpus) | "
        "dev NER F1 (encoded) | dev RE e2e F1 (encoded) | epoch seconds |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in sorted(rows, key=lambda r: -score(r["best"])):
        best = row["best"]
        overrides = ", ".join(f"{k}={v}" for k, v in row["overrides"].items()) or "(none)"
        out.append(
            f"| {row['name']} | {overrides} | {best['epoch']} | "
            f"{100 * best['dev_corpus_ner_f1']:.1f} | {100 * best['dev_corpus_re_e2e_f1']:.1f} | "
            f"{100 * best['dev_ner_f1']:.1f} | {100 * best['dev_re_e2e_f1']:.1f} | "
            f"{row['epoch_seconds']:.0f} |"
        )
    return "\n".join(out) + "\n"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("jointre_jax").setLevel(logging.INFO)
    cli.prepare_output(FLAGS.out + ".md", "out")  # before the runs
    names = list(RECIPES) if FLAGS.recipes == ["all"] else FLAGS.recipes
    unknown = sorted(set(names) - RECIPES.keys())
    if unknown:
        raise app.UsageError(f"unknown recipes {unknown}: choose from {sorted(RECIPES)}")
    workdir = pathlib.Path(FLAGS.workdir)
    rows = []
    for name in names:
        rundir = workdir / name
        if best_epoch(rundir, FLAGS.epochs) is None:
            log.info("recipe %s", name)
            config = recipe_config(
                FLAGS.config, RECIPES[name], FLAGS.train_examples, FLAGS.eval_examples, FLAGS.epochs
            )
            train.train_and_evaluate(config, rundir)
            jax.clear_caches()
        lines = [json.loads(x) for x in (rundir / "metrics.jsonl").read_text().splitlines()]
        seconds = [x["seconds"] for x in lines if x["epoch"] > 0]
        rows.append(
            {
                "name": name,
                "overrides": RECIPES[name],
                "best": best_epoch(rundir, FLAGS.epochs),
                "epoch_seconds": sum(seconds) / len(seconds),
            }
        )
    command = " ".join(["python -m benchmarks.recipe_search", *map(shlex.quote, sys.argv[1:])])
    out = pathlib.Path(FLAGS.out)  # its folder: cli.prepare_output, before the runs
    budget_text = (
        f"first {FLAGS.train_examples} training criteria, {FLAGS.epochs} epochs, "
        f"first {FLAGS.eval_examples} dev criteria"
    )
    out.with_suffix(".md").write_text(table(rows, command, budget_text))
    budget = {
        "train_examples": FLAGS.train_examples,
        "eval_examples": FLAGS.eval_examples,
        "epochs": FLAGS.epochs,
    }
    out.with_suffix(".json").write_text(
        json.dumps(
            {"command": command, "budget": budget, "machine": machine(), "recipes": rows},
            indent=1,
        )
    )
    print(table(rows, command, budget_text))


if __name__ == "__main__":
    _define_flags()
    cli.run(main, "recipe_search", required=("config", "workdir", "out"))
