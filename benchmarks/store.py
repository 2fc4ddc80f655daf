"""Streaming extraction into a store, end to end: records in, rows committed.

    python -m benchmarks.store --workdir=RUN [--records=../shared/data/ctgov/records.jsonl]
        [--times=10] [--json=benchmarks/results/cpu_store.json]

Each measurement is one ``jointre extract --lenient`` process (or ``launch/extract.sh 2``)
from a JSON-lines file into a fresh DuckDB file, timed from its start to its exit (JAX's
start-up, loading the run and reading the compilation cache included), its peak RSS taken
from ``os.wait4``. In order: a warm-up on the records (it fills the compilation cache), then
with the cache warm one process on the records (``one_process``), two shards on the records
(``two_shards``: ``launch/extract.sh 2``, the merge included), and one process on the
records repeated ``--times`` times under new NCT ids (``repeated``). Reported: criteria,
seconds, criteria/s over the wall time and as ``extract`` counts it (its extraction loop
only), peak RSS, and the ratios ``two_shards / one_process`` (criteria/s) and ``repeated /
one_process`` (peak RSS: flat memory is about 1.0). Run nothing else meanwhile.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

from absl import app, flags

from benchmarks.throughput import machine, print_and_save

FLAGS = flags.FLAGS
REPO = pathlib.Path(__file__).resolve().parent.parent


def _define_flags() -> None:
    flags.DEFINE_string("workdir", None, "A trained run.")
    flags.DEFINE_string("records", str(REPO.parent / "shared/data/ctgov/records.jsonl"),
                        "ClinicalTrials.gov records, JSON lines.")  # fmt: skip
    flags.DEFINE_integer("times", 10, "The repeated input is the records this many times.")
    flags.DEFINE_string("json", None, "Also write the results here.")


def repeated(source: pathlib.Path, times: int, target: pathlib.Path) -> int:
    """``source`` ``times`` times, copy k > 0 under NCT ids ``NCT..._k``; returns records."""
    lines = [x for x in source.read_text(encoding="utf-8").splitlines() if x.strip()]
    with open(target, "w", encoding="utf-8") as out:
        for k in range(times):
            for line in lines:
                study = json.loads(line)
                if k:
                    ident = study["protocolSection"]["identificationModule"]
                    ident["nctId"] = f"{ident['nctId']}_{k}"
                out.write(json.dumps(study, ensure_ascii=False) + "\n")
    return len(lines) * times


def timed(command: list[str]) -> dict:
    """Runs ``command``; its wall seconds, peak RSS (MiB) and what ``extract`` reported."""
    started = time.perf_counter()
    # Both streams: the launcher writes its shards' lines (prefixed [sI]) to standard output.
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)  # fmt: skip
    stderr = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"store benchmark: {' '.join(command)} failed:\n{stderr[-3000:]}")
    found = re.findall(r"(\d+) criteria \(.*?; ([\d.]+) criteria/s", stderr)
    criteria = sum(int(n) for n, _ in found)
    return {
        "criteria": criteria,
        "seconds": round(seconds, 2),
        "criteria_per_s_wall": round(criteria / seconds, 1),
        "criteria_per_s_loop": [float(rate) for _, rate in found],
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
    }


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    jointre = str(pathlib.Path(sys.executable).parent / "jointre")
    records = pathlib.Path(FLAGS.records)
    results = {"workdir": FLAGS.workdir, "records": str(records), "times": FLAGS.times}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        many = tmp / "repeated.jsonl"
        results["repeated_records"] = repeated(records, FLAGS.times, many)

        def extract(source, name):
            return [jointre, "extract", f"--workdir={FLAGS.workdir}", f"--input={source}",
                    f"--output={tmp / name}", "--lenient"]  # fmt: skip

        results["warm_up"] = timed(extract(records, "warm.duckdb"))
        results["one_process"] = timed(extract(records, "one.duckdb"))
        env_launch = [str(REPO / "launch" / "extract.sh"), "2"]
        os.environ["JOINTRE"] = jointre
        results["two_shards"] = timed([*env_launch, *extract(records, "two.duckdb")])
        results["repeated"] = timed(extract(many, "repeated.duckdb"))
    one, two, rep = results["one_process"], results["two_shards"], results["repeated"]
    results["two_shards_over_one_process"] = round(
        two["criteria_per_s_wall"] / one["criteria_per_s_wall"], 3
    )
    results["repeated_over_one_process_peak_rss"] = round(
        rep["peak_rss_mib"] / one["peak_rss_mib"], 3
    )
    results["machine"] = machine()
    print_and_save(results, FLAGS.json)


if __name__ == "__main__":
    _define_flags()
    flags.mark_flag_as_required("workdir")
    app.run(main)
