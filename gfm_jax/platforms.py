"""Which JAX backends a program starts: no TPU backend where no TPU is attached.

libtpu (installed by the `test` extra for compile-only TPU targets, scripts/plan_scale.py) makes
JAX try a TPU backend at start-up; on a machine without a TPU that attempt logs a page of
libtpu errors into every run's stderr before the run's own output. Entry points call
`skip_absent_tpu()` before jax imports. Only where the CPU is the one backend left (no TPU, no
GPU plugin installed) does it pin JAX_PLATFORMS=cpu; a JAX_PLATFORMS the user set wins.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os

TPU_DEVICE_FILES = ("/dev/accel0", "/dev/vfio")  # where a TPU VM exposes its chips


def skip_absent_tpu() -> None:
    if not importlib.util.find_spec("libtpu") or any(map(os.path.exists, TPU_DEVICE_FILES)):
        return
    if importlib.metadata.entry_points(group="jax_plugins"):  # CUDA / ROCm: let JAX choose
        return
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # no metadata server to ask either
