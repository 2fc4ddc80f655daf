"""Model folders of a trained run: size, exactness in float32, agreement in half precision.

    python -m benchmarks.export --workdir=RUN [--chia=../shared/data/chia]
        [--json=benchmarks/results/cpu_export.json]

For each dtype (float32, bfloat16, float16) ``jointre export`` writes a model folder, and
``jointre extract --model=DIR`` extracts the Chia test split's documents, as does
``--workdir=RUN`` once. Reported per dtype: the folder's bytes (and the weights' alone), the
share of the run's entities (document, span, type) the folder also finds, whether its
entities and relations are the run's exactly, the largest difference of a shared relation's
score, and ``jointre evaluate --model=DIR`` on the test split against the corpus gold
(NER and strict end-to-end RE F1), beside the run's.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import tempfile

from absl import app, flags

from benchmarks.throughput import machine, print_and_save

FLAGS = flags.FLAGS
REPO = pathlib.Path(__file__).resolve().parent.parent
DTYPES = ("float32", "bfloat16", "float16")


def _define_flags() -> None:
    flags.DEFINE_string("workdir", None, "A trained run.")
    flags.DEFINE_string("chia", str(REPO.parent / "shared/data/chia"), "The Chia corpus.")
    flags.DEFINE_string("json", None, "Also write the results here.")


def jointre(*args: str) -> str:
    command = [str(pathlib.Path(sys.executable).parent / "jointre"), *args]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"export benchmark: {' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def extracted(model_flag: str, out: pathlib.Path) -> list[dict]:
    chia = pathlib.Path(FLAGS.chia)
    jointre("extract", model_flag, f"--input={chia / 'brat'}",
            f"--split_file={chia / 'splits' / 'test.txt'}", f"--output={out}")  # fmt: skip
    return [json.loads(x) for x in out.read_text().splitlines()]


def scores(model_flag: str, out: pathlib.Path) -> dict:
    chia = pathlib.Path(FLAGS.chia)
    jointre("evaluate", model_flag, f"--brat_dir={chia / 'brat'}",
            f"--split_file={chia / 'splits' / 'test.txt'}", f"--out={out}")  # fmt: skip
    corpus = json.loads(out.read_text())["corpus"]
    return {"ner_f1": round(corpus["ner"]["f1"], 4), "re_f1": round(corpus["re_e2e"]["f1"], 4)}


def entities(rows: list[dict]) -> set:
    return {(c["doc_id"], e["start"], e["end"], e["type"]) for c in rows for e in c["entities"]}


def relation_scores(rows: list[dict]) -> dict:
    """{(doc, head span, tail span, type): score} of every relation."""
    out = {}
    for c in rows:
        spans = {e["id"]: (e["start"], e["end"]) for e in c["entities"]}
        for r in c["relations"]:
            out[(c["doc_id"], spans[r["head"]], spans[r["tail"]], r["type"])] = r["score"]
    return out


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    results = {"workdir": FLAGS.workdir, "input": "Chia test split (documents' .txt)"}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        run_rows = extracted(f"--workdir={FLAGS.workdir}", tmp / "run.jsonl")
        run_entities, run_relations = entities(run_rows), relation_scores(run_rows)
        results["run"] = {
            "criteria": len(run_rows),
            "entities": len(run_entities),
            "relations": len(run_relations),
            "scores": scores(f"--workdir={FLAGS.workdir}", tmp / "run.json"),
        }
        for dtype in DTYPES:
            folder = tmp / dtype
            jointre("export", f"--workdir={FLAGS.workdir}", f"--out={folder}", f"--dtype={dtype}")
            rows = extracted(f"--model={folder}", tmp / f"{dtype}.jsonl")
            found, relations = entities(rows), relation_scores(rows)
            shared = run_relations.keys() & relations.keys()
            results[dtype] = {
                "folder_bytes": sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()),
                "weights_bytes": (folder / "model.safetensors").stat().st_size,
                "entities": len(found),
                "entities_agreeing": round(len(found & run_entities) / len(run_entities), 5),
                "identical_to_run": rows == run_rows,
                "max_relation_score_difference": max(
                    (abs(run_relations[k] - relations[k]) for k in shared), default=0.0
                ),
                "scores": scores(f"--model={folder}", tmp / f"{dtype}.json"),
            }
    results["machine"] = machine()
    print_and_save(results, FLAGS.json)


if __name__ == "__main__":
    _define_flags()
    flags.mark_flag_as_required("workdir")
    app.run(main)
