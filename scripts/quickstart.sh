#!/usr/bin/env bash
# `make quickstart`: pretrain the tiny preset on the built-in genomes, then fine-tune on the
# built-in splice-junction task (3 seeds each) from the pretrained encoder, from a random
# encoder and with the CNN baseline, and print the table.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
WORKDIR=${WORKDIR:-runs/quickstart}
export TF_ENABLE_ONEDNN_OPTS=0 TF_CPP_MIN_LOG_LEVEL=2 PYTHONUNBUFFERED=1

if [[ -d "$WORKDIR" ]]; then
  echo "quickstart: $WORKDIR exists; resuming it (delete it to start over)"
fi
"$PYTHON" -m gfm_jax.train --config configs/pretrain/tiny.py --workdir "$WORKDIR"
for model in pretrained scratch cnn; do
  "$PYTHON" -m gfm_jax.evaluate finetune --config configs/tasks/splice.py \
    --workdir "$WORKDIR" --model "$model"
done
echo
echo "== gfm_jax quickstart results ($WORKDIR) =="
"$PYTHON" -m gfm_jax.evaluate report --workdir "$WORKDIR"
