#!/usr/bin/env bash
# Extraction split over N processes on this machine: one per GPU where there are GPUs.
#
#   launch/extract.sh N jointre extract --workdir=RUN --input=... --output=OUT [FLAGS...]
#
# Process I runs the command with --shard=I/N (chunks I, I+N, ...), and on a GPU machine
# CUDA_VISIBLE_DEVICES=I (unless CUDA_VISIBLE_DEVICES is set). Output: each line prefixed with
# [sI]. A PostgreSQL --output takes every shard at once; a DuckDB one gets a file per shard,
# joined by `jointre merge` once all have finished. SIGTERM or SIGINT is forwarded to every
# process; rerunning the same line resumes every shard after its last committed chunk.
# Exits with the first non-zero status of a process, else 0.
set -euo pipefail
if [[ $# -lt 2 || ! "$1" =~ ^[1-9][0-9]*$ ]]; then sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 2; fi
n="$1"; shift
output=""
for arg in "$@"; do [[ "$arg" == --output=* ]] && output="${arg#--output=}"; done

gpus=0
if [[ -z "${CUDA_VISIBLE_DEVICES:-}" ]] && command -v nvidia-smi >/dev/null 2>&1; then
  gpus=$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null | wc -l)
fi
pids=()
trap 'for pid in "${pids[@]}"; do kill -s TERM "$pid" 2>/dev/null || true; done' TERM INT
for ((i = 0; i < n; i++)); do
  env_vars=()
  [[ "$gpus" -gt 0 ]] && env_vars+=(CUDA_VISIBLE_DEVICES=$((i % gpus)))
  env "${env_vars[@]}" "$@" --shard="$i/$n" > >(sed -u "s/^/[s$i] /") 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  while kill -0 "$pid" 2>/dev/null; do wait "$pid" || true; done  # a trap interrupts wait
  code=0
  wait "$pid" || code=$?
  [[ $code -ne 0 && $status -eq 0 ]] && status=$code
done
if [[ $status -eq 0 && "$n" -gt 1 && "$output" == *.duckdb ]]; then
  "${JOINTRE:-jointre}" merge --output="$output" --shards="$n"
fi
exit $status
