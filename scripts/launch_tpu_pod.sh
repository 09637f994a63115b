#!/usr/bin/env bash
# Run one gfm_jax entry point on every worker of a Cloud TPU VM slice, at once, over gcloud ssh.
# JAX finds the other hosts itself (GFM_JAX_DISTRIBUTED=auto: jax.distributed.initialize()).
#
#   bash scripts/launch_tpu_pod.sh --tpu my-v5p-64 --zone us-east5-a --repo-dir '~/gfm_jax' -- \
#       python -m gfm_jax.train --config configs/pretrain/tiny_nt6.py --workdir /mnt/shared/nt500
#
# --repo-dir is a path on the workers (quote a ~ so the local shell leaves it alone).
# The code must already be at --repo-dir on every worker (e.g. a git clone plus
# `pip install -e '.[tpu]'`), and the workdir on a file system every worker mounts.
# --dry-run prints the gcloud command instead of running it.
set -euo pipefail
tpu=""
zone=""
project=""
repo_dir="~/gfm_jax"
dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tpu) tpu="$2"; shift 2 ;;
    --zone) zone="$2"; shift 2 ;;
    --project) project="$2"; shift 2 ;;
    --repo-dir) repo_dir="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    --) shift; break ;;
    *) echo "launch_tpu_pod.sh: unknown option $1 (put the command after --)" >&2; exit 2 ;;
  esac
done
if [[ -z "$tpu" || -z "$zone" || $# -eq 0 ]]; then
  echo "launch_tpu_pod.sh: need --tpu NAME --zone ZONE -- COMMAND" >&2
  exit 2
fi
remote="cd $repo_dir && GFM_JAX_DISTRIBUTED=auto $(printf '%q ' "$@")"
cmd=(gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "$remote")
if [[ -n "$project" ]]; then cmd+=(--project "$project"); fi
if [[ $dry_run -eq 1 ]]; then
  printf '%q ' "${cmd[@]}"
  echo
  exit 0
fi
exec "${cmd[@]}"
