#!/usr/bin/env bash
# Submit one gfm_jax entry point across GPU nodes with sbatch + srun: one process per node,
# each seeing that node's GPUs; JAX reads SLURM's environment to find the others.
#
#   bash scripts/launch_slurm.sh --nodes 4 --gpus-per-node 8 --time 24:00:00 -- \
#       python -m gfm_jax.train --config configs/pretrain/tiny_nt6.py --workdir /shared/runs/nt500
#
# The workdir must be on storage every node sees. Preemption: SLURM's SIGTERM (--signal) makes
# every process finish its step, save and exit; resubmitting the same command resumes.
# --dry-run prints the batch script and the sbatch command instead of submitting.
set -euo pipefail
nodes=1
gpus_per_node=8
time_limit="24:00:00"
partition=""
job_name="gfm_jax"
dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --nodes) nodes="$2"; shift 2 ;;
    --gpus-per-node) gpus_per_node="$2"; shift 2 ;;
    --time) time_limit="$2"; shift 2 ;;
    --partition) partition="$2"; shift 2 ;;
    --job-name) job_name="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    --) shift; break ;;
    *) echo "launch_slurm.sh: unknown option $1 (put the command after --)" >&2; exit 2 ;;
  esac
done
if [[ $# -eq 0 ]]; then
  echo "launch_slurm.sh: give the command after --, e.g. -- python -m gfm_jax.train ..." >&2
  exit 2
fi
repo=$(cd "$(dirname "$0")/.." && pwd)
command=$(printf '%q ' "$@")
script="#!/usr/bin/env bash
#SBATCH --job-name=$job_name
#SBATCH --nodes=$nodes
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=$gpus_per_node
#SBATCH --time=$time_limit
#SBATCH --signal=TERM@120
#SBATCH --output=$job_name.%j.log
${partition:+#SBATCH --partition=$partition}
set -euo pipefail
cd $(printf '%q' "$repo")
# One task per node; jax.distributed.initialize() reads SLURM_* (gfm_jax.distributed).
srun --kill-on-bad-exit=1 $command"
if [[ $dry_run -eq 1 ]]; then
  echo "$script"
  echo "# submit with: sbatch <this script>"
  exit 0
fi
echo "$script" | sbatch
