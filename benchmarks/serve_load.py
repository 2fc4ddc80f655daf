"""A bounded load test of ``jointre serve`` on loopback, and its ratio to ``jointre extract``.

    python -m benchmarks.serve_load --model=DIR [--records=../shared/data/ctgov/records.jsonl]
        [--clients=16] [--seconds=60] [--per_request=8] [--criteria=3000]
        [--json=benchmarks/results/cpu_serve.json]

The first ``--criteria`` criteria of the records (each on one line) are the input. The service
starts on a free port with its default limits; ``--clients`` threads, each with its own HTTP
connection, send ``--per_request`` criteria a request, one request after another, for
``--seconds`` (then they stop; a request has a 120 s timeout). Reported: requests and
failures (any status but 200, or no answer), criteria/s answered, latency p50/p99, the
service's own batches, and its RSS after its first answer and at the end (flat memory: a
ratio about 1.0). Then ``jointre extract --model=DIR`` on the same criteria as one text file:
its criteria/s (its extraction loop and its wall time), and the service's over each. The
clients run on the same machine as the service, and take CPU from it.
"""

from __future__ import annotations

import pathlib
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time

import httpx
import numpy as np
from absl import app, flags

from benchmarks.throughput import machine, print_and_save
from jointre_jax.data import trials

FLAGS = flags.FLAGS
REPO = pathlib.Path(__file__).resolve().parent.parent


def _define_flags() -> None:
    flags.DEFINE_string("model", None, "A model folder (jointre export).")
    flags.DEFINE_string("records", str(REPO.parent / "shared/data/ctgov/records.jsonl"),
                        "ClinicalTrials.gov records, JSON lines.")  # fmt: skip
    flags.DEFINE_integer("clients", 16, "Concurrent clients.")
    flags.DEFINE_float("seconds", 60, "How long the clients send.")
    flags.DEFINE_integer("per_request", 8, "Criteria a request.")
    flags.DEFINE_integer("criteria", 3000, "Criteria of the input.")
    flags.DEFINE_string("json", None, "Also write the results here.")


def criteria_of(records: pathlib.Path, limit: int) -> list[str]:
    out = []
    for record in trials.read_records(records, lenient=True).records:
        for span in trials.split_criteria(record.criteria):
            out.append(trials.one_line(record.criteria[span.start : span.end]))
            if len(out) == limit:
                return out
    return out


def rss_mib(pid: int) -> float:
    status = pathlib.Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def load(url: str, criteria: list[str]) -> dict:
    """``--clients`` threads posting for ``--seconds``; what they saw."""
    per, deadline = FLAGS.per_request, time.monotonic() + FLAGS.seconds
    latencies, failures, answered, lock = [], [], [0], threading.Lock()
    cursor = iter(range(1 << 62))

    def client():
        with httpx.Client(timeout=120) as session:
            while time.monotonic() < deadline:
                start = next(cursor) * per % len(criteria)
                texts = "\n".join(criteria[start : start + per])
                begin = time.perf_counter()
                try:
                    answer = session.post(f"{url}/extract", json={"texts": [texts]})
                    failure = "" if answer.status_code == 200 else f"status {answer.status_code}"
                except httpx.HTTPError as err:
                    failure = type(err).__name__
                seconds = time.perf_counter() - begin
                with lock:
                    if failure:
                        failures.append(failure)
                    else:
                        latencies.append(seconds)
                        answered[0] += len(answer.json()["criteria"])

    began = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(FLAGS.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    ms = np.asarray(latencies) * 1000
    return {
        "requests": len(latencies) + len(failures),
        "failures": len(failures),
        "failure_kinds": sorted(set(failures)),
        "criteria_answered": answered[0],
        "seconds": round(elapsed, 1),
        "criteria_per_s": round(answered[0] / elapsed, 1),
        "latency_ms": {
            "p50": round(float(np.percentile(ms, 50)), 1),
            "p99": round(float(np.percentile(ms, 99)), 1),
        },  # fmt: skip
    }


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    criteria = criteria_of(pathlib.Path(FLAGS.records), FLAGS.criteria)
    results = {"model": FLAGS.model, "clients": FLAGS.clients, "per_request": FLAGS.per_request,
               "input_criteria": len(criteria)}  # fmt: skip
    jointre = str(pathlib.Path(sys.executable).parent / "jointre")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([jointre, "serve", f"--model={FLAGS.model}", f"--port={port}"],
                              cwd=REPO, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        while True:
            if server.poll() is not None:
                sys.exit(f"serve_load: the service stopped:\n{server.stderr.read()}")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        httpx.post(f"{url}/extract", json={"texts": ["\n".join(criteria[:8])]}, timeout=120)
        rss_start = rss_mib(server.pid)
        results["service"] = load(url, criteria)
        results["service"]["rss_mib"] = {"start": round(rss_start, 1),
                                         "end": round(rss_mib(server.pid), 1)}  # fmt: skip
        results["service"]["rss_end_over_start"] = round(rss_mib(server.pid) / rss_start, 3)
        metrics = httpx.get(f"{url}/metrics", timeout=10).json()
        results["service"]["batches"] = metrics["batches"]
        results["service"]["compiled_shapes"] = metrics["compiled_shapes"]
        results["service"]["mean_requests_per_batch"] = round(
            metrics["batched_requests"] / max(metrics["batches"], 1), 2
        )
    finally:
        server.terminate()
        server.wait(timeout=120)
    with tempfile.TemporaryDirectory() as tmp:
        source = pathlib.Path(tmp) / "criteria.txt"
        source.write_text("\n".join(criteria) + "\n", encoding="utf-8")
        begin = time.perf_counter()
        done = subprocess.run([jointre, "extract", f"--model={FLAGS.model}", f"--input={source}",
                               f"--output={pathlib.Path(tmp) / 'out.jsonl'}"], cwd=REPO,
                              capture_output=True, text=True)  # fmt: skip
        wall = time.perf_counter() - begin
        if done.returncode:
            sys.exit(f"serve_load: extract failed:\n{done.stderr[-3000:]}")
        loop = float(re.search(r"([\d.]+) criteria/s", done.stderr).group(1))
    results["extract"] = {"criteria": len(criteria), "seconds": round(wall, 1),
                          "criteria_per_s_loop": loop,
                          "criteria_per_s_wall": round(len(criteria) / wall, 1)}  # fmt: skip
    rate = results["service"]["criteria_per_s"]
    results["service_over_extract_loop"] = round(rate / loop, 3)
    wall_rate = results["extract"]["criteria_per_s_wall"]
    results["service_over_extract_wall"] = round(rate / wall_rate, 3)
    results["machine"] = machine()
    print_and_save(results, FLAGS.json)


if __name__ == "__main__":
    _define_flags()
    flags.mark_flag_as_required("model")
    app.run(main)
