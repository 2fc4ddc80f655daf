"""File outputs written as they go: JSON lines, CSV and BRAT (plus the grouped view), a chunk
at a time, resumable, and never half-written where the finished output should be.

While a job runs, its output grows hidden beside the target (``.NAME.part``, a folder for
BRAT) with a journal (``.NAME.journal.json``: the run's identity, each committed chunk's input
digest and the byte length of each part file after it). A chunk is committed when its bytes
are on disk (fsync) and the journal says so (:func:`jointre_jax.writers.write_to`: written
beside, fsynced and renamed). A rerun
of the same command cuts the part files back to the last committed chunk and goes on; when
every chunk is in, the parts are renamed into place and the journal removed. A partial output
of another run is refused by name. Standard output (``-``) is written straight through.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil

from jointre_jax import writers
from jointre_jax.errors import UserError
from jointre_jax.store import schema

CSV_HEADER = "csv header"


def _hidden(path: pathlib.Path, suffix: str) -> pathlib.Path:
    return path.with_name(f".{path.name}.{suffix}")


class FileStore:
    """``outputs``: {role: (path or "-", format)}; role ``main`` (jsonl, csv or brat) and
    optionally ``grouped`` (the grouped view, JSON lines). The journal is the main output's."""

    def __init__(self, outputs: dict[str, tuple[str, str]]):
        self.outputs = dict(outputs)
        main, _ = self.outputs["main"]
        self.name = main
        self.streaming = main == "-"
        self.journal_path = None if self.streaming else _hidden(pathlib.Path(main), "journal.json")
        self.journal: dict = {}
        self.streams: dict = {}

    def _part(self, role: str) -> pathlib.Path:
        return _hidden(pathlib.Path(self.outputs[role][0]), "part")

    def open(self, identity: schema.RunIdentity) -> None:
        """Resumes the journal of this run, or starts one; another run's partial output is
        refused by name."""
        fresh = {"key": identity.key, "identity": identity.__dict__, "chunks": {}, "offsets": {}}
        if self.journal_path is not None and self.journal_path.is_file():
            journal = json.loads(self.journal_path.read_text())
            if journal.get("key") != identity.key:
                theirs = schema.RunIdentity(**journal["identity"])
                raise UserError(
                    f"--output={self.name}: a partial output of another run is there "
                    f"({self.journal_path}): " + "; ".join(identity.differences(theirs))
                    + ". It is never mixed with this run's: choose another --output, or delete "
                    f"{self.journal_path} and {self._part('main')} to start again"
                )  # fmt: skip
            self.journal = journal
        else:
            self.journal = fresh
            for role in self.outputs:
                if not self.streaming:
                    part = self._part(role)
                    shutil.rmtree(part) if part.is_dir() else part.unlink(missing_ok=True)
        for role, (target, fmt) in self.outputs.items():
            if fmt == "brat":
                other = [p.name for p in pathlib.Path(target).glob("*")
                         if p.suffix not in (".txt", ".ann")]  # fmt: skip
                if other:
                    raise UserError(f"--output={target} holds files that are not BRAT documents "
                                    f"({other[0]}, ...), which the finished output replaces: "
                                    "give a new folder")  # fmt: skip
                self._part(role).mkdir(parents=True, exist_ok=True)
                continue
            if target == "-":
                self.streams[role] = writers.stdout_stream()
            else:
                stream = open(self._part(role), "a+", encoding="utf-8", newline="")  # noqa: SIM115
                offset = self.journal["offsets"].get(role)
                if offset is not None:
                    stream.truncate(offset)  # the bytes of an uncommitted chunk go
                    stream.seek(offset)
                self.streams[role] = stream
            if fmt == "csv" and role not in self.journal["offsets"]:
                writers.write_csv_header(self.streams[role])
                self._commit(None)

    def committed(self) -> dict[int, str]:
        return {int(k): v for k, v in self.journal.get("chunks", {}).items()}

    def write(self, chunk, extractions, shard: int, num_shards: int) -> dict[str, int]:
        """Appends the chunk to every output and commits it. Returns its counts."""
        for role, (_, fmt) in self.outputs.items():
            if fmt == "brat":
                writers.write_brat(extractions, self._part(role))
            elif fmt == "csv":
                writers.write_csv_rows(extractions, self.streams[role])
            elif role == "grouped":
                writers.write_grouped(extractions, self.streams[role])
            else:
                writers.write_jsonl(extractions, self.streams[role])
        self._commit(chunk)
        return schema.counts(extractions)

    def _commit(self, chunk) -> None:
        for role, stream in self.streams.items():
            stream.flush()
            if self.outputs[role][0] != "-":
                os.fsync(stream.fileno())
                self.journal["offsets"][role] = stream.tell()
        if chunk is not None:
            self.journal["chunks"][str(chunk.index)] = chunk.digest
        if self.journal_path is not None:
            text = json.dumps(self.journal)
            writers.write_to(str(self.journal_path), lambda stream: stream.write(text))

    def finish(self, shard: int, num_shards: int, chunks: int) -> None:
        """Every chunk is in: the parts take the outputs' places, the journal goes."""
        self.close()
        if self.streaming:
            return
        for role, (target, _) in self.outputs.items():
            if target == "-":
                continue
            target, part = pathlib.Path(target), self._part(role)
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(part, target)
        self.journal_path.unlink()

    def close(self) -> None:
        for role, stream in self.streams.items():
            with contextlib.suppress(Exception):
                stream.flush()
                if self.outputs[role][0] == "-":
                    stream.detach()
                else:
                    stream.close()
        self.streams = {}
