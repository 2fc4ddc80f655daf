#!/usr/bin/env bash
# Runs the Table 4 grid as N independent processes, one per GPU, then writes the whole table.
#
#   launch/grid.sh -n N [-l LOG_DIR] -- GRID_FLAGS...
#
# Process i runs `python -m jointre_jax.tools.grid GRID_FLAGS --process_index=i --process_count=N`
# (the runs are dealt round-robin; see jointre_jax/table4.py), with CUDA_VISIBLE_DEVICES=i on a
# machine with GPUs (unless CUDA_VISIBLE_DEVICES is already set). The processes are not joined:
# each trains its own runs. When all have finished, `--table_only` writes table4.md and
# table4.json from every finished run. Logs go to LOG_DIR/grid_I.log (default: the grid's
# --workdir, else the current folder). PYTHON chooses the interpreter (default: python).
# Exits with the first non-zero status of a process (after all have ended), else 0.
set -euo pipefail

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
nproc=""; logdir=""; python="${PYTHON:-python}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    -n) nproc="$2"; shift 2 ;;
    -l) logdir="$2"; shift 2 ;;
    -h|--help) usage ;;
    --) shift; break ;;
    *) echo "grid.sh: unknown option $1" >&2; usage ;;
  esac
done
[[ -n "$nproc" && "$nproc" -ge 1 && $# -gt 0 ]] || usage
if [[ -z "$logdir" ]]; then
  logdir="."
  for arg in "$@"; do [[ "$arg" == --workdir=* ]] && logdir="${arg#--workdir=}"; done
fi
mkdir -p "$logdir"

gpus=0
if [[ -z "${CUDA_VISIBLE_DEVICES:-}" ]] && command -v nvidia-smi >/dev/null 2>&1; then
  gpus=$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null | wc -l)
fi

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup INT TERM
for ((i = 0; i < nproc; i++)); do
  env_vars=()
  [[ "$gpus" -gt 0 ]] && env_vars+=(CUDA_VISIBLE_DEVICES="$((i % gpus))")
  env ${env_vars[@]+"${env_vars[@]}"} "$python" -m jointre_jax.tools.grid "$@" --process_index="$i" \
    --process_count="$nproc" > "$logdir/grid_$i.log" 2>&1 &
  pids+=($!)
  echo "grid.sh: process $i of $nproc started, log $logdir/grid_$i.log"
done

status=0
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then
    code=$?
    echo "grid.sh: process $i failed (exit $code); see $logdir/grid_$i.log" >&2
    [[ "$status" -eq 0 ]] && status=$code
  fi
done
[[ "$status" -eq 0 ]] || exit "$status"
"$python" -m jointre_jax.tools.grid "$@" --table_only
