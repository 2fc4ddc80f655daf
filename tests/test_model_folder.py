"""Model folders: an exported run extracts exactly what its run does on a machine that has
neither the run nor its encoder folder; lower-precision exports agree; a hub id loads from
the cache offline; what is not a model is one clear line."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from jointre_jax import model_folder
from tests.conftest import CHIA_DIR, REPO
from tests.test_train import train_tiny


def command(module, *args, env=None):
    """Runs ``python -m module args`` from the repository; returns the CompletedProcess."""
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def export(run, out, dtype="float32"):
    done = command("jointre_jax.export", f"--workdir={run}", f"--out={out}", f"--dtype={dtype}")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def extract(model_flag, inputs, out, env=None):
    """``extract`` of ``inputs`` (extra flags) into ``out``; its JSON lines, parsed."""
    done = command("jointre_jax.tools.extract", model_flag, *inputs, f"--output={out}", env=env)
    assert done.returncode == 0, done.stderr
    return [json.loads(x) for x in pathlib.Path(out).read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(root of the tiny run, its corpus and encoder; the run folder; extraction inputs)."""
    root = tmp_path_factory.mktemp("trained")
    _, run = train_tiny(root)
    if (CHIA_DIR / "splits" / "test.txt").is_file():  # Chia's test split, when ../shared has it
        inputs = [f"--input={CHIA_DIR / 'brat'}", f"--split_file={CHIA_DIR / 'splits/test.txt'}"]
    else:
        inputs = [f"--input={root / 'corpus' / 'brat'}"]
    return root, run, inputs


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    """The float32 model folder of the tiny run (``jointre export``)."""
    folder = tmp_path_factory.mktemp("exported") / "model"
    export(trained[1], folder)
    return folder


def test_an_exported_folder_extracts_what_its_run_does_with_the_run_and_encoder_gone(
    trained, exported, tmp_path
):
    root, run, inputs = trained
    expected = extract(f"--workdir={run}", inputs, tmp_path / "run.jsonl")
    entities = sum(len(c["entities"]) for c in expected)
    relations = sum(len(c["relations"]) for c in expected)
    assert entities > 50 and relations > 5  # enough to compare
    text = (exported / "config.json").read_text() + (exported / "README.md").read_text()
    assert str(root) not in text and str(REPO) not in text  # no machine paths
    assert sorted(p.name for p in exported.iterdir()) == [
        "README.md", "config.json", "encoder", "labels.json", "metrics.json", "model.safetensors"
    ]  # fmt: skip
    # A colleague's machine: the folder copied elsewhere, the run and its encoder gone.
    elsewhere = tmp_path / "colleague" / "model"
    shutil.copytree(exported, elsewhere)
    hidden = root.with_name(root.name + "-hidden")
    root.rename(hidden)
    try:
        got = extract(f"--model={elsewhere}", inputs, tmp_path / "model.jsonl")
    finally:
        hidden.rename(root)
    assert got == expected  # same criteria, entities, relations and scores (4 decimals)


def test_an_ensemble_mixes_a_run_and_a_model_folder(trained, exported, tmp_path):
    root, run, _ = trained
    inputs = [f"--input={root / 'corpus' / 'brat'}"]
    alone = extract(f"--workdir={run}", inputs, tmp_path / "alone.jsonl")
    both = extract(f"--model={exported}", [*inputs, f"--ensemble={run}"], tmp_path / "both.jsonl")
    assert both == alone  # the mean of two copies of one model is that model


def test_half_precision_exports_agree_and_are_half_the_size(trained, exported, tmp_path):
    root, run, _ = trained
    inputs = [f"--input={root / 'corpus' / 'brat'}"]
    reference = extract(f"--workdir={run}", inputs, tmp_path / "f32.jsonl")
    spans = lambda rows: {(c["doc_id"], e["start"], e["end"], e["type"])  # noqa: E731
                          for c in rows for e in c["entities"]}  # fmt: skip
    for dtype in ("bfloat16", "float16"):
        export(run, tmp_path / dtype, dtype)
        weights = [(d / model_folder.WEIGHTS).stat().st_size for d in (exported, tmp_path / dtype)]
        assert weights[1] < 0.55 * weights[0]
        assert json.loads((tmp_path / dtype / "config.json").read_text())["dtype"] == dtype
        got = extract(f"--model={tmp_path / dtype}", inputs, tmp_path / f"{dtype}.jsonl")
        agree = len(spans(got) & spans(reference)) / max(len(spans(reference)), 1)
        assert agree >= 0.9, (dtype, agree)


def hub_cache(cache: pathlib.Path, repo_id: str, folder: pathlib.Path) -> None:
    """``folder`` laid out in huggingface_hub's cache as the snapshot of ``repo_id``'s main."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(folder, repo / "snapshots" / commit)


def test_a_hub_id_loads_from_the_cache_offline_and_a_missing_one_is_one_line(
    trained, exported, tmp_path
):
    root, run, _ = trained
    inputs = [f"--input={root / 'corpus' / 'brat'}"]
    hub_cache(tmp_path / "hub", "jointre/tiny-chia", exported)
    offline = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    expected = extract(f"--workdir={run}", inputs, tmp_path / "run.jsonl")
    assert extract("--model=jointre/tiny-chia", inputs, tmp_path / "hub.jsonl", offline) == expected
    done = command("jointre_jax.tools.extract", "--model=jointre/nothing-here", *inputs,
                   f"--output={tmp_path / 'x.jsonl'}", env=offline)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert "jointre/nothing-here is not in the cache" in done.stderr
    assert "HF_HUB_OFFLINE" in done.stderr
    unreachable = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_CACHE": str(tmp_path / "empty")}
    done = command("jointre_jax.tools.extract", "--model=jointre/tiny-chia", *inputs,
                   f"--output={tmp_path / 'x.jsonl'}", env=unreachable)  # fmt: skip
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stderr
    assert "the hub cannot be reached" in done.stderr


def test_evaluate_takes_a_model_folder_and_its_card_tells_its_scores(trained, exported, tmp_path):
    root, run, _ = trained
    saved = json.loads((run / "metrics.json").read_text())["corpus"]  # the run's test split
    done = command("jointre_jax.tools.evaluate", f"--model={exported}",
                   f"--brat_dir={root / 'corpus' / 'brat'}",
                   f"--split_file={root / 'corpus' / 'splits' / 'train.txt'}",
                   f"--out={tmp_path / 'scores.json'}")  # fmt: skip
    assert done.returncode == 0, done.stderr
    corpus = json.loads((tmp_path / "scores.json").read_text())["corpus"]
    assert corpus["ner"]["f1"] == saved["ner"]["f1"] > 0.3
    assert corpus["re_e2e"]["f1"] == saved["re_e2e"]["f1"]
    card = (exported / "README.md").read_text()
    assert f"| NER | {saved['ner']['precision']:.3f} | {saved['ner']['recall']:.3f} |" in card
    assert "jointre evaluate --model=" in card and "## Intended use and limitations" in card
    labels = json.loads((exported / "labels.json").read_text())
    assert labels["relation_labels"][0] == "none" and "Condition" in labels["entity_types"]


def test_what_is_not_a_model_folder_is_one_line(trained, exported, tmp_path):
    root, run, inputs = trained
    damaged = tmp_path / "damaged"
    shutil.copytree(exported, damaged)
    weights = bytearray((damaged / model_folder.WEIGHTS).read_bytes())
    weights[-1] ^= 0xFF
    (damaged / model_folder.WEIGHTS).write_bytes(bytes(weights))
    cases = {
        root / "encoder": "is not a run or a model folder",
        tmp_path / "missing": "not found",
        damaged: "its sha256 is not the one config.json records",
    }
    for folder, message in cases.items():
        done = command("jointre_jax.tools.extract", f"--model={folder}", *inputs,
                       f"--output={tmp_path / 'x.jsonl'}")  # fmt: skip
        assert done.returncode == 2, (folder, done.stderr)
        assert done.stderr.strip().count("\n") == 0 and message in done.stderr, done.stderr
    done = command("jointre_jax.export", f"--workdir={run}", f"--out={exported}")
    assert done.returncode == 2 and "is not an empty folder" in done.stderr
