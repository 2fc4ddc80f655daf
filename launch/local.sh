#!/usr/bin/env bash
# Starts N processes of one command on this machine, joined by JAX's distributed runtime.
#
#   launch/local.sh -n N [-d DEVICES_PER_PROCESS] [-p PORT] [-l LOG_DIR] -- COMMAND...
#
# Process i runs COMMAND with JAX_COORDINATOR_ADDRESS=127.0.0.1:PORT, JAX_NUM_PROCESSES=N and
# JAX_PROCESS_ID=i, which jointre_jax.main reads (jax.distributed.initialize). With -d on a
# CPU-only machine each process fakes that many CPU devices
# (--xla_force_host_platform_device_count) and collectives go over gloo; on a GPU machine each
# process gets its share of the GPUs through CUDA_VISIBLE_DEVICES unless that is already set.
# Output: each line prefixed with [pI], or written to LOG_DIR/process_I.log with -l.
# SIGTERM or SIGINT to this script is forwarded to every process, once, and the script waits
# for them: a training saves a checkpoint of the step it agreed on and exits 143 (resume with
# the same command). Exits with the first non-zero status of a process (and stops the others:
# SIGTERM, then SIGKILL after JOINTRE_GRACE seconds, 60 by default), else 0.
set -euo pipefail

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
nproc=""; per=""; port="${JAX_PORT:-$((20000 + RANDOM % 20000))}"; logdir=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    -n) nproc="$2"; shift 2 ;;
    -d) per="$2"; shift 2 ;;
    -p) port="$2"; shift 2 ;;
    -l) logdir="$2"; shift 2 ;;
    -h|--help) usage ;;
    --) shift; break ;;
    *) echo "local.sh: unknown option $1" >&2; usage ;;
  esac
done
[[ -n "$nproc" && "$nproc" -ge 1 && $# -gt 0 ]] || usage
[[ -n "$logdir" ]] && mkdir -p "$logdir"

gpus=""
if [[ -z "${CUDA_VISIBLE_DEVICES:-}" ]] && command -v nvidia-smi >/dev/null 2>&1; then
  gpus=$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null | wc -l)
fi

pids=()
forwarded=""
forward() {  # the scheduler's signal, once, to every process (a second one would kill them)
  [[ -n "$forwarded" ]] && return
  forwarded=1
  for pid in "${pids[@]}"; do kill -s "$1" "$pid" 2>/dev/null || true; done
}
stop_others() {  # a process failed: the others may wait on it forever in a collective
  forward TERM
  for ((t = 0; t < ${JOINTRE_GRACE:-60}; t++)); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [[ $alive -eq 0 ]] && return
    sleep 1
  done
  for pid in "${pids[@]}"; do kill -s KILL "$pid" 2>/dev/null || true; done
}
trap 'forward TERM' TERM
trap 'forward INT' INT

for ((i = 0; i < nproc; i++)); do
  env_vars=(JAX_COORDINATOR_ADDRESS="127.0.0.1:$port" JAX_NUM_PROCESSES="$nproc" JAX_PROCESS_ID="$i")
  if [[ -n "$per" ]]; then
    if [[ -n "$gpus" && "$gpus" -gt 0 ]]; then
      visible=$(seq -s, $((i * per)) $((i * per + per - 1)))
      env_vars+=(CUDA_VISIBLE_DEVICES="$visible")
    else
      other_flags=$(echo "${XLA_FLAGS:-}" | sed 's/--xla_force_host_platform_device_count=[0-9]*//g')
      env_vars+=(JAX_PLATFORMS=cpu JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo
                 XLA_FLAGS="$other_flags --xla_force_host_platform_device_count=$per")
    fi
  fi
  if [[ -n "$logdir" ]]; then
    env "${env_vars[@]}" "$@" > "$logdir/process_$i.log" 2>&1 &
  else  # $! is the command itself, so that signals reach it
    env "${env_vars[@]}" "$@" > >(sed -u "s/^/[p$i] /") 2>&1 &
  fi
  pids+=($!)
done

status=0
for pid in "${pids[@]}"; do
  while kill -0 "$pid" 2>/dev/null; do wait "$pid" || true; done  # a trap interrupts wait
  code=0
  wait "$pid" || code=$?
  if [[ $code -ne 0 && $status -eq 0 ]]; then status=$code; [[ -n "$forwarded" ]] || stop_others; fi
done
exit $status
