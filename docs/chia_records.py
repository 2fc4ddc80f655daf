"""Writes ClinicalTrials.gov API v2 study records (a search page) around the criteria of the
first N trials of a Chia split, for the review page of the README:

    python docs/chia_records.py ../shared/data/chia test 3 > docs/chia_test_records.json
"""

import json
import pathlib
import sys

from jointre_jax.data.brat import read_text
from jointre_jax.data.trials import study_from_brat


def main(chia: str, split: str, count: str) -> None:
    root = pathlib.Path(chia)
    studies = []
    for nct_id in read_text(root / "splits" / f"{split}.txt").split()[: int(count)]:
        sections = {
            section: read_text(root / "brat" / f"{nct_id}_{suffix}.txt").splitlines()
            for section, suffix in (("inclusion", "inc"), ("exclusion", "exc"))
        }
        studies.append(study_from_brat(nct_id, sections))
    json.dump({"studies": studies}, sys.stdout, indent=1, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
