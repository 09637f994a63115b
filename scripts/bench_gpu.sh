#!/usr/bin/env bash
# The GPU sections of docs/benchmarks.md, on one GPU, bf16, 1,024 tokens. Needs jax with CUDA,
# flax, optax, ml-collections, pytest, torch and transformers. From the repository root:
#     bash scripts/bench_gpu.sh [DOCS_FILE] [STEPS]
# DOCS_FILE defaults to docs/benchmarks.md; STEPS to "checks mfu nt_v2_500m nt_v2_50m":
#   checks      the GPU tests (cuDNN attention against the reference), then a small odd-length
#               shape with holes through both kernel settings (fails in seconds on a broken
#               environment)
#   mfu         MFU of nt_v2_500m as published, layers unrolled, batch 32, in one process
#               (scripts/bench_mfu.py): kernels=auto (with the kernel profile), then
#               kernels=xla, the reference, one after the other (two 500M states do not fit
#               one 80 GB GPU together)
#   nt_v2_500m  gfm_jax beside transformers' ESM at ESM's nt_v2_500m architecture
#   nt_v2_50m   the same at nt_v2_50m, with kernels=xla, the published model and holes
# One unrolled nt_v2_500m compile takes minutes (the first in a process longer, with its
# warm-up): run each step as a command of its own. Each step replaces its own section, and bench_mfu.py writes its table after every variant, so a
# failure or a timeout keeps what was measured.
set -uo pipefail
docs=$(realpath "${1:-docs/benchmarks.md}")
steps=${2:-checks mfu nt_v2_500m nt_v2_50m}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
known="checks mfu nt_v2_500m nt_v2_50m"
for step in $steps; do
    [[ " $known " == *" $step "* ]] || { echo "unknown step '$step'; steps are: $known" >&2; exit 2; }
done
has() { [[ " $steps " == *" $1 "* ]]; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
if has checks; then
    timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_gpu_attention.py || exit 1
    # Odd length (CLS + 256, as real windows) and holes: both settings compile and run.
    (cd scripts && timeout 120 python3 bench_train.py --repeats 1 --steps 2 --layers 2 \
        --hidden 128 --heads 2 --ffn 256 --tokens 257 --batch 2 --dtype bfloat16 \
        --kernels auto,xla --holes) || exit 1
fi
cd scripts || exit 1
failed=0
if has mfu; then  # the profile is of the first variant
    timeout 540 python3 bench_mfu.py --preset nt_v2_500m --tokens 1024 --dtype bfloat16 \
        --variant "scan_layers=0 batch=32" --variant "scan_layers=0 batch=32 kernels=xla" \
        --repeats 3 --steps 10 --profile --write "$docs" || failed=1
fi
if has nt_v2_500m; then
    timeout 420 python3 bench_train.py --preset nt_v2_500m --batch 16 --tokens 1024 \
        --dtype bfloat16 --kernels auto --repeats 5 --steps 10 --write "$docs" || failed=1
fi
if has nt_v2_50m; then
    timeout 300 python3 bench_train.py --preset nt_v2_50m --batch 32 --tokens 1024 \
        --dtype bfloat16 --kernels auto,xla --native --holes --repeats 5 --steps 10 \
        --write "$docs" || failed=1
fi
exit $failed
