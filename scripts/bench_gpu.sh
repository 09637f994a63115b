#!/usr/bin/env bash
# The GPU sections of docs/benchmarks.md: gfm_jax beside transformers' ESM on one GPU, bf16,
# 1,024 tokens, at the nt_v2_50m and nt_v2_500m sizes. Needs jax with CUDA, flax, optax,
# ml-collections, pytest, torch and transformers. From the repository root:
#     bash scripts/bench_gpu.sh [DOCS_FILE] [SHAPES]
# DOCS_FILE defaults to docs/benchmarks.md; SHAPES to "checks nt_v2_50m nt_v2_500m". The
# checks (the cuDNN attention test, then a smoke run of a small odd-length shape with holes)
# go first, so a broken environment fails in seconds, not after a 500M-parameter compile.
# nt_v2_500m's first unrolled compile alone took 284 s on an H200, so where one command may
# run only 10 minutes, make it two: SHAPES="checks nt_v2_50m", then SHAPES=nt_v2_500m.
# Each shape runs in its own process and replaces its own section, so a failure in one keeps
# the other's table.
# nt_v2_500m runs its layers unrolled (141 ms per step against 174 ms scanned, but 284 s to
# compile and warm up against 42 s). It compiles two models (ESM's architecture and the
# published one, the MFU target), so give it a command of its own; the "holes" and xla rows
# would each add another compile of minutes (xla's [B, N, L, L] scores also asked for 76 GiB).
set -uo pipefail
docs=$(realpath "${1:-docs/benchmarks.md}")
shapes=${2:-checks nt_v2_50m nt_v2_500m}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
if [[ " $shapes " == *" checks "* ]]; then
    timeout 180 python3 -m pytest -q -p no:cacheprovider tests/test_gpu_attention.py || exit 1
    # Odd length (CLS + 256, as real windows) and holes: both attention paths compile and run.
    (cd scripts && timeout 120 python3 bench_train.py --repeats 1 --steps 2 --layers 2 \
        --hidden 128 --heads 2 --ffn 256 --tokens 257 --batch 2 --dtype bfloat16 \
        --attention cudnn,xla --holes) || exit 1
fi
cd scripts || exit 1
failed=0
if [[ " $shapes " == *" nt_v2_50m "* ]]; then
    timeout 300 python3 bench_train.py --preset nt_v2_50m --batch 32 --tokens 1024 \
        --dtype bfloat16 --attention cudnn,xla --native --holes --repeats 5 --steps 10 \
        --write "$docs" || failed=1
fi
if [[ " $shapes " == *" nt_v2_500m "* ]]; then
    timeout 580 python3 bench_train.py --preset nt_v2_500m --batch 16 --tokens 1024 \
        --dtype bfloat16 --attention cudnn --native --repeats 5 --steps 10 \
        --write "$docs" || failed=1
fi
exit $failed
