"""The HTTP service over real sockets on 127.0.0.1: its answers equal the CLI's, requests that
arrive together are batched into the one compiled shape, overload is 503, an oversized body
413, bad JSON 400, and SIGTERM loses no request in flight."""

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import REPO, SHARED, free_port
from tests.test_model_folder import command, export
from tests.test_train import train_tiny

RECORDS = SHARED / "data" / "ctgov" / "records.jsonl"
LINES = ["Patients with type 2 diabetes", "HbA1c > 7 %", "no history of heart failure or stroke",
         "women aged 18 years and older", "pregnant women", "breast or lung cancer"]  # fmt: skip


class Server:
    """``jointre serve`` in a subprocess, on a free loopback port, ready when started."""

    def __init__(self, model, *flags):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        args = [sys.executable, "-m", "jointre_jax.serve", f"--model={model}",
                f"--port={self.port}", *flags]  # fmt: skip
        self.process = subprocess.Popen(args, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.process.stderr.read()
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        raise AssertionError("the service did not become ready in 240 s")

    def post(self, body, **kwargs):
        return httpx.post(f"{self.url}/extract", json=body, timeout=60, **kwargs)

    def metrics(self):
        return httpx.get(f"{self.url}/metrics", timeout=10).json()

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60), self.process.stderr.read()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("service")
    _, run = train_tiny(root)
    export(run, root / "model")
    return root / "model"


@pytest.fixture(scope="module")
def server(model):
    server = Server(
        model, "--max_body_bytes=20000", "--max_request_criteria=200", "--batch_wait_ms=50"
    )  # a burst of requests is surely one batch
    yield server
    server.stop()


def cli_extract(model, source):
    """What ``jointre extract --model=model --input=source`` writes, parsed."""
    out = source.with_suffix(".out.jsonl")
    args = (f"--model={model}", f"--input={source}", f"--output={out}")
    done = command("jointre_jax.tools.extract", *args)
    assert done.returncode == 0, done.stderr
    return [json.loads(x) for x in out.read_text().splitlines()]


def test_answers_equal_the_cli_for_texts_and_records(server, model, tmp_path):
    (tmp_path / "criteria.txt").write_text("\n".join(LINES) + "\n")
    cli = cli_extract(model, tmp_path / "criteria.txt")
    answer = server.post({"texts": ["\n".join(LINES) + "\n"], "ids": [cli[0]["doc_id"]]})
    assert answer.status_code == 200
    assert answer.json() == {"criteria": cli, "skipped": []}
    assert sum(len(c["entities"]) for c in cli) > 3
    if not RECORDS.is_file():
        pytest.skip(f"the records half needs {RECORDS} (../shared)")
    with open(RECORDS, encoding="utf-8") as f:
        lines = [next(f) for _ in range(3)]
    (tmp_path / "records.jsonl").write_text("".join(lines))
    cli = cli_extract(model, tmp_path / "records.jsonl")
    answer = server.post({"records": [json.loads(x) for x in lines] + [{"protocolSection": {}}],
                          "lenient": True})  # fmt: skip
    assert answer.status_code == 200
    assert answer.json()["criteria"] == cli
    assert [s["reason"] for s in answer.json()["skipped"]] == ["no_nct_id"]


def test_concurrent_requests_are_batched_into_one_compiled_shape(server):
    before = server.metrics()
    assert before["compiled_shapes"] == 1  # compiled at start, before the port opened
    bodies = [{"texts": ["\n".join(LINES[: 1 + i % len(LINES)])]} for i in range(32)]
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(server.post, bodies))
    assert [a.status_code for a in answers] == [200] * 32
    for body, answer in zip(bodies, answers, strict=True):
        assert [c["text"] for c in answer.json()["criteria"]] == body["texts"][0].split("\n")
    after = server.metrics()
    requests = after["batched_requests"] - before["batched_requests"]
    batches = after["batches"] - before["batches"]
    assert requests == 32 and batches < 32  # some requests shared a batch
    assert after["compiled_shapes"] == 1
    assert after["latency_ms"]["p99"] >= after["latency_ms"]["p50"] > 0


STUDY = {
    "protocolSection": {
        "identificationModule": {"nctId": "NCT00000001"},
        "eligibilityModule": {"eligibilityCriteria": "Age 18 or older"},
    }
}


def test_bad_json_is_400_naming_the_field_and_a_large_body_413(server):
    cases = [
        (b'{"texts": ', "not JSON"),
        (json.dumps({"texts": ["a", 3]}).encode(), "texts[1]"),
        (json.dumps({"texts": ["a"], "colour": 1}).encode(), "colour"),
        (json.dumps({"texts": ["a"], "records": []}).encode(), "one of them"),
        (json.dumps({"texts": ["a", "b"], "ids": ["x"]}).encode(), '"ids" has 1'),
        (json.dumps({"records": [{"protocolSection": {}}]}).encode(), "records[0]"),
        (
            json.dumps({"records": [STUDY, STUDY]}).encode(),
            "NCT00000001 already read at records[0]",
        ),
    ]
    for body, field in cases:
        answer = httpx.post(f"{server.url}/extract", content=body, timeout=30,
                            headers={"Content-Type": "application/json"})  # fmt: skip
        assert answer.status_code == 400 and field in answer.json()["error"], answer.text
    big = server.post({"texts": ["pregnant women " * 2000]})
    assert big.status_code == 413 and "20000 bytes" in big.json()["error"]
    many = server.post({"texts": ["\n".join(["x"] * 201)]})
    assert many.status_code == 413 and "201 criteria" in many.json()["error"]
    assert server.post({"texts": ["pregnant women"]}).status_code == 200  # still serving


def test_overload_is_503_with_retry_after_and_sigterm_loses_nothing_in_flight(model):
    # A batch a request, each waiting 300 ms: three requests fill the queue and stay in flight.
    server = Server(
        model,
        "--max_queue_criteria=60",
        "--max_batch_criteria=20",
        "--max_request_criteria=20",
        "--batch_wait_ms=300",
    )
    try:
        body = {"texts": ["\n".join(LINES * 3)]}  # 18 criteria: 3 fit the queue
        with concurrent.futures.ThreadPoolExecutor(24) as pool:
            answers = list(pool.map(lambda _: server.post(body), range(24)))
        statuses = [a.status_code for a in answers]
        assert set(statuses) == {200, 503}, statuses
        refused = next(a for a in answers if a.status_code == 503)
        assert int(refused.headers["Retry-After"]) >= 1
        assert server.post(body).status_code == 200  # recovered
        late = server.post({**body, "timeout_s": 0.05})  # its batch waits 300 ms
        assert late.status_code == 504 and "within 0.05 s" in late.json()["error"]

        # SIGTERM while requests are in flight: every one of them is answered.
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            flying = [pool.submit(server.post, body) for _ in range(3)]
            deadline = time.monotonic() + 30
            while server.metrics()["in_flight"] < 3 and time.monotonic() < deadline:
                time.sleep(0.002)
            status, stderr = server.stop()
            answered = [f.result() for f in flying]
        assert [a.status_code for a in answered] == [200] * 3
        assert all(len(a.json()["criteria"]) == 18 for a in answered)
        assert status == 128 + signal.SIGTERM
        assert "every request in flight was answered" in stderr
    finally:
        server.stop()
