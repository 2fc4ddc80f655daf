"""The paper's Table 4 as a grid of runs: configurations x seeds, then one markdown table.

The program is :mod:`jointre_jax.tools.grid` (``jointre grid``). Each (row, seed) trains in
``DIR/ROW/seed_S`` with ``train.train_and_evaluate`` (the same code as ``jointre_jax.main``);
a run whose ``metrics.json`` exists is skipped, and an interrupted one resumes from its
checkpoint, so rerunning the command finishes the grid. With ``process_count`` N the runs are
dealt round-robin and process I trains only its share; the table is written from whatever
``metrics.json`` files exist.

The table (``DIR/table4.md`` and ``DIR/table4.json``) has the columns of the paper's Table 4:
encoder, method, RE option, negative sampling, NER P/R/F, RE gs-based P/R/F, RE end-to-end P/R/F
(strict), each the mean and standard deviation over seeds, in percent. ``comparisons.md`` and
``comparisons.json`` hold the paper's findings as F1 differences between rows paired by seed
(joint vs standalone end-to-end RE, re_m2 vs re_m1, incremental vs gs-based negatives, joint vs
standalone NER).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import pathlib
import statistics

import jax

from jointre_jax import train
from jointre_jax.errors import UserError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Row:
    """One row of Table 4: its name (a directory), labels and the model overrides."""

    name: str
    method: str  # label in the table
    re_option: str
    negatives: str
    overrides: dict


# The paper's 9 rows per encoder.
_INC = {"negative_sampling": "incremental"}
_M2 = "re_m2 bilinear + linear"
_M2B = "re_m2 bilinear only"
ROWS = (
    Row("ner", "standalone NER", "-", "-", {"method": "ner"}),
    Row("re", "standalone RE (gold entities)", "re_m1", "gs-based",
        {"method": "re", "re_option": "m1"}),
    Row("pipeline", "standalone end-to-end", "re_m1", "gs-based",
        {"method": "pipeline", "re_option": "m1"}),
    Row("joint_m1_gs", "joint", "re_m1", "gs-based", {"re_option": "m1"}),
    Row("joint_m1_inc", "joint", "re_m1", "incremental", {"re_option": "m1", **_INC}),
    Row("joint_m2_gs", "joint", _M2, "gs-based", {"re_option": "m2"}),
    Row("joint_m2_inc", "joint", _M2, "incremental", {"re_option": "m2", **_INC}),
    Row("joint_m2b_gs", "joint", _M2B, "gs-based", {"re_option": "m2_bilinear"}),
    Row("joint_m2b_inc", "joint", _M2B, "incremental", {"re_option": "m2_bilinear", **_INC}),
)  # fmt: skip
ROWS_BY_NAME = {row.name: row for row in ROWS}
# Score groups a method has: standalone NER has no RE, standalone RE no NER or end-to-end RE.
SCORED = {"ner": ("ner",), "re": ("re_gs",)}
GROUPS = ("ner", "re_gs", "re_e2e")


def select_rows(names) -> list[Row]:
    """The rows named (``["all"]`` for all), in the table's order; unknown names fail."""
    if list(names) == ["all"]:
        return list(ROWS)
    unknown = sorted(set(names) - ROWS_BY_NAME.keys())
    if unknown:
        raise UserError(f"--rows: unknown rows {unknown}: choose from {sorted(ROWS_BY_NAME)}")
    return [row for row in ROWS if row.name in names]


def run_config(base, row: Row, seed: int):
    """``base`` with the row's model overrides and the seed (a copy)."""
    config = copy.deepcopy(base)
    with config.unlocked():
        for key, value in row.overrides.items():
            config.model[key] = value
        config.seed = int(seed)
    return config


def run_grid(base, workdir, rows, seeds, process_index=0, process_count=1) -> list[pathlib.Path]:
    """Trains this process's share of rows x seeds; returns the run directories it finished."""
    workdir = pathlib.Path(workdir)
    jobs = [(row, int(seed)) for seed in seeds for row in rows]  # every row of a seed first
    done = []
    for number, (row, seed) in enumerate(jobs):
        if number % process_count != process_index:
            continue
        rundir = workdir / row.name / f"seed_{seed}"
        if (rundir / "metrics.json").exists():
            log.info("%s seed %d: done already", row.name, seed)
            continue
        log.info("run %d/%d: %s seed %d", number + 1, len(jobs), row.name, seed)
        train.train_and_evaluate(run_config(base, row, seed), rundir)
        jax.clear_caches()  # compiled steps of this model are not needed by the next
        done.append(rundir)
    return done


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)


def finished_runs(workdir: pathlib.Path, row: str) -> dict[int, pathlib.Path]:
    """Seed -> ``metrics.json`` of every finished run of ``row`` in the grid at ``workdir``."""
    paths = (workdir / row).glob("seed_*/metrics.json")
    return {int(p.parent.name.removeprefix("seed_")): p for p in sorted(paths)}


def epoch_seconds(rundir: pathlib.Path) -> float:
    """Seconds of all epochs of the run in ``rundir``, summed from its ``metrics.jsonl``."""
    lines = (rundir / "metrics.jsonl").read_text().splitlines()
    return sum(json.loads(line).get("seconds", 0.0) for line in lines if line.strip())


def collect(workdir, rows, encoder: str) -> list[dict]:
    """Per row: labels, seeds found, mean/std of every P/R/F (fractions) and of the epochs'
    wall time in seconds (``train_seconds``)."""
    workdir = pathlib.Path(workdir)
    table = []
    for row in rows:
        found = finished_runs(workdir, row.name)
        runs = [found[seed] for seed in sorted(found)]
        scores = [json.loads(path.read_text()) for path in runs]
        entry = {
            "row": row.name, "encoder": encoder, "method": row.method,
            "re_option": row.re_option, "negatives": row.negatives, "seeds": sorted(found),
        }  # fmt: skip
        if runs:  # wall time of the epochs: training, compilation, dev evaluation, checkpoints
            entry["train_seconds"] = _mean_std([epoch_seconds(p.parent) for p in runs])
        scored = SCORED.get(row.overrides.get("method", "joint"), GROUPS)
        for group in GROUPS:
            if group not in scored or not scores:
                continue
            for measure in ("precision", "recall", "f1"):  # re_e2e is the strict score
                values = [s[group][measure] for s in scores]
                entry[f"{group}_{measure}"] = _mean_std(values)
        table.append(entry)
    return table


def markdown(table: list[dict]) -> str:
    """The Table 4 markdown of :func:`collect` (percent, mean ± std over seeds)."""
    head = (
        "| encoder | method | RE option | negatives | seeds | NER P | NER R | NER F "
        "| RE gs P | RE gs R | RE gs F | RE e2e P | RE e2e R | RE e2e F |"
    )
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for entry in table:
        cells = [
            entry["encoder"], entry["method"], entry["re_option"], entry["negatives"],
            str(len(entry["seeds"])),
        ]  # fmt: skip
        for group in GROUPS:
            for measure in ("precision", "recall", "f1"):
                value = entry.get(f"{group}_{measure}")
                if value is None:
                    cells.append("-")
                elif len(entry["seeds"]) > 1:
                    cells.append(f"{100 * value[0]:.1f} ± {100 * value[1]:.1f}")
                else:
                    cells.append(f"{100 * value[0]:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# The paper's findings as paired comparisons (row A minus row B, same seed): (finding, A, B, score).
_JOINT = ("joint_m1_gs", "joint_m1_inc", "joint_m2_gs", "joint_m2_inc", "joint_m2b_gs",
          "joint_m2b_inc")  # fmt: skip
COMPARISONS = (
    *(("joint vs standalone end-to-end", a, "pipeline", "re_e2e") for a in _JOINT),
    *(("joint vs standalone NER", a, "ner", "ner") for a in _JOINT),
    *(("re_m2 vs re_m1", f"joint_{m}_{n}", f"joint_m1_{n}", score)
      for score in ("re_e2e", "re_gs") for m in ("m2", "m2b") for n in ("gs", "inc")),
    *(("incremental vs gs-based", f"joint_{m}_inc", f"joint_{m}_gs", score)
      for score in ("re_e2e", "re_gs") for m in ("m1", "m2", "m2b")),
)  # fmt: skip


def _f1_by_seed(workdir: pathlib.Path, row: str, group: str) -> dict[int, float]:
    runs = finished_runs(workdir, row)
    return {seed: json.loads(path.read_text())[group]["f1"] for seed, path in runs.items()}


def compare(workdir) -> list[dict]:
    """Paired F1 differences of :data:`COMPARISONS` over the seeds both rows have finished
    (pairs with no common seed are left out): finding, rows, score, per-seed differences,
    their mean and standard deviation, and how many seeds favour row A (fractions)."""
    workdir = pathlib.Path(workdir)
    found = []
    for finding, row_a, row_b, group in COMPARISONS:
        a, b = _f1_by_seed(workdir, row_a, group), _f1_by_seed(workdir, row_b, group)
        seeds = sorted(a.keys() & b.keys())
        if not seeds:
            continue
        diffs = [a[s] - b[s] for s in seeds]
        mean, std = _mean_std(diffs)
        found.append({
            "finding": finding, "a": row_a, "b": row_b, "score": group, "seeds": seeds,
            "differences": diffs, "mean": mean, "std": std,
            "a_better": sum(d > 0 for d in diffs),
        })  # fmt: skip
    return found


def comparisons_markdown(found: list[dict]) -> str:
    """Markdown of :func:`compare`: one line per comparison, F1 points (percent)."""
    lines = [
        "| finding | A | B | F1 | A - B per seed | mean ± std | seeds with A > B |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in found:
        per_seed = ", ".join(f"{100 * d:+.1f}" for d in c["differences"])
        spread = f" ± {100 * c['std']:.1f}" if len(c["seeds"]) > 1 else ""
        lines.append(
            f"| {c['finding']} | {c['a']} | {c['b']} | {c['score']} | {per_seed} "
            f"| {100 * c['mean']:+.1f}{spread} | {c['a_better']}/{len(c['seeds'])} |"
        )
    return "\n".join(lines) + "\n"


def write_table(workdir, rows, encoder: str) -> str:
    """Writes ``workdir/table4.md`` and ``table4.json``, and the paired comparisons of the
    paper's findings to ``comparisons.md`` and ``comparisons.json``; returns the table."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    table = collect(workdir, rows, encoder)
    text = markdown(table)
    (workdir / "table4.md").write_text(text)
    (workdir / "table4.json").write_text(json.dumps(table, indent=1))
    found = compare(workdir)
    (workdir / "comparisons.md").write_text(comparisons_markdown(found))
    (workdir / "comparisons.json").write_text(json.dumps(found, indent=1))
    return text


def encoder_name(config) -> str:
    """A short name of the config's encoder for the table (last path component or hub id)."""
    return pathlib.Path(str(config.model.encoder)).name or str(config.model.encoder)
