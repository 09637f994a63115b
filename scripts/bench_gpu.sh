#!/usr/bin/env bash
# The GPU sections of docs/benchmarks.md: gfm_jax beside transformers' ESM on one GPU, bf16,
# 1,024 tokens, at the nt_v2_50m and nt_v2_500m sizes. Needs jax with CUDA, flax, optax,
# ml-collections, torch and transformers. From the repository root:
#     bash scripts/bench_gpu.sh [DOCS_FILE]     # default docs/benchmarks.md
# Each shape runs in its own process and replaces its own section, so a failure in one keeps
# the other's table; a smoke run of a small shape goes first, so a broken environment fails in
# seconds, not after a 500M-parameter compile. nt_v2_500m scans over its layers (unrolled, its
# step took 139 s to compile on an H200) and skips xla attention, whose saved [B, N, L, L]
# scores asked for a 76 GiB buffer that did not fit on a 141 GB H200 beside the other variants.
set -uo pipefail
docs=$(realpath "${1:-docs/benchmarks.md}")
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
cd scripts || exit 1
# Odd length (CLS + 256, as real windows) and holes: both of cuDNN's fallbacks compile and run.
timeout 120 python3 bench_train.py --repeats 1 --steps 2 --layers 2 --hidden 128 --heads 2 \
    --ffn 256 --tokens 257 --batch 2 --dtype bfloat16 --attention cudnn,xla --holes || exit 1
failed=0
timeout 300 python3 bench_train.py --preset nt_v2_50m --batch 32 --tokens 1024 \
    --dtype bfloat16 --attention cudnn,xla --native --holes --repeats 5 --steps 10 \
    --write "$docs" || failed=1
timeout 300 python3 bench_train.py --preset nt_v2_500m --batch 16 --tokens 1024 \
    --dtype bfloat16 --attention cudnn --native --holes --scan --repeats 5 --steps 10 \
    --write "$docs" || failed=1
exit $failed
