"""The extraction service: one long-lived :class:`~jointre_jax.extraction.Extractor` behind
HTTP, on FastAPI and uvicorn (the command is ``jointre serve``, :mod:`jointre_jax.tools.serve`).

    POST /extract  {"texts": [...], "ids": [...]}: each text a document, a criterion a line;
                   or {"records": [ClinicalTrials.gov v2 study, ...], "lenient": false};
                   either with an optional "timeout_s" below the service's
                   -> {"criteria": [...], "skipped": [...]}: one object per criterion, exactly
                   the JSON lines of ``jointre extract`` on the same input (offsets included)
    GET  /health   {"status": "ok", ...}
    GET  /metrics  requests by status, criteria, batches, latency p50/p99, queue, compiled shapes

Requests that arrive together are one batch: a worker thread takes every queued request, up to
``max_batch_criteria`` criteria, and runs them through the model as one input, so they share
the packed rows and the one compiled shape. That shape is compiled at start, before uvicorn
opens the port. The queue holds at most ``max_queue_criteria`` criteria: beyond it a request
gets 503 with Retry-After. A body over ``max_body_bytes`` or a request of more than
``max_request_criteria`` criteria gets 413, a body that is not the request's JSON 400 naming
the field, and a request not answered within ``timeout_s`` 504. On SIGTERM uvicorn stops
accepting, the requests in flight are answered, and then the worker stops.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import math
import time

import numpy as np
import pydantic
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from jointre_jax.data import trials
from jointre_jax.data.encode import split_lines
from jointre_jax.errors import UserError
from jointre_jax.extraction import Extractor, extract_trials, iter_records

WARM_UP = "Age 18 years or older with type 2 diabetes (HbA1c > 7%)"


@dataclasses.dataclass(frozen=True)
class Options:
    """The service's limits (``jointre serve`` flags of the same names)."""

    max_batch_criteria: int = 512  # criteria per model call, over the requests batched
    max_queue_criteria: int = 8192  # criteria waiting; beyond: 503
    max_request_criteria: int = 2048  # criteria of one request; beyond: 413
    max_body_bytes: int = 4_000_000  # bytes of one request body; beyond: 413
    timeout_s: float = 60.0  # seconds to answer a request; beyond: 504
    batch_wait_ms: float = 2.0  # how long the worker waits for more requests to batch


class ExtractRequest(pydantic.BaseModel):
    """The body of ``POST /extract``: ``texts`` (with optional ``ids``) or ``records``."""

    model_config = pydantic.ConfigDict(extra="forbid")
    texts: list[str] | None = None
    ids: list[str] | None = None
    records: list[dict] | None = None
    lenient: bool = False
    timeout_s: float | None = pydantic.Field(None, gt=0)  # the client's, under the service's


class Rejected(Exception):
    """A request the service answers with ``status`` and ``message`` (and ``headers``)."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


@dataclasses.dataclass(eq=False)  # compared by identity: the queue removes this one
class Job:
    """One request in the queue: its documents or records and the future of its answer."""

    texts: list[str]
    ids: list[str]
    records: list[trials.TrialRecord]
    size: int  # criteria
    future: asyncio.Future


def parse(body: ExtractRequest, limit: int) -> tuple[list, list, list, list[dict], int]:
    """(texts, ids, records, skipped, criteria) of a request; Rejected (400 or 413) naming
    the field."""
    if (body.texts is None) == (body.records is None):
        raise Rejected(400, 'give "texts" (a list of strings) or "records", one of them')
    texts, ids, records, skipped = [], [], [], []
    if body.texts is not None:
        texts = body.texts
        ids = body.ids if body.ids is not None else [str(i) for i in range(len(texts))]
        if len(ids) != len(texts):
            raise Rejected(400, f'"ids" has {len(ids)} items for {len(texts)} "texts"')
        size = sum(1 for t in texts for _, a, b in split_lines(t) if t[a:b].strip())
    else:
        if body.ids is not None:
            raise Rejected(400, '"ids" names "texts"; a record is named by its NCT id')
        raw = ((f"records[{n}]", *trials.study_fields(s)) for n, s in enumerate(body.records))
        hint = 'send "lenient": true to skip such records'
        try:  # the CLI's checks: the study's fields, and each NCT id once
            for entry in trials.checked(raw, body.lenient, hint):
                if isinstance(entry, trials.Skip):
                    skipped.append(dataclasses.asdict(entry))
                else:
                    records.append(entry)
        except UserError as err:
            raise Rejected(400, str(err)) from None
        size = sum(len(trials.split_criteria(r.criteria)) for r in records)
    if size > limit:
        raise Rejected(413, f"the request holds {size} criteria; at most {limit} a request")
    return texts, ids, records, skipped, size


class Service:
    """The queue, the batching worker and the metrics around one Extractor."""

    def __init__(self, extractor: Extractor, options: Options):
        self.extractor, self.options = extractor, options
        self.queue: collections.deque[Job] = collections.deque()
        self.queued_criteria = 0
        self.wake = asyncio.Event()
        self.pool = concurrent.futures.ThreadPoolExecutor(1, "extract")  # the model's thread
        self.statuses = collections.Counter()  # requests answered, by HTTP status
        self.counts = collections.Counter()  # criteria answered, batches, requests batched
        self.latencies = collections.deque(maxlen=4096)  # seconds of the last requests
        self.rate = 0.0  # criteria/s of recent batches (Retry-After)
        self.started = time.time()
        self.compile_seconds = 0.0
        self.worker: asyncio.Task | None = None
        self.in_flight = 0  # requests queued or in a batch

    def compiled_shapes(self) -> int:
        """Shapes the model's prediction step has compiled (one, with packed rows)."""
        return int(self.extractor.predictor.predict_fn._cache_size())

    async def start(self) -> None:
        """Compiles the prediction shape (in the model's thread), then starts the worker."""
        begin = time.perf_counter()
        await asyncio.get_running_loop().run_in_executor(self.pool, self.extractor.extract, WARM_UP)
        self.compile_seconds = time.perf_counter() - begin
        self.worker = asyncio.create_task(self._work())

    async def stop(self) -> None:
        """Answers what is queued or in a batch, then stops the worker (uvicorn has stopped
        accepting); the model's thread finishes the batch it may still run for requests that
        timed out."""
        while self.in_flight:
            await asyncio.sleep(0.01)
        if self.worker is not None:
            self.worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.worker
        self.pool.shutdown(wait=True)

    async def submit(self, texts, ids, records, size: int, timeout_s=None) -> list[dict]:
        """The criteria of one request, once its batch has run; Rejected 503 when the queue
        is full, 504 when no answer came within the timeout (the service's, or the
        request's ``timeout_s`` when shorter)."""
        timeout = min(self.options.timeout_s, timeout_s or self.options.timeout_s)
        if self.queued_criteria + size > self.options.max_queue_criteria:
            wait = math.ceil(self.queued_criteria / self.rate) if self.rate else 1
            raise Rejected(
                503,
                f"the queue is full ({self.queued_criteria} criteria waiting); retry later",
                {"Retry-After": str(max(1, wait))},
            )
        job = Job(texts, ids, records, size, asyncio.get_running_loop().create_future())
        self.queue.append(job)
        self.queued_criteria += size
        self.in_flight += 1
        self.wake.set()
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), timeout)
        except asyncio.TimeoutError:
            self._abandon(job)
            raise Rejected(504, f"not answered within {timeout:g} s") from None
        except asyncio.CancelledError:  # the client went away
            self._abandon(job)
            raise
        finally:
            self.in_flight -= 1

    def _abandon(self, job: Job) -> None:
        """A job nobody waits for: out of the queue (and its criteria off the queue's count)
        if its batch has not begun; else its answer is dropped."""
        if job in self.queue:
            self.queue.remove(job)
            self.queued_criteria -= job.size

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.queue:
                self.wake.clear()
                await self.wake.wait()
            await asyncio.sleep(self.options.batch_wait_ms / 1000)  # let a burst arrive
            jobs, size = [], 0
            while self.queue and (not jobs or size + self.queue[0].size
                                  <= self.options.max_batch_criteria):  # fmt: skip
                job = self.queue.popleft()
                self.queued_criteria -= job.size
                jobs.append(job)
                size += job.size
            if not jobs:
                continue
            begin = time.perf_counter()
            try:
                answers = await loop.run_in_executor(self.pool, self._run, jobs)
            except Exception as err:  # a bug: every request of the batch says so
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(err)
                continue
            seconds = time.perf_counter() - begin
            rate = size / max(seconds, 1e-9)
            self.rate = 0.8 * self.rate + 0.2 * rate if self.rate else rate
            self.counts["batches"] += 1
            self.counts["batched_requests"] += len(jobs)
            for job, answer in zip(jobs, answers, strict=True):
                if not job.future.done():
                    job.future.set_result(answer)

    def _run(self, jobs: list[Job]) -> list[list[dict]]:
        """Every job's criteria (dicts), from one model call over all their texts and one
        over all their records (the model's thread)."""
        texts = [t for job in jobs for t in job.texts]
        ids = [i for job in jobs for i in job.ids]
        records = [r for job in jobs for r in job.records]
        documents = iter(self.extractor.extract(texts, ids) if texts else [])
        studies = iter(extract_trials(self.extractor, records) if records else [])
        answers = []
        for job in jobs:
            mine = [next(documents) for _ in job.texts] + [next(studies) for _ in job.records]
            answers.append([c.to_dict() for c in iter_records(mine)])
        return answers

    def metrics(self) -> dict:
        """What ``GET /metrics`` answers."""
        latencies = np.asarray(self.latencies) * 1000

        def quantile(q):
            return round(float(np.percentile(latencies, q)), 1) if latencies.size else None

        return {
            "requests": {str(status): n for status, n in sorted(self.statuses.items())},
            "criteria": self.counts["criteria"],
            "batches": self.counts["batches"],
            "batched_requests": self.counts["batched_requests"],
            "latency_ms": {"p50": quantile(50), "p99": quantile(99), "window": len(latencies)},
            "queue": {"requests": len(self.queue), "criteria": self.queued_criteria},
            "in_flight": self.in_flight,
            "compiled_shapes": self.compiled_shapes(),
            "compile_seconds": round(self.compile_seconds, 2),
            "uptime_s": round(time.time() - self.started, 1),
        }


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets 413 before it is parsed (by
    its Content-Length, or by counting a chunked body as it arrives)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and int(length) > self.max_bytes:
            return await self._too_large(scope, receive, send)
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise _TooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await self._too_large(scope, receive, send)

    async def _too_large(self, scope, receive, send):
        message = f"the request body is over {self.max_bytes} bytes; send fewer criteria"
        await JSONResponse({"error": message}, 413)(scope, receive, send)


class _TooLarge(Exception):
    pass


def _field(loc) -> str:
    """``("body", "texts", 2)`` -> ``texts[2]``."""
    out = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def create_app(extractor: Extractor, options: Options = Options(), model: str = "") -> FastAPI:
    """The FastAPI app of the service around ``extractor`` (``model``: its name in /health)."""
    service = Service(extractor, options)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await service.start()
        yield
        await service.stop()

    from jointre_jax import __version__

    app = FastAPI(title="jointre_jax extraction service", version=__version__, lifespan=lifespan)
    app.state.service = service
    app.add_middleware(BodyLimit, max_bytes=options.max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request, err: RequestValidationError):
        first = err.errors()[0]
        if first.get("type") == "json_invalid":
            message = f"the body is not JSON ({first.get('ctx', {}).get('error', 'invalid')})"
        else:
            message = f"{_field(first.get('loc', ()))}: {first.get('msg')}"
        service.statuses[400] += 1
        return JSONResponse({"error": message}, 400)

    @app.post("/extract")
    async def extract(body: ExtractRequest):
        begin = time.perf_counter()
        try:
            texts, ids, records, skipped, size = parse(body, options.max_request_criteria)
            criteria = await service.submit(texts, ids, records, size, body.timeout_s)
        except Rejected as err:
            service.statuses[err.status] += 1
            return JSONResponse({"error": err.message}, err.status, headers=err.headers)
        service.statuses[200] += 1
        service.counts["criteria"] += len(criteria)
        service.latencies.append(time.perf_counter() - begin)
        return JSONResponse({"criteria": criteria, "skipped": skipped})

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model, "version": __version__,
                "compiled_shapes": service.compiled_shapes()}  # fmt: skip

    @app.get("/metrics")
    async def metrics():
        return service.metrics()

    return app
