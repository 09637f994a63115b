#!/usr/bin/env bash
# N processes of one gfm_jax entry point on this machine, talking through 127.0.0.1:
#
#   bash scripts/launch_local.sh --processes 2 --cpu-devices 4 -- \
#       python -m gfm_jax.train --config configs/pretrain/tiny.py --workdir runs/two_procs
#
# Each process gets --coordinator/--num_processes/--process_id (and --cpu_devices on CPU).
# Output goes to WORKDIR-independent logs: launch_local.<id>.log in --log-dir (default: .).
# If any process fails, the others are stopped, and the exit code is the first failure's.
# --dry-run prints the commands and starts nothing.
set -euo pipefail
processes=2
cpu_devices=""
port=""
log_dir="."
dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --processes) processes="$2"; shift 2 ;;
    --cpu-devices) cpu_devices="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --log-dir) log_dir="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    --) shift; break ;;
    *) echo "launch_local.sh: unknown option $1 (put the command after --)" >&2; exit 2 ;;
  esac
done
if [[ $# -eq 0 ]]; then
  echo "launch_local.sh: give the command after --, e.g. -- python -m gfm_jax.train ..." >&2
  exit 2
fi
if [[ -z "$port" ]]; then
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
commands=()
for ((i = 0; i < processes; i++)); do
  cmd=("$@" --coordinator "127.0.0.1:$port" --num_processes "$processes" --process_id "$i")
  if [[ -n "$cpu_devices" ]]; then cmd+=(--cpu_devices "$cpu_devices"); fi
  commands+=("$(printf '%q ' "${cmd[@]}")")
done
if [[ $dry_run -eq 1 ]]; then
  for ((i = 0; i < processes; i++)); do
    echo "${commands[$i]}> $log_dir/launch_local.$i.log 2>&1 &"
  done
  exit 0
fi
mkdir -p "$log_dir"
pids=()
# Ctrl-C or a SIGTERM to the launcher stops every process (background jobs of a script ignore
# SIGINT themselves, so they would otherwise keep training).
trap 'kill "${pids[@]}" 2> /dev/null || true; wait || true; exit 130' INT TERM
for ((i = 0; i < processes; i++)); do
  bash -c "exec ${commands[$i]}" > "$log_dir/launch_local.$i.log" 2>&1 &
  pids+=($!)
done
# Poll: the first process to fail stops the rest (a failed peer must not leave others waiting).
done_count=0
declare -A finished=()
while [[ $done_count -lt $processes ]]; do
  for ((i = 0; i < processes; i++)); do
    [[ -n "${finished[$i]:-}" ]] && continue
    if ! kill -0 "${pids[$i]}" 2> /dev/null; then
      status=0
      wait "${pids[$i]}" || status=$?
      finished[$i]=1
      done_count=$((done_count + 1))
      if [[ $status -ne 0 ]]; then
        echo "launch_local.sh: process $i exited with $status; stopping the others (logs: $log_dir)" >&2
        kill "${pids[@]}" 2> /dev/null || true
        wait || true
        exit "$status"
      fi
    fi
  done
  sleep 1
done
echo "launch_local.sh: all $processes processes finished (logs: $log_dir/launch_local.*.log)"
