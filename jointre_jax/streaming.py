"""Streaming extraction: records in, a chunk at a time, through ``Extractor``, into a store.

    for chunk in chunked(entries, 256): ...      # entries: TrialRecord | Skip | TextDocument
    summary = extract_into(extractor, entries, store, chunk_records=256, shard=0, num_shards=1)

Chunk ``k`` is entries ``k * C`` to ``(k + 1) * C - 1`` of the input in its order (records
and skipped ones alike), so chunks do not depend on how many processes share the work: shard
``i`` of ``N`` takes the chunks with ``k % N == i``; one process resuming an 8-shard job, or
8 shards resuming a one-process job, each find the committed chunks and do the rest. A
committed chunk is verified by the digest of its input and skipped; any other is extracted
and written by the store (:mod:`jointre_jax.store`) in one commit. Memory holds one chunk.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import time
from collections.abc import Iterable, Iterator

import jax
import numpy as np
from tqdm.auto import tqdm

from jointre_jax import preemption
from jointre_jax.data import corpus, trials
from jointre_jax.errors import Preempted, UserError
from jointre_jax.extraction import Extractor, extract_trials
from jointre_jax.store.schema import RunIdentity


@dataclasses.dataclass(frozen=True)
class TextDocument:
    """A plain-text input document (one criterion a line), by name."""

    doc_id: str
    text: str


@dataclasses.dataclass
class Chunk:
    """Entries ``first_entry`` onwards of the input: chunk ``index``."""

    index: int
    first_entry: int
    entries: list

    @property
    def records(self) -> list:
        return [e for e in self.entries if not isinstance(e, trials.Skip)]

    @property
    def skips(self) -> list[trials.Skip]:
        return [e for e in self.entries if isinstance(e, trials.Skip)]

    @property
    def digest(self) -> str:
        """sha256 of what the chunk's rows depend on: each entry's id and text (a skip's
        reason and message)."""
        digest = hashlib.sha256()
        for e in self.entries:
            if isinstance(e, trials.Skip):
                fields = ("skip", e.reason, e.message)
            elif isinstance(e, TextDocument):
                fields = ("text", e.doc_id, e.text)
            else:
                fields = ("record", e.nct_id, e.criteria)
            digest.update(json.dumps(fields, ensure_ascii=False).encode())
        return digest.hexdigest()[:32]


def chunked(entries: Iterable, size: int) -> Iterator[Chunk]:
    """Consecutive chunks of ``size`` entries (the last may be shorter)."""
    buffer, index, first = [], 0, 0
    for entry in entries:
        buffer.append(entry)
        if len(buffer) == size:
            yield Chunk(index, first, buffer)
            buffer, index, first = [], index + 1, first + size
    if buffer:
        yield Chunk(index, first, buffer)


def extract_chunk(extractor: Extractor, chunk: Chunk):
    """The extractions of a chunk's usable entries (records, or text documents)."""
    records = chunk.records
    if records and isinstance(records[0], TextDocument):
        return extractor.extract([d.text for d in records], [d.doc_id for d in records])
    return extract_trials(extractor, records) if records else []


def shard_entries(total: int | None, size: int, shard: int, num_shards: int) -> int | None:
    """How many of ``total`` entries fall in shard ``shard``'s chunks (None: unknown)."""
    if total is None:
        return None
    return sum(
        min(size, total - k * size) for k in range(-(-total // size)) if k % num_shards == shard
    )


def run_identity(extractor: Extractor, model: str, input_name: str, chunk_records: int,
                 lenient: bool) -> RunIdentity:  # fmt: skip
    """The identity of extracting ``input_name`` with ``extractor``'s run: its parameters'
    digest, and the digest of every config field a prediction depends on (the model's and the
    encoding's; not devices, sharding or machine paths)."""
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(extractor.predictor.params):
        array = np.asarray(jax.device_get(leaf))
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(array.tobytes())
    config = extractor.config
    fields = {k: v for k, v in config.model.to_dict().items() if k != "encoder"}
    fields["data"] = {k: config.data[k] for k in corpus.ENCODING_FIELDS}
    config_digest = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode())
    return RunIdentity(model, digest.hexdigest()[:32], config_digest.hexdigest()[:32],
                       input_name, chunk_records, lenient)  # fmt: skip


@dataclasses.dataclass
class Summary:
    """What one process did: chunks written, chunks found committed (resumed), records
    extracted, skips by reason, rows written, and its seconds of work."""

    chunks: int = 0
    resumed: int = 0
    records: int = 0
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    criteria: int = 0
    entities: int = 0
    relations: int = 0
    windowed: int = 0
    seconds: float = 0.0
    messages: list = dataclasses.field(default_factory=list)
    total_chunks: int = 0


def extract_into(
    extractor: Extractor,
    entries: Iterable,
    store,
    *,
    chunk_records: int,
    shard: int = 0,
    num_shards: int = 1,
    total: int | None = None,
    progress: bool = True,
) -> Summary:
    """Extracts every chunk of ``entries`` of this shard that ``store`` has not committed,
    writing each as it finishes; then records the shard as finished. ``total``: entries in
    the input, when known (the progress bar's ETA). A committed chunk whose input differs is
    a UserError: the input changed since that chunk was written. SIGTERM or SIGINT finishes the
    chunk in progress and raises :class:`~jointre_jax.errors.Preempted` (exit 143 or 130)."""
    committed = store.committed()
    summary = Summary()
    started = time.perf_counter()
    bar = tqdm(total=shard_entries(total, chunk_records, shard, num_shards), unit=" records",
               desc=f"extracting (shard {shard}/{num_shards})" if num_shards > 1 else "extracting",
               disable=not progress, dynamic_ncols=True, smoothing=0.1)  # fmt: skip
    stop = preemption.StopRequest("finishing this chunk, then stopping")
    with bar, stop:
        for chunk in chunked(entries, chunk_records):
            if stop.signum is not None:  # the chunks before are committed: a clean stop
                raise Preempted(chunk.index, stop.signum, (
                    f"chunks before chunk {chunk.index} are committed; rerun the same command "
                    "to go on from there"
                ))  # fmt: skip
            summary.total_chunks = chunk.index + 1
            if chunk.index % num_shards != shard:
                continue
            last = chunk.first_entry + len(chunk.entries)
            if chunk.index in committed:
                if committed[chunk.index] != chunk.digest:
                    raise UserError(
                        f"--output={store.name}: chunk {chunk.index} (input entries "
                        f"{chunk.first_entry + 1}-{last}) was written from other input: the "
                        "input changed since; choose another --output, or delete it to start "
                        "again"
                    )
                summary.resumed += 1
                bar.update(len(chunk.entries))
                continue
            extractions = extract_chunk(extractor, chunk)
            counts = store.write(chunk, extractions, shard, num_shards)
            summary.chunks += 1
            summary.records += len(chunk.records)
            summary.skipped.update(s.reason for s in chunk.skips)
            summary.messages.extend(f"{s.source}: {s.message}" for s in chunk.skips)
            summary.criteria += counts["criteria"]
            summary.entities += counts["entities"]
            summary.relations += counts["relations"]
            summary.windowed += sum(c.windows > 1 for e in extractions for c in e.criteria)
            bar.set_postfix(criteria=summary.criteria, refresh=False)
            bar.update(len(chunk.entries))
    summary.seconds = time.perf_counter() - started
    store.finish(shard, num_shards, summary.total_chunks)
    return summary
