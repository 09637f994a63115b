"""How the model's ops run. The model files say what is computed; this package says how.

One model key, `model.kernels`, picks for every op: `"xla"` runs the plain-XLA reference
everywhere; `"auto"` runs, per backend, the implementation that docs/benchmarks.md shows faster
per train step. The model imports this package only, never a kernel module:
- `attend` (ops/attention.py): cuDNN on GPUs, the blocked kernel on CPUs
  (ops/blocked_attention.py), XLA elsewhere; `TokenMask` is the token layout it takes.
- `dot_general`: the matmul of dense layers; `cpu_gemm` (ops/cpu_gemm.py) on CPUs.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
from jax import lax

from gfm_jax.ops.attention import TokenMask, attend, implementation
from gfm_jax.ops.cpu_gemm import cpu_gemm_dot_general

KERNELS = ("auto", "xla")

__all__ = ["KERNELS", "TokenMask", "attend", "dot_general", "implementation"]


def dot_general(kernels: str) -> Callable[..., jax.Array]:
    """The `dot_general` a dense layer uses for `model.kernels` on the default backend."""
    if kernels == "auto" and jax.default_backend() == "cpu":
        return cpu_gemm_dot_general
    return lax.dot_general
