#!/usr/bin/env bash
# `make quickstart`: pretrain the tiny preset on the built-in genomes, fine-tune on the
# built-in splice-junction task from the pretrained and from a random encoder, print the table.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
WORKDIR=${WORKDIR:-runs/quickstart}
export TF_ENABLE_ONEDNN_OPTS=0 TF_CPP_MIN_LOG_LEVEL=2 PYTHONUNBUFFERED=1

if [[ -d "$WORKDIR" ]]; then
  echo "quickstart: $WORKDIR exists; resuming it (delete it to start over)"
fi
"$PYTHON" -m gfm_jax.train --config configs/pretrain/tiny.py --workdir "$WORKDIR"
for init in pretrained scratch; do
  "$PYTHON" -m gfm_jax.evaluate finetune --config configs/tasks/splice.py \
    --workdir "$WORKDIR" --init "$init"
done
echo
echo "== gfm_jax quickstart results ($WORKDIR) =="
"$PYTHON" -m gfm_jax.evaluate report --workdir "$WORKDIR"
