"""Train several model variants side by side on one machine (a GPU box), then more seeds of
the best ones, and collect their per-epoch dev scores and final test scores as they come.

    python -m benchmarks.variant_sweep --config=configs/minilm_span.py --out=runs/sweep \
        --workdirs=/tmp/sweep --set data.dir=/data/chia --set model.encoder=/models/minilm \
        --deadline=540

Phase 1 trains every variant of ``VARIANTS`` with each seed of ``--seeds`` (default 0), all
at once. Phase 2 ranks the variants by dev (corpus NER F1 + corpus end-to-end RE F1 at each
run's best epoch) and trains seeds 1 and 2 (those phase 1 did not) of the best ``--confirm``
variants. Each run is an ordinary ``jointre_jax.main`` process with
its own workdir; ``--out/sweep.json`` is rewritten every ``--poll`` seconds with every run's
metrics so far, so a sweep cut off at ``--deadline`` still leaves all it measured. Variants
are chosen on dev only; the test scores are those each run writes to ``metrics.json``.

``--ensemble_size=K`` then scores ensembles (``jointre_jax.tools.evaluate --ensemble``, mean
probabilities) of each variant's finished seeds, in disjoint groups of K in seed order (seeds
0-8 and K=3: {0,1,2}, {3,4,5}, {6,7,8}, three independent ensembles), on dev and test; the
runs must leave ``--ensemble_seconds`` of the deadline for it.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

# name -> config overrides (on top of --config and every --set).
VARIANTS = {
    "base": {},
    "first_last": {"model.word_features": "first_last"},
    "lstm": {"model.word_lstm_dim": 256},
    "pool": {"model.span_pooling_dim": 256},
    "layer_mix": {"model.layer_mix": True},
    "first_last_pool_mix": {
        "model.word_features": "first_last",
        "model.span_pooling_dim": 256,
        "model.layer_mix": True,
    },
    "first_last_pool_mix_lstm": {
        "model.word_features": "first_last",
        "model.span_pooling_dim": 256,
        "model.layer_mix": True,
        "model.word_lstm_dim": 256,
    },
    "ner_weight_5": {"model.ner_loss_weight": 5.0},
    # Neighbouring criteria as context (data.context_length), with whole-word masking.
    "ctx64": {"data.context_length": 64},
    "ctx128": {"data.context_length": 128},
    "ctx64_wmask": {"data.context_length": 64, "model.word_masking": 0.15},
    # Regularisers: a moving average of the parameters; adversarial word embeddings.
    "ema": {"optim.ema_decay": 0.999},
    "fgm": {"model.adversarial_epsilon": 1.0},
    "fgm2": {"model.adversarial_epsilon": 2.0},
    "fgm05": {"model.adversarial_epsilon": 0.5},
    "fgm_kl1": {"model.adversarial_epsilon": 1.0, "model.adversarial_consistency": 1.0},
    "fgm_kl3": {"model.adversarial_epsilon": 1.0, "model.adversarial_consistency": 3.0},
    # Span negative sampling: each step keeps this share of the "no entity" spans in the loss.
    "neg03": {"model.span_negative_keep": 0.3},
    "neg01": {"model.span_negative_keep": 0.1},
    "neg05": {"model.span_negative_keep": 0.5},
    # Span interactions: residual 3 x 3 convolutions over the table of spans (CNN-NER).
    "conv2": {"model.span_conv_layers": 2},
    "conv2_neg03": {"model.span_conv_layers": 2, "model.span_negative_keep": 0.3},
}


def flag(key: str, value) -> str:
    if isinstance(value, (tuple, list)):
        value = "(" + ",".join(str(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return f"--config.{key}={value}"


def launch(args, name: str, seed: int, overrides: dict) -> dict:
    run = f"{name}_s{seed}"
    workdir = pathlib.Path(args.workdirs) / run
    command = [
        sys.executable, "-m", "jointre_jax.main", f"--config={args.config}",
        f"--workdir={workdir}", f"--config.seed={seed}",
    ]  # fmt: skip
    for item in args.set:
        key, _, value = item.partition("=")
        command.append(f"--config.{key}={value}")
    command += [flag(k, v) for k, v in overrides.items()]
    log = open(pathlib.Path(args.workdirs) / f"{run}.log", "w")  # noqa: SIM115 - the child keeps it
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ)
    print(f"started {run}: {' '.join(command[3:])}", flush=True)
    return {"run": run, "variant": name, "seed": seed, "overrides": overrides,
            "workdir": workdir, "process": process, "started": time.time()}  # fmt: skip


def collect(runs: list[dict]) -> list[dict]:
    rows = []
    for r in runs:
        epochs, final = [], None
        path = r["workdir"] / "metrics.jsonl"
        if path.exists():
            epochs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if (r["workdir"] / "metrics.json").exists():
            final = json.loads((r["workdir"] / "metrics.json").read_text())
        code = r["process"].poll()
        if code is not None and "finished" not in r:
            r["finished"] = time.time()
        rows.append({
            "run": r["run"], "variant": r["variant"], "seed": r["seed"],
            "overrides": r["overrides"], "returncode": code,
            "seconds": round(r.get("finished", time.time()) - r["started"], 1),
            "epochs": epochs, "final": final,
        })  # fmt: skip
    return rows


def dev_score(row: dict) -> float:
    """Corpus NER F1 + corpus end-to-end RE F1 on dev at the run's best epoch so far."""
    best = 0.0
    for e in row["epochs"]:
        if "dev_corpus_ner_f1" in e:
            best = max(best, e["dev_corpus_ner_f1"] + e["dev_corpus_re_e2e_f1"])
    return best


def write(args, runs: list[dict], started: float, ensembles=None) -> list[dict]:
    rows = collect(runs)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"command": "python -m benchmarks.variant_sweep " + " ".join(sys.argv[1:]),
               "elapsed": round(time.time() - started, 1), "runs": rows}  # fmt: skip
    if ensembles is not None:
        summary["ensembles"] = ensembles
    (out / "sweep.json").write_text(json.dumps(summary, indent=1))
    return rows


def progress(rows: list[dict], started: float) -> None:
    parts = [
        f"{r['run']}:{len(r['epochs'])}ep/{dev_score(r):.3f}"
        + ("" if r["returncode"] is None else f"/rc{r['returncode']}")
        for r in rows
    ]
    print(f"[{time.time() - started:6.0f}s] " + " ".join(parts), flush=True)


def wait(args, runs, started, until: float) -> list[dict]:
    while True:
        rows = write(args, runs, started)
        progress(rows, started)
        if all(r["process"].poll() is not None for r in runs) or time.time() > until:
            return rows
        time.sleep(args.poll)


def ensemble_groups(rows: list[dict], size: int) -> list[list[dict]]:
    """Each variant's runs with a best checkpoint (at least one epoch done: a run the deadline
    cut off joins with its best epoch so far) in seed order, in disjoint groups of ``size`` (a
    short last group is left out)."""
    groups = []
    for variant in dict.fromkeys(r["variant"] for r in rows):
        done = sorted(
            (r for r in rows if r["variant"] == variant and r["epochs"]), key=lambda r: r["seed"]
        )
        groups += [done[i : i + size] for i in range(0, len(done) - size + 1, size)]
    return groups


def launch_ensembles(args, groups: list[list[dict]]) -> list[dict]:
    """Starts ``jointre_jax.tools.evaluate`` of every group on its runs' dev and test splits, all at
    once; returns what :func:`ensemble_rows` reads."""
    jobs = []
    for group in groups:
        first, rest = pathlib.Path(args.workdirs) / group[0]["run"], group[1:]
        data = json.loads((first / "config.json").read_text())["data"]
        name = "ens_" + "_".join(r["run"] for r in group)
        for role, split in (("dev", data["eval_split"]), ("test", data["test_split"])):
            out = pathlib.Path(args.workdirs) / f"{name}_{role}.json"
            command = [
                sys.executable, "-m", "jointre_jax.tools.evaluate", f"--workdir={first}",
                "--ensemble=" + ",".join(str(pathlib.Path(args.workdirs) / r["run"]) for r in rest),
                f"--brat_dir={pathlib.Path(data['dir']) / 'brat'}",
                f"--split_file={pathlib.Path(data['dir']) / 'splits' / f'{split}.txt'}",
                f"--out={out}",
            ]  # fmt: skip
            log = open(out.with_suffix(".log"), "w")  # noqa: SIM115 - the child keeps it
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            jobs.append({"group": group, "role": role, "out": out, "process": process})
    print(f"started {len(jobs)} ensemble evaluations", flush=True)
    return jobs


def ensemble_rows(jobs: list[dict]) -> list[dict]:
    """One row per group: its variant, seeds, and dev and test corpus scores (None where the
    evaluation did not finish)."""
    rows = {}
    for job in jobs:
        key = tuple(r["run"] for r in job["group"])
        row = rows.setdefault(key, {
            "variant": job["group"][0]["variant"], "runs": list(key),
            "seeds": [r["seed"] for r in job["group"]], "dev": None, "test": None,
            "members_epochs": [len(r["epochs"]) for r in job["group"]],
            "members_test": [(r["final"] or {}).get("corpus") for r in job["group"]],
        })  # fmt: skip
        if job["process"].poll() == 0 and job["out"].exists():
            corpus = json.loads(job["out"].read_text())["corpus"]
            row[job["role"]] = {k: corpus[k] for k in ("ner", "re_e2e")}
    return list(rows.values())


def ensemble_markdown(rows: list[dict]) -> list[str]:
    """The ensembles' table and, per variant, the mean and sample sd over its ensembles."""
    pct = lambda x: f"{100 * x:.1f}"  # noqa: E731
    prf = lambda c: " / ".join(pct(c[m]) for m in ("precision", "recall", "f1"))  # noqa: E731
    lines = [
        "",
        "Ensembles (``jointre evaluate --ensemble``: the members' mean probabilities), each of"
        " its own seeds, each run at its best dev epoch (of those done: a run the deadline cut"
        " off joins too); F1 in percent against the corpus gold. Members' test: the mean of the"
        " members' own test F1 (NER / RE).",
        "",
        "| variant | seeds | members' epochs done | dev NER F1 | dev RE e2e F1"
        " | test NER P / R / F1 | test RE e2e P / R / F1 | members' test |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        dev = [pct(r["dev"][k]["f1"]) if r["dev"] else "" for k in ("ner", "re_e2e")]
        test = [prf(r["test"][k]) if r["test"] else "" for k in ("ner", "re_e2e")]
        scored = [m for m in r["members_test"] if m]
        own = "(cut off)"
        if len(scored) == len(r["members_test"]):
            own = " / ".join(
                pct(sum(m[k]["f1"] for m in scored) / len(scored)) for k in ("ner", "re_e2e")
            )
        seeds = ",".join(map(str, r["seeds"]))
        epochs = ",".join(map(str, r["members_epochs"]))
        lines.append(
            f"| {r['variant']} | {seeds} | {epochs} | {dev[0]} | {dev[1]} | {test[0]} | {test[1]} "
            f"| {own} |"
        )
    for variant in dict.fromkeys(r["variant"] for r in rows):
        done = [r for r in rows if r["variant"] == variant and r["test"]]
        if len(done) < 2:
            continue
        parts = []
        for k, name in (("ner", "NER"), ("re_e2e", "RE e2e")):
            values = [100 * r["test"][k]["f1"] for r in done]
            mean = sum(values) / len(values)
            sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
            parts.append(f"{name} {mean:.1f} ± {sd:.1f}")
        lines.append(f"\n{variant}, {len(done)} ensembles, test F1: " + ", ".join(parts) + ".")
    return lines


def markdown(summary: dict, command: str, machine: str) -> str:
    """The table of a sweep.json: per run its best dev epoch and scores, and its test scores
    (of the best dev epoch), F1 in percent against the corpus gold."""
    lines = [
        f"Command: `{command}`",
        "",
        f"Machine: {machine}. Every run trains on the whole train split for up to 7 epochs."
        " Rows are ranked by the sweep's selection rule, dev corpus NER F1 + dev corpus RE F1"
        " at a run's best epoch. The kept epoch is the one the training loop kept"
        " (``config.best_metric``) and scored on test; dev scores are those of that epoch."
        " F1 in percent against the corpus gold. A run the deadline cut off has no test"
        " scores and shows its best dev epoch. Seconds: the sum of its epochs (training and"
        " dev evaluation, compilation included).",
        "",
        "| run | overrides | epochs done | kept epoch | dev NER F1 | dev RE e2e F1"
        " | test NER P / R / F1 | test RE e2e P / R / F1 | epoch seconds (sum) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    pct = lambda x: f"{100 * x:.1f}"  # noqa: E731
    for r in sorted(summary["runs"], key=dev_score, reverse=True):
        best = max(r["epochs"], key=lambda e: e["dev_corpus_ner_f1"] + e["dev_corpus_re_e2e_f1"],
                   default=None)  # fmt: skip
        if r["final"]:
            best = r["epochs"][r["final"]["best_epoch"] - 1]
        overrides = ", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "(none)"
        test = ["", ""]
        if r["final"]:
            c = r["final"]["corpus"]
            test = [" / ".join(pct(c[k][m]) for m in ("precision", "recall", "f1"))
                    for k in ("ner", "re_e2e")]  # fmt: skip
        dev = [pct(best[k]) if best else "" for k in ("dev_corpus_ner_f1", "dev_corpus_re_e2e_f1")]
        wall = f"{sum(e['seconds'] for e in r['epochs']):.0f}"
        lines.append(
            f"| {r['run']} | {overrides} | {len(r['epochs'])} | {best['epoch'] if best else ''} "
            f"| {dev[0]} | {dev[1]} | {test[0]} | {test[1]} | {wall} |"
        )
    if summary.get("ensembles"):
        lines += ensemble_markdown(summary["ensembles"])
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", required=True, help="folder of sweep.json")
    parser.add_argument("--workdirs", required=True, help="folder of the runs' workdirs")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE for every run")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seeds", default="0", help="seeds of phase 1, comma-separated")
    parser.add_argument("--confirm", type=int, default=1, help="best variants given 2 seeds more")
    parser.add_argument("--deadline", type=float, default=540.0, help="seconds for both phases")
    parser.add_argument("--phase1", type=float, default=0.6, help="share of the deadline")
    parser.add_argument("--poll", type=float, default=15.0)
    parser.add_argument("--report", help="only write the table of this sweep.json to --out")
    parser.add_argument("--machine", default="", help="the machine, for the table")
    parser.add_argument("--ensemble_size", type=int, default=0, help="score ensembles of K seeds")
    parser.add_argument(
        "--ensemble_seconds", type=float, default=120.0, help="of the deadline, for the ensembles"
    )
    args = parser.parse_args(argv)
    if args.report:
        summary = json.loads(pathlib.Path(args.report).read_text())
        command = summary.get("command", "python -m benchmarks.variant_sweep ...")
        pathlib.Path(args.out).write_text(markdown(summary, command, args.machine))
        return 0
    started = time.time()
    pathlib.Path(args.workdirs).mkdir(parents=True, exist_ok=True)
    names = [n for n in args.variants.split(",") if n]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {sorted(VARIANTS)}")
    seeds = [int(seed) for seed in args.seeds.split(",") if seed]
    runs = [launch(args, n, seed, VARIANTS[n]) for n in names for seed in seeds]
    rows = wait(args, runs, started, started + args.phase1 * args.deadline)
    ranked = sorted(rows, key=dev_score, reverse=True)
    print("phase 1 by dev: " + ", ".join(f"{r['variant']} {dev_score(r):.4f}" for r in ranked))
    best = list(dict.fromkeys(r["variant"] for r in ranked if dev_score(r) > 0))[: args.confirm]
    more = [seed for seed in (1, 2) if seed not in seeds]
    # A run of phase 2 is started only if one of phase 1 would have fitted in the time left.
    finished = [r["seconds"] for r in rows if r["returncode"] == 0]
    needed = min(finished) if finished else float("inf")
    deadline = args.deadline - (args.ensemble_seconds if args.ensemble_size else 0.0)
    left = started + deadline - time.time()
    if best and more and needed < left:
        runs += [launch(args, n, s, VARIANTS[n]) for n in best for s in more]
    elif best and more:
        print(f"phase 2 skipped: a run took {needed:.0f} s, {left:.0f} s left", flush=True)
    wait(args, runs, started, started + deadline)
    for r in runs:
        if r["process"].poll() is None:
            r["process"].kill()
    rows = write(args, runs, started)
    progress(rows, started)
    if args.ensemble_size:
        jobs = launch_ensembles(args, ensemble_groups(rows, args.ensemble_size))
        until = started + args.deadline
        while any(j["process"].poll() is None for j in jobs) and time.time() < until:
            time.sleep(min(args.poll, 5.0))
        for job in jobs:
            if job["process"].poll() is None:
                job["process"].kill()
        ensembles = ensemble_rows(jobs)
        rows = write(args, runs, started, ensembles)
        for e in ensembles:
            test = {k: round(100 * v["f1"], 1) for k, v in (e["test"] or {}).items()}
            print(f"ensemble {','.join(e['runs'])}: test corpus F1 {test}", flush=True)
    for r in rows:  # test scores of the best dev epoch, corpus gold (metrics.json)
        corpus = (r["final"] or {}).get("corpus", {})
        test = {k: round(100 * corpus[k]["f1"], 1) for k in ("ner", "re_e2e") if k in corpus}
        print(f"{r['run']}: dev {dev_score(r):.4f} test corpus F1 {test} rc {r['returncode']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
