"""How fast a browser shows a review page of 1,000 trials (``extract --format=html``).

    python -m benchmarks.review_page [--trials=1000] [--out=/tmp/review_1000.html]

Builds the page of a synthetic extraction (15 criteria a trial, 6 entities and 5 relations a
criterion: the size of a large ClinicalTrials.gov download), then times headless Chromium
from start to its screenshot (first paint of the page) and to its DOM dump (whole page
parsed and serialised), twice each, against a blank page for the browser's own start-up.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import random
import shutil
import subprocess
import time

from jointre_jax import review_page
from jointre_jax.extraction import Criterion, DocumentExtraction, Entity, Relation

WORDS = (
    "patients with type 2 diabetes and hba1c above 7 percent within the last 3 months no "
    "history of heart failure or stroke"
).split()
TYPES = ("Condition", "Drug", "Value", "Temporal", "Measurement", "Qualifier")


def synthetic(trials: int, seed: int = 0) -> list[DocumentExtraction]:
    rng = random.Random(seed)
    documents = []
    for d in range(trials):
        nct_id, criteria, texts, offset, number = f"NCT{d:08d}", [], [], 0, 0
        for c in range(15):
            words = [rng.choice(WORDS) for _ in range(18)]
            text = " ".join(words)
            entities = []
            for k in range(6):  # every third word an entity
                start = len(" ".join(words[: 3 * k])) + (1 if k else 0)
                end = start + len(words[3 * k])
                number += 1
                entities.append(Entity(f"T{number}", rng.choice(TYPES), offset + start,
                                       offset + end, text[start:end]))  # fmt: skip
            pairs = zip(entities, entities[1:], strict=False)
            relations = [Relation("Has_value", a.id, b.id, 0.9) for a, b in pairs]
            section = "inclusion" if c < 7 else "exclusion"
            criteria.append(Criterion(nct_id, c + 1, offset, offset + len(text), text, entities,
                                      relations, 1, nct_id, section))  # fmt: skip
            texts.append(text)
            offset += len(text) + 1
        documents.append(DocumentExtraction(nct_id, "\n".join(texts), criteria))
    return documents


def browser_seconds(page: pathlib.Path, *args: str) -> float:
    started = time.perf_counter()
    subprocess.run(
        [shutil.which("chromium") or "chromium-browser", "--headless", "--no-sandbox",
         "--disable-gpu", "--window-size=1200,900", *args, page.as_uri()],
        capture_output=True, check=True, timeout=300,
    )  # fmt: skip
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--out", default="/tmp/review_1000.html")
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    started = time.perf_counter()
    page = review_page.render(synthetic(args.trials), {"run": "synthetic"})
    render = time.perf_counter() - started
    out.write_text(page)
    blank = out.with_name("blank.html")
    blank.write_text("<!DOCTYPE html><html><body>blank</body></html>")
    shot = str(out.with_suffix(".png"))
    results = {
        "trials": args.trials,
        "megabytes": round(len(page.encode()) / 1e6, 1),
        "render_seconds": round(render, 2),
        "blank_page_screenshot_seconds": [
            round(browser_seconds(blank, f"--screenshot={shot}"), 2) for _ in range(2)
        ],  # fmt: skip
        "screenshot_seconds": [
            round(browser_seconds(out, f"--screenshot={shot}"), 2) for _ in range(2)
        ],  # fmt: skip
        "dump_dom_seconds": [round(browser_seconds(out, "--dump-dom"), 2) for _ in range(2)],
    }
    print(json.dumps(results))


if __name__ == "__main__":
    main()
