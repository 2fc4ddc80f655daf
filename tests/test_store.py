"""Streaming extraction into a store: resuming after kill -9 (DuckDB and PostgreSQL, from
AACT's table too), a full disk, shards, refusal of another run's output, the README's
queries on both backends, and the file formats carrying the database's entities."""

import csv
import json
import os
import pathlib
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import duckdb
import psycopg
import pytest

from jointre_jax import store, streaming
from jointre_jax.data import trials
from jointre_jax.errors import UserError
from jointre_jax.extraction import Criterion, DocumentExtraction, Entity, Extractor, Relation
from jointre_jax.store import duck, postgres, schema
from jointre_jax.store.files import FileStore
from tests.conftest import REPO, SHARED, free_port
from tests.test_train import train_tiny

RECORDS = SHARED / "data" / "ctgov" / "records.jsonl"
needs_records = pytest.mark.skipif(
    not RECORDS.is_file(), reason=f"needs the ClinicalTrials.gov records at {RECORDS} (../shared)"
)
CHUNK = 4  # records per chunk: 31 entries make 8 chunks
EXTRACT = "jointre_jax.tools.extract"
TABLES = ("criteria", "entities", "relations", "skipped")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("store"))[1]


@pytest.fixture(scope="module")
def extractor(run_dir):
    return Extractor.from_workdir(run_dir)


@pytest.fixture(scope="module")
def records_file(tmp_path_factory):
    """30 real records and, as line 7, one without an NCT id (skipped with --lenient)."""
    if not RECORDS.is_file():
        pytest.skip(f"needs the ClinicalTrials.gov records at {RECORDS} (../shared)")
    with open(RECORDS, encoding="utf-8") as f:
        lines = [next(f) for _ in range(30)]
    lines.insert(6, json.dumps({"protocolSection": {"eligibilityModule": {}}}) + "\n")
    path = tmp_path_factory.mktemp("records") / "records.jsonl"
    path.write_text("".join(lines), encoding="utf-8")
    return path


def identity(extractor, run_dir, input_name, chunk=CHUNK):
    return streaming.run_identity(extractor, str(run_dir), input_name, chunk, True)


def library_run(extractor, run_dir, entries, target, input_name, shard=0, num_shards=1):
    """What ``extract`` does, in this process: open, extract every chunk of the shard."""
    target.open(identity(extractor, run_dir, input_name))
    with store.writing(target):
        return streaming.extract_into(
            extractor,
            entries,
            target,
            chunk_records=CHUNK,
            shard=shard,
            num_shards=num_shards,
            progress=False,
        )


def dump(fetchall) -> dict:
    """Every data row, sorted, and each chunk's counts (not when or by which shard)."""
    out = {table: sorted(fetchall(f"SELECT * FROM {table}")) for table in TABLES}
    out["chunks"] = sorted(fetchall(
        "SELECT chunk, first_entry, entries, records, skipped, criteria, entities, relations, "
        "digest FROM chunks"
    ))  # fmt: skip
    return out


def duck_dump(path) -> dict:
    with duckdb.connect(str(path), read_only=True) as con:
        return dump(lambda q: con.execute(q).fetchall())


def pg_dump(url, db_schema) -> dict:
    with psycopg.connect(url) as con:
        con.execute(f"SET search_path TO {db_schema}")
        return dump(lambda q: [tuple(r) for r in con.execute(q).fetchall()])


def cli(*args, env=None):
    return [sys.executable, "-m", EXTRACT, *args], {
        **os.environ, "PYTHONPATH": str(REPO), **(env or {}),
    }  # fmt: skip


def run_cli(*args):
    command, env = cli(*args)
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def kill_at_random_point(*args, signum=signal.SIGKILL):
    """Starts ``extract``, and sends it ``signum`` at a random moment after its first chunk
    is committed; returns the seed of that moment, its exit status and standard error."""
    seed = random.randrange(1 << 30)
    command, env = cli(*args)
    process = subprocess.Popen(command, cwd=REPO, env=env, stderr=subprocess.PIPE)
    seen = bytearray()

    def read():
        while chunk := process.stderr.read(64):
            seen.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + 240
    while not re.search(rb"\| *([1-9]\d*)/\d+ \[", bytes(seen)) and process.poll() is None:
        assert time.monotonic() < deadline, seen[-2000:].decode(errors="replace")
        time.sleep(0.02)
    time.sleep(random.Random(seed).uniform(0.0, 1.0))
    assert process.poll() is None, f"seed {seed}: it finished before the kill"
    process.send_signal(signum)
    status = process.wait(timeout=120)
    reader.join(timeout=10)
    return seed, status, seen.decode(errors="replace")


@needs_records
def test_sigterm_or_kill_at_a_random_point_then_a_rerun_gives_the_same_rows_duckdb(
    extractor, run_dir, records_file, tmp_path
):
    reference = tmp_path / "reference.duckdb"
    entries = trials.iter_entries(records_file, "ctgov", lenient=True)
    library_run(extractor, run_dir, entries, duck.DuckDBStore(reference),
                str(records_file.resolve()))  # fmt: skip
    expected = duck_dump(reference)
    assert len(expected["chunks"]) == 8 and expected["skipped"][0][2] == "no_nct_id"
    assert len(expected["criteria"]) > 100 and expected["entities"] and expected["relations"]

    output = tmp_path / "store.duckdb"
    args = (f"--workdir={run_dir}", f"--input={records_file}", f"--output={output}",
            "--lenient", f"--chunk_records={CHUNK}")  # fmt: skip
    # SIGTERM: the chunk in progress is finished and committed, then a clean stop (143).
    seed, status, stderr = kill_at_random_point(*args, signum=signal.SIGTERM)
    assert status == 143, f"seed {seed}: {stderr[-2000:]}"
    assert re.search(r"extract: stopped by SIGTERM: chunks before chunk [1-7] are committed",
                     stderr), stderr[-2000:]  # fmt: skip
    seed, status, _ = kill_at_random_point(*args)  # then SIGKILL, at any moment
    assert status == -signal.SIGKILL
    done = run_cli(*args)
    assert done.returncode == 0, f"seed {seed}: {done.stderr[-2000:]}"
    assert "chunks were already committed" in done.stderr, done.stderr[-1000:]
    assert duck_dump(output) == expected, f"seed {seed}"
    assert "holds 8 chunks: 30 records, 1 skipped" in done.stderr


@needs_records
def test_shards_together_give_the_rows_of_one_process_and_merge(
    extractor, run_dir, records_file, tmp_path, postgres_server
):
    name = str(records_file.resolve())
    entries = lambda: trials.iter_entries(records_file, "ctgov", lenient=True)  # noqa: E731
    one = tmp_path / "one.duckdb"
    library_run(extractor, run_dir, entries(), duck.DuckDBStore(one), name)
    # Two processes through launch/extract.sh, each its own DuckDB file, joined by merge.
    merged = tmp_path / "merged.duckdb"
    command, env = cli(f"--workdir={run_dir}", f"--input={records_file}", f"--output={merged}",
                       "--lenient", f"--chunk_records={CHUNK}")  # fmt: skip
    env["JOINTRE"] = str(pathlib.Path(sys.executable).parent / "jointre")
    done = subprocess.run([str(REPO / "launch" / "extract.sh"), "2", *command], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "[s0] extract:" in done.stdout and "[s1] extract:" in done.stdout
    assert "merge: 2 shards" in done.stderr + done.stdout
    assert duck_dump(merged) == duck_dump(one)
    assert not list(tmp_path.glob("merged.shard-*"))
    with pytest.raises(UserError, match="shard-0-of-3.duckdb"):
        duck.merge(merged, 3)

    # PostgreSQL: both shards write the same tables; one process resuming finds them done.
    url = postgres_server.url()
    for shard in (0, 1):
        library_run(extractor, run_dir, entries(), postgres.PostgresStore(url, "sharded"), name,
                    shard, 2)  # fmt: skip
    assert pg_dump(url, "sharded") == duck_dump(one)
    again = library_run(extractor, run_dir, entries(), postgres.PostgresStore(url, "sharded"),
                        name)  # fmt: skip
    assert (again.chunks, again.resumed) == (0, 8)


@needs_records
def test_another_runs_output_is_refused_by_name(extractor, run_dir, records_file, tmp_path):
    output = tmp_path / "store.duckdb"
    entries = list(trials.iter_entries(records_file, "ctgov", lenient=True))[:CHUNK]
    library_run(extractor, run_dir, entries, duck.DuckDBStore(output), "input-a")
    other = duck.DuckDBStore(output)
    with pytest.raises(UserError, match=r"another run: input input-a \(this run: input-b\)"):
        other.open(identity(extractor, run_dir, "input-b"))
    other.close()
    changed = schema.RunIdentity(**{**identity(extractor, run_dir, "input-a").__dict__,
                                    "model_digest": "0" * 32})  # fmt: skip
    other = duck.DuckDBStore(output)
    with pytest.raises(UserError, match=r"another run: model .*\(this run: 0000"):
        other.open(changed)
    other.close()
    # The same identity over changed input: the committed chunk's digest tells.
    edited = [trials.TrialRecord(entries[0].nct_id, "Inclusion Criteria:\n* adults", "x"),
              *entries[1:]]  # fmt: skip
    with pytest.raises(UserError, match=r"chunk 0 \(input entries 1-4\) was written from other"):
        library_run(extractor, run_dir, edited, duck.DuckDBStore(output), "input-a")


def _load_eligibilities(url, records_file):
    """An AACT-shaped ``ctgov.eligibilities`` of the records (criteria text as AACT has it)."""
    with psycopg.connect(url) as con:
        con.execute("CREATE SCHEMA IF NOT EXISTS ctgov")
        con.execute("DROP TABLE IF EXISTS ctgov.eligibilities")
        con.execute("CREATE TABLE ctgov.eligibilities (id serial PRIMARY KEY, nct_id varchar, "
                    "gender varchar, minimum_age varchar, criteria text)")  # fmt: skip
        rows = [(r.nct_id, r.criteria) for r in trials.iter_entries(records_file, lenient=True)
                if isinstance(r, trials.TrialRecord)]  # fmt: skip
        rows.append(("NCT00000000", "   "))  # a row with empty criteria: skipped, counted
        with con.cursor().copy("COPY ctgov.eligibilities (nct_id, criteria) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)


@needs_records
def test_from_aact_table_into_postgres_killed_and_rerun_then_the_readme_queries(
    extractor, run_dir, records_file, postgres_server, tmp_path
):
    url = postgres_server.url()
    _load_eligibilities(url, records_file)
    table = postgres.Eligibilities(url)
    assert table.count() == 31
    library_run(extractor, run_dir, table.entries(True), postgres.PostgresStore(url, "reference"),
                table.name)  # fmt: skip
    expected = pg_dump(url, "reference")
    assert expected["skipped"][0][1:3] == ("ctgov.eligibilities row 1 (NCT00000000)",
                                           "empty_criteria")  # fmt: skip

    args = (f"--workdir={run_dir}", f"--input={url}", f"--output={url}", "--db_schema=jointre",
            "--lenient", f"--chunk_records={CHUNK}")  # fmt: skip
    seed, status, _ = kill_at_random_point(*args)
    assert status == -signal.SIGKILL
    done = run_cli(*args)
    assert done.returncode == 0, f"seed {seed}: {done.stderr[-2000:]}"
    assert "chunks were already committed" in done.stderr
    assert pg_dump(url, "jointre") == expected, f"seed {seed}"
    assert "test-password" not in done.stderr
    with psycopg.connect(url) as con:
        con.execute("SET search_path TO jointre")
        for title, query, backends in readme_queries():
            if backends == "both":  # they run on the real store (their rows: see below)
                assert con.execute(query).fetchall() is not None, title


def test_unreachable_server_wrong_password_missing_table_are_one_line(postgres_server, tmp_path):
    records = tmp_path / "r.json"
    records.write_text(json.dumps({"protocolSection": {"identificationModule": {"nctId": "N1"},
                       "eligibilityModule": {"eligibilityCriteria": "* adults"}}}))  # fmt: skip
    closed = f"postgresql://jointre:x@127.0.0.1:{free_port()}/postgres"
    for args, message in [
        ((f"--input={records}", f"--output={closed}"), "cannot connect: connection failed"),
        ((f"--input={records}", f"--output={postgres_server.url(password='wrong')}"),
         "password authentication failed"),
        ((f"--input={postgres_server.url()}", f"--output={tmp_path / 'o.duckdb'}",
          "--input_table=ctgov.no_such_table"), "no table ctgov.no_such_table"),
    ]:  # fmt: skip
        done = run_cli("--workdir=/nonexistent-run", *args)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and message in lines[0], done.stderr
        assert "wrong" not in lines[0] and "test-password" not in lines[0]


@needs_records
@pytest.mark.parametrize("kind", ["jsonl", "duckdb"])
def test_a_full_disk_is_one_line_no_half_file_and_a_rerun_completes(
    extractor, run_dir, records_file, tmp_path, kind
):
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a small tmpfs (CI runs as root)")
    disk = tmp_path / "disk"
    disk.mkdir()
    size = {"jsonl": "48k", "duckdb": "64k"}[kind]  # DuckDB: its write-ahead log fills it
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)]
    ).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        reference = tmp_path / f"reference.{kind}"
        target = (FileStore({"main": (str(reference), "jsonl")}) if kind == "jsonl"
                  else duck.DuckDBStore(reference))  # fmt: skip
        library_run(extractor, run_dir, trials.iter_entries(records_file, "ctgov", lenient=True),
                    target, str(records_file.resolve()))  # fmt: skip
        if kind == "jsonl":
            assert reference.stat().st_size > 3 * 48 * 1024  # it cannot fit
        output = disk / f"out.{kind}"
        args = (f"--workdir={run_dir}", f"--input={records_file}", f"--output={output}",
                "--lenient", f"--chunk_records={CHUNK}")  # fmt: skip
        done = run_cli(*args)
        lines = [x for x in done.stderr.splitlines() if "extracting" not in x]
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
        assert "writing failed (" in lines[-1] and "No space left on device" in lines[-1], lines
        assert "rerun the same command" in lines[-1]
        if kind == "jsonl":
            assert not output.exists()  # no half-written output where the finished one goes
        else:  # the store holds the chunks committed before the disk filled
            assert re.search(r"; [1-7] chunks are committed", lines[-1]), lines[-1]
        subprocess.run(["mount", "-o", "remount,size=16m", str(disk)], check=True)
        done = run_cli(*args)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "chunks were already committed" in done.stderr
        if kind == "jsonl":
            assert output.read_bytes() == reference.read_bytes()
        else:
            assert duck_dump(output) == duck_dump(reference)
        # Nothing beside the output: no .part file, no DuckDB write-ahead log.
        assert sorted(p.name for p in disk.iterdir()) == [f".out.{kind}.lock", f"out.{kind}"]
    finally:
        subprocess.run(["umount", "-l", str(disk)])


@needs_records
def test_jsonl_csv_and_brat_carry_the_entities_of_the_database(
    extractor, run_dir, records_file, tmp_path
):
    name = str(records_file.resolve())
    entries = lambda: trials.iter_entries(records_file, "ctgov", lenient=True)  # noqa: E731
    db = tmp_path / "s.duckdb"
    library_run(extractor, run_dir, entries(), duck.DuckDBStore(db), name)
    files = FileStore({"main": (str(tmp_path / "o.jsonl"), "jsonl"),
                       "grouped": (str(tmp_path / "g.jsonl"), "grouped")})  # fmt: skip
    library_run(extractor, run_dir, entries(), files, name)
    library_run(extractor, run_dir, entries(), FileStore({"main": (str(tmp_path / "o.csv"),
                                                                   "csv")}), name)  # fmt: skip
    library_run(extractor, run_dir, entries(), FileStore({"main": (str(tmp_path / "brat"),
                                                                   "brat")}), name)  # fmt: skip
    with duckdb.connect(str(db), read_only=True) as con:
        expected = sorted(con.execute(
            "SELECT nct_id, entity_id, type, start_offset, end_offset, text FROM entities"
        ).fetchall())  # fmt: skip
    rows = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert sorted((r["nct_id"], e["id"], e["type"], e["start"], e["end"], e["text"])
                  for r in rows for e in r["entities"]) == expected  # fmt: skip
    with open(tmp_path / "o.csv", newline="") as f:
        table = [r for r in csv.DictReader(f) if r["kind"] == "entity"]
    assert sorted((r["nct_id"], r["id"], r["type"], int(r["start"]), int(r["end"]), r["text"])
                  for r in table) == expected  # fmt: skip
    brat = sum(1 for f in (tmp_path / "brat").glob("*.ann") for x in f.read_text().splitlines()
               if x.startswith("T"))  # fmt: skip
    assert brat == len(expected)
    assert len((tmp_path / "g.jsonl").read_text().splitlines()) == len(rows)
    assert not list(tmp_path.glob(".*.journal.json")) and not list(tmp_path.glob(".*.part"))


# ----------------------------------------------------------------- the README's queries


def readme_queries() -> list[tuple[str, str, str]]:
    """(title, SQL, backends) of each ```sql block of the README's query section."""
    text = (REPO / "README.md").read_text()
    section = text.split("### Querying the store", 1)[1].split("\n## ", 1)[0]
    out = []
    for block in re.findall(r"```sql\n(.*?)```", section, re.S):
        title = block.splitlines()[0].removeprefix("--").strip()
        out.append((title, block, "duckdb" if title.startswith("DuckDB") else "both"))
    return out


def hand_made_store(target):
    """Three trials, written as extraction writes them."""

    def excluded(nct, condition, entity_id):
        return criterion(nct, "exclusion", condition, [(entity_id, "Condition", condition)])

    def criterion(nct, section, text, entities=(), relations=()):
        ents = [Entity(i, kind, text.index(word), text.index(word) + len(word), word)
                for i, kind, word in entities]  # fmt: skip
        return Criterion(nct, 1, 0, len(text), text, ents, list(relations), 1, nct, section)

    def shift(nct, criteria):
        # Each criterion at its own offsets in the record text, entity ids across the record.
        offset, out = 0, []
        for c in criteria:
            c.start, c.end = offset, offset + len(c.text)
            c.entities = [Entity(e.id, e.type, e.start + offset, e.end + offset, e.text)
                          for e in c.entities]  # fmt: skip
            out.append(c)
            offset += len(c.text) + 1
        return DocumentExtraction(nct, "\n".join(c.text for c in out), out)

    extractions = [
        shift("NCT01", [
            criterion("NCT01", "inclusion", "HbA1c > 7 %", [("T1", "Measurement", "HbA1c"),
                      ("T2", "Value", "> 7 %")], [Relation("Has_value", "T1", "T2", 0.9)]),
            criterion("NCT01", "exclusion", "Pregnant or breastfeeding",
                      [("T3", "Condition", "Pregnant"), ("T4", "Condition", "breastfeeding")]),
            excluded("NCT01", "heart failure", "T5"),
        ]),
        shift("NCT02", [
            criterion("NCT02", "inclusion", "HbA1c 7-10 %", [("T1", "Measurement", "HbA1c"),
                      ("T2", "Value", "7-10 %")], [Relation("Has_value", "T1", "T2", 0.8)]),
            excluded("NCT02", "Pregnancy", "T3"),
            excluded("NCT02", "Heart failure", "T4"),
        ]),
        shift("NCT03", [
            criterion("NCT03", "inclusion", "pregnant women", [("T1", "Condition", "pregnant")]),
            criterion("NCT03", "inclusion", "glucose > 7", [("T2", "Measurement", "glucose"),
                      ("T3", "Value", "> 7")], [Relation("Has_value", "T2", "T3", 0.7)]),
            excluded("NCT03", "heart failure", "T4"),
        ]),
    ]  # fmt: skip
    records = [trials.TrialRecord(e.doc_id, e.text, "hand") for e in extractions]
    target.open(schema.RunIdentity("hand", "m", "c", "hand", 3, False))
    target.write(streaming.Chunk(0, 0, records), extractions, 0, 1)
    target.finish(0, 1, 1)


EXPECTED = {  # the rows each README query returns on the hand-made store
    "Trials whose exclusion criteria name a pregnancy Condition": [("NCT01",), ("NCT02",)],
    "Every Value attached by Has_value to a Measurement named HbA1c, with its trial": [
        ("NCT01", "HbA1c", "> 7 %", "HbA1c > 7 %"), ("NCT02", "HbA1c", "7-10 %", "HbA1c 7-10 %"),
    ],
    "The most frequent excluded Conditions": [
        ("heart failure", 3), ("breastfeeding", 1), ("pregnancy", 1), ("pregnant", 1),
    ],
    "How far the job has gone, and what was skipped": [(1, 3, 0, 9)],
}  # fmt: skip


@pytest.mark.parametrize("backend", ["duckdb", "postgresql"])
def test_the_readme_queries_return_the_expected_rows(backend, tmp_path, request):
    if backend == "duckdb":
        target = duck.DuckDBStore(tmp_path / "hand.duckdb")
    else:
        target = postgres.PostgresStore(request.getfixturevalue("postgres_server").url(), "hand")
    hand_made_store(target)
    queries = readme_queries()
    assert {title for title, _, b in queries if b == "both"} == set(EXPECTED)
    for title, query, backends in queries:
        if backends != "both" and backends != backend:
            continue
        if title in EXPECTED:
            rows = [tuple(r) for r in target.connection.execute(query).fetchall()]
            assert rows == EXPECTED[title], title
        else:  # DuckDB: the Parquet export
            cwd = os.getcwd()
            os.chdir(tmp_path)
            try:
                target.connection.execute(query)
            finally:
                os.chdir(cwd)
            parquet = tmp_path / "entities.parquet"
            assert duckdb.sql(f"SELECT count(*) FROM '{parquet}'").fetchall() == [(13,)]
    target.close()
