#!/bin/bash
# Saves one trained run's extractions of Chia's dev and test splits as members of votes:
#     bash benchmarks/votes/member.sh WORKDIR NAME
# writes benchmarks/votes/NAME.dev.jsonl.gz and NAME.test.jsonl.gz (extract's jsonl, gzipped)
# and NAME.metrics.json (the run's own test scores, metrics.json, and its per-epoch dev log).
# OUT, CHIA and PYTHON override the folder written, the corpus (brat/, splits/) and the Python.
# Then any three members of one recipe score as one vote (README.md here):
#     python -m jointre_jax.tools.vote --extractions=A.test.jsonl.gz,B.test.jsonl.gz,C.test.jsonl.gz ...
set -eu
cd "$(dirname "$0")/../.."
RUN=${1:?usage: member.sh WORKDIR NAME}
NAME=${2:?usage: member.sh WORKDIR NAME}
PY=${PYTHON:-.venv/bin/python}
CHIA=${CHIA:-../shared/data/chia}
OUT=${OUT:-benchmarks/votes}
test -f "$RUN/metrics.json" || { echo "member.sh: $RUN has no metrics.json (not a finished run)" >&2; exit 2; }
for split in dev test; do
    "$PY" -m jointre_jax.tools.extract --workdir="$RUN" --input="$CHIA/brat" \
        --split_file="$CHIA/splits/$split.txt" --output="$OUT/$NAME.$split.jsonl"
    gzip -n -f "$OUT/$NAME.$split.jsonl"
done
"$PY" - "$RUN" "$OUT/$NAME.metrics.json" <<'PYEOF'
import json, pathlib, sys
run, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
log = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
keep = ("epoch", "step", "seconds", "best_epoch", "dev_corpus_ner_f1", "dev_corpus_re_e2e_f1")
record = {
    "config": json.loads((run / "config.json").read_text()),
    "dev_by_epoch": [{k: x[k] for k in keep if k in x} for x in log],
    "test": json.loads((run / "metrics.json").read_text()),
}
out.write_text(json.dumps(record, indent=1) + "\n")
PYEOF
ls -la "$OUT/$NAME".*
