#!/bin/bash
# Nine seeds of configs/minilm_span.py side by side on one GPU (H100/H200), then three
# disjoint three-seed ensembles ({0,1,2}, {3,4,5}, {6,7,8}; jointre_jax.tools.evaluate --ensemble)
# scored on dev and test against the corpus gold: one command of at most 10 minutes.
#
# Here (a machine with ../shared and the project's .venv), once:
#     bash benchmarks/gpu_ensemble.sh --prepare
# writes .gpu/ (ignored by git, about 50 MiB: the MiniLM in float16, Chia's brat/ and splits/,
# the ml_collections wheel). On the GPU machine (the device tool: carry .gpu):
#     bash benchmarks/gpu_ensemble.sh OUT [SEEDS]
# widens the MiniLM to float32 in /tmp, trains, and leaves OUT/sweep.json and OUT/ensemble.md
# (benchmarks/variant_sweep.py's table). SEEDS: default 0,...,8. VARIANTS: variant_sweep's
# variants, default base (VARIANTS=base,neg03 with SEEDS 0,1,2 trains six runs and scores
# one ensemble of each). EXTRA: more variant_sweep arguments (a CPU smoke run:
# EXTRA='--set num_epochs=1 --set data.max_train_examples=32'). MEMBERS=1: afterwards, every
# run that finished (its metrics.json) also saves its dev and test extractions as a vote member,
# OUT/votes/RUN.{dev,test}.jsonl.gz and RUN.metrics.json (benchmarks/votes/member.sh, all at
# once; give DEADLINE about 60 s less than the call's limit for them). Copy those files into
# benchmarks/votes/ here to vote them with CPU runs of the same recipe.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

cast() {  # SRC DST DTYPE: a safetensors file with its floating-point tensors in DTYPE
    "$PY" - "$@" <<'EOF'
import sys
from safetensors.numpy import load_file, save_file
src, dst, dtype = sys.argv[1:]
tensors = load_file(src)
save_file({k: v.astype(dtype) if v.dtype.kind == "f" else v for k, v in tensors.items()}, dst)
EOF
}

if [ "${1:-}" = "--prepare" ]; then
    set -e
    PY=${PYTHON:-.venv/bin/python}
    SHARED=${SHARED:-../shared}
    grep -qx "/.gpu/" .git/info/exclude 2>/dev/null || echo "/.gpu/" >> .git/info/exclude
    rm -rf .gpu && mkdir -p .gpu/minilm .gpu/chia .gpu/whl
    cp -r "$SHARED/data/chia/brat" "$SHARED/data/chia/splits" .gpu/chia/
    model="$SHARED/models/all-MiniLM-L6-v2"
    cp "$model"/*.json "$model/vocab.txt" .gpu/minilm/
    cast "$model/model.safetensors" .gpu/minilm/model.safetensors float16
    version=$("$PY" -c "import importlib.metadata as m; print(m.version('ml_collections'))")
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux2014_x86_64 -d .gpu/whl \
        "ml_collections==$version"
    du -sh .gpu
    exit 0
fi

OUT=${1:?usage: gpu_ensemble.sh OUT [SEEDS] | --prepare}
SEEDS=${2:-0,1,2,3,4,5,6,7,8}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
if ! "$PY" -c "import ml_collections" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-cache-dir --target /tmp/site .gpu/whl/*.whl
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
mkdir -p /tmp/minilm && cp .gpu/minilm/*.json .gpu/minilm/vocab.txt /tmp/minilm/
cast .gpu/minilm/model.safetensors /tmp/minilm/model.safetensors float32
# Many processes share one GPU: no preallocation; quick autotuning for many compilations.
export XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_FLAGS=--xla_gpu_autotune_level=0
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/gpu.txt" 2>&1
"$PY" -m benchmarks.variant_sweep --config=configs/minilm_span.py \
    --set data.dir="$PWD/.gpu/chia" --set model.encoder=/tmp/minilm \
    --variants="${VARIANTS:-base}" --seeds="$SEEDS" --confirm=0 --phase1=1.0 \
    --deadline="${DEADLINE:-585}" --ensemble_size=3 --ensemble_seconds="${ENSEMBLE_SECONDS:-85}" \
    --poll=20 --out="$OUT" --workdirs="${WORKDIRS:-/tmp/sweep}" ${EXTRA:-}
"$PY" -m benchmarks.variant_sweep --config=x --workdirs=x --report="$OUT/sweep.json" \
    --out="$OUT/ensemble.md" --machine="$(cat "$OUT/gpu.txt")"
if [ -n "${MEMBERS:-}" ]; then
    mkdir -p "$OUT/votes"
    for run in "${WORKDIRS:-/tmp/sweep}"/*/; do
        name=$(basename "$run")
        # member.sh itself refuses an unfinished run (no metrics.json); any failure is listed.
        (OUT="$OUT/votes" CHIA=.gpu/chia PYTHON="$PY" bash benchmarks/votes/member.sh "$run" "$name" \
            > "$OUT/votes/$name.log" 2>&1 ||
            echo "not saved as a vote member: $name (votes/$name.log)" | tee -a "$OUT/votes/skipped.txt") &
    done
    wait
    ls "$OUT/votes"
fi
