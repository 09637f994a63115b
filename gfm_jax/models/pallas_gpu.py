"""Where the Pallas (Triton) kernels run: on GPUs, with XLA's path everywhere else.

`on_gpu` stages both out with `jax.lax.platform_dependent`, so the choice is made when the
program is lowered for its platform, not by the machine that traces it: a model configured
with the kernels still runs (and evaluates) on a CPU, and a GPU program compiled on a machine
without one (scripts/step_traffic.py) gets the kernels. Tests set `INTERPRET` to run the
kernels through Pallas's interpreter on a CPU instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

INTERPRET = False


def on_gpu(kernels: Callable[..., Any], fallback: Callable[..., Any], *args: Any) -> Any:
    """`kernels(*args, interpret=False)` when lowered for a CUDA GPU, `fallback(*args)`
    elsewhere (`kernels(*args, interpret=True)` everywhere while `INTERPRET` is set)."""
    if INTERPRET:
        return kernels(*args, interpret=True)
    return jax.lax.platform_dependent(
        *args, cuda=lambda *a: kernels(*a, interpret=False), default=fallback
    )
