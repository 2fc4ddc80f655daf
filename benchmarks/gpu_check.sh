#!/usr/bin/env bash
# Every GPU figure of the project in one run of at most 8 minutes (one H100 or H200):
#
#   1. the time to the first step of a packed MiniLM run on Chia, in a fresh process with the
#      compilation cache off (benchmarks/epoch_speed.py, 50 steps);
#   2. a 7-epoch packed MiniLM run on Chia, end to end (python -m jointre_jax.main), wall time;
#   3. BERT-base shaped training at S128 B32 in bf16 against PyTorch eager (bf16 autocast, fused
#      AdamW) on the same GPU and the same packed batches, its MFU, and inference criteria/s
#      (benchmarks/throughput.py --encoder_size=base);
#   4. the same comparison with the MiniLM itself.
# (Length buckets are left out: on a GPU each bucket shape costs about a minute to compile.)
#
#   bash benchmarks/gpu_check.sh OUT_DIR
#
# Reads Chia and the MiniLM from ../shared, or from JOINTRE_DATA_DIR / JOINTRE_ENCODER. Needs
# JAX with a GPU, flax, optax, orbax, transformers, torch and ml_collections; downloads
# nothing. Writes OUT_DIR/{epoch_speed.json, run/, run.log, throughput_base.json, summary.json}
# and prints the summary. GPU_CHECK_SMOKE=1 runs every step a few batches long with the
# config's own encoder (a CPU test of the script itself, tests/test_benchmarks.py; its figures
# mean nothing), each step's time limit times GPU_CHECK_SCALE (4 by default: a shared CPU is
# slow, and the limits guard a GPU budget that a smoke run does not spend); GPU_CHECK_EXTRA
# adds --config overrides to every step.
set -euo pipefail
OUT=${1:?usage: bash benchmarks/gpu_check.sh OUT_DIR}
mkdir -p "$OUT"
PY=${PYTHON:-python}
DATA=${JOINTRE_DATA_DIR:-../shared/data/chia}
ENCODER=${JOINTRE_ENCODER:-../shared/models/all-MiniLM-L6-v2}
export XLA_PYTHON_CLIENT_PREALLOCATE=false
CONFIG=(--config=configs/minilm_m2.py "--config.data.dir=$DATA" "--config.model.encoder=$ENCODER"
        --config.model.compute_dtype=bfloat16)
EPOCHS=7 EPOCH_STEPS=50 TRAIN_BATCHES=20 INFER_BATCHES=20 ROUNDS=3 ROWS=32 SIZE=base EXTRA=()
SCALE=1
if [[ "${GPU_CHECK_SMOKE:-0}" == 1 ]]; then
  SCALE=${GPU_CHECK_SCALE:-4}
  EPOCHS=1 EPOCH_STEPS=3 TRAIN_BATCHES=2 INFER_BATCHES=2 ROUNDS=1 ROWS=1 SIZE=config
  EXTRA=(--config.model.compute_dtype=float32 --config.data.max_train_examples=64
         --config.data.max_eval_examples=32 --config.num_devices=1)
fi
read -r -a MORE <<< "${GPU_CHECK_EXTRA:-}"  # more --config overrides (the test's tiny encoder)
EXTRA+=("${MORE[@]}")
say() { echo "== $* ($(date +%T))" >&2; }

# A step that fails or runs out of its time is reported and the others go on: the timeouts
# add up to 8 minutes, so one run of the script always ends in time with what it measured.
step() {
  local limit=$(($1 * SCALE)); shift
  timeout "$limit" "$@" || say "failed or timed out (rc $?): $*"
}

say "1/4 time to the first step, packed (a fresh process, caches off)"
step 75 "$PY" -m benchmarks.epoch_speed "${CONFIG[@]}" "${EXTRA[@]}" --modes=packed \
  --steps="$EPOCH_STEPS" --json="$OUT/epoch_speed.json" > /dev/null

say "2/4 a $EPOCHS-epoch packed MiniLM run on Chia, end to end"
start=$(date +%s%N)
JOINTRE_COMPILATION_CACHE="$OUT/jax_cache" step 300 "$PY" -m jointre_jax.main "${CONFIG[@]}" \
  "${EXTRA[@]}" --config.num_epochs="$EPOCHS" --config.eval_before_training=False \
  --config.checkpoint_every_steps=0 --workdir="$OUT/run" > "$OUT/run.log" 2>&1
run_seconds=$(( ($(date +%s%N) - start) / 1000000 ))e-3

say "3/4 BERT-base S128 B$ROWS bf16: JAX vs PyTorch, MFU, inference"
step 60 "$PY" -m benchmarks.throughput "${CONFIG[@]}" "${EXTRA[@]}" --encoder_size="$SIZE" \
  --config.data.pack_rows="$ROWS" --config.data.eval_pack_rows=$((ROWS * 2)) \
  --train_batches="$TRAIN_BATCHES" --infer_batches="$INFER_BATCHES" --rounds="$ROUNDS" \
  --nofixed --nobuckets --json="$OUT/throughput_base.json" > /dev/null

say "4/4 MiniLM bf16: JAX vs PyTorch, inference"
step 45 "$PY" -m benchmarks.throughput "${CONFIG[@]}" "${EXTRA[@]}" \
  --train_batches="$TRAIN_BATCHES" --infer_batches="$INFER_BATCHES" --rounds="$ROUNDS" \
  --nofixed --nobuckets --json="$OUT/throughput_minilm.json" > /dev/null

"$PY" - "$OUT" "$run_seconds" <<'EOF'
import json, pathlib, sys
out, run_seconds = pathlib.Path(sys.argv[1]), float(sys.argv[2])


def read(name):  # a step that failed left no file: its figures are None
    path = out / name
    return json.loads(path.read_text()) if path.is_file() else {}


def get(tree, *keys):
    for key in keys:
        tree = tree.get(key, {}) if isinstance(tree, dict) else {}
    return tree if tree != {} else None


epoch, base = read("epoch_speed.json"), read("throughput_base.json")
minilm, metrics = read("throughput_minilm.json"), read("run/metrics.json")
summary = {
    "device": get(base, "machine", "device") or get(minilm, "machine", "device"),
    "first_step_seconds_packed": get(epoch, "packed", "first_step_seconds"),
    "minilm_run_seconds": run_seconds if metrics else None,
    "minilm_run_test_f1": {k: get(metrics, k, "f1") for k in ("ner", "re_e2e")},
    "minilm_run_test_corpus_f1": {k: get(metrics, "corpus", k, "f1") for k in ("ner", "re_e2e")},
    "base_train_mfu": get(base, "flops", "train_mfu"),
    "base_train_jax_over_torch": get(base, "train", "jax_over_torch"),
    "base_infer_criteria_per_s": get(base, "infer", "jax", "sentences_per_s"),
    "base_infer_jax_over_torch": get(base, "infer", "jax_over_torch"),
    "minilm_train_jax_over_torch": get(minilm, "train", "jax_over_torch"),
    "minilm_infer_criteria_per_s": get(minilm, "infer", "jax", "sentences_per_s"),
    "packing_real_token_fraction": get(minilm, "packing", "real_token_fraction"),
}
(out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
print(json.dumps(summary, indent=1))
EOF
