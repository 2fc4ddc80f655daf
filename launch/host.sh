#!/usr/bin/env bash
# Runs one process of a multi-host job on this host; start it once on every host.
#
#   launch/host.sh [-c COORDINATOR_HOST:PORT] [-n NUM_PROCESSES] [-i PROCESS_ID] -- COMMAND...
#
# Each option falls back on the environment (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
# JAX_PROCESS_ID). The coordinator is the address of process 0's host, reachable from every
# host, on a free port. The process sees every local GPU unless CUDA_VISIBLE_DEVICES says
# otherwise; batches are split over all GPUs of all hosts.
#   host A: launch/host.sh -c hostA:29500 -n 2 -i 0 -- python -m jointre_jax.main --config=... --workdir=/shared/run
#   host B: launch/host.sh -c hostA:29500 -n 2 -i 1 -- python -m jointre_jax.main --config=... --workdir=/shared/run
# The workdir must be one shared file system path (checkpoints are written by all processes).
set -euo pipefail

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
coordinator="${JAX_COORDINATOR_ADDRESS:-}"; nproc="${JAX_NUM_PROCESSES:-}"; pid="${JAX_PROCESS_ID:-}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    -c) coordinator="$2"; shift 2 ;;
    -n) nproc="$2"; shift 2 ;;
    -i) pid="$2"; shift 2 ;;
    -h|--help) usage ;;
    --) shift; break ;;
    *) echo "host.sh: unknown option $1" >&2; usage ;;
  esac
done
if [[ -z "$coordinator" || -z "$nproc" || -z "$pid" || $# -eq 0 ]]; then
  echo "host.sh: need the coordinator, the process count, the process id and a command" >&2
  usage
fi
if ! [[ "$pid" =~ ^[0-9]+$ && "$nproc" =~ ^[0-9]+$ && "$pid" -lt "$nproc" ]]; then
  echo "host.sh: process id $pid must be an integer in [0, $nproc)" >&2
  exit 2
fi
export JAX_COORDINATOR_ADDRESS="$coordinator" JAX_NUM_PROCESSES="$nproc" JAX_PROCESS_ID="$pid"
exec "$@"
