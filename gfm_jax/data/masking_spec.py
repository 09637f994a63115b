"""What masking selects, and the bound on selected tokens the train step sizes its MLM head by.

Kept apart from `masking` (the TensorFlow ops) so the model and train-step side, benchmarks on a
machine without TensorFlow included, can size the head without importing tf.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from gfm_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class MaskingSpec:
    rate: float = 0.15
    mask_fraction: float = 0.8
    random_fraction: float = 0.1
    span: int = 1

    def __post_init__(self):
        ok = 0 <= self.rate <= 1 and self.mask_fraction >= 0 and self.random_fraction >= 0
        if self.span < 1:
            raise UserError(f"data.mask_span={self.span}: must be >= 1 (0 = the tokenizer's)")
        if not ok or self.mask_fraction + self.random_fraction > 1:
            raise UserError(
                f"masking rates {self}: need 0 <= mask_rate <= 1 and "
                "mask_token_fraction + random_token_fraction <= 1"
            )


def from_config(data: Any, default_span: int) -> MaskingSpec:
    """The spec of a config's `data` block; span 0 there means the tokenizer's `default_span`."""
    return MaskingSpec(
        float(data.mask_rate),
        float(data.mask_token_fraction),
        float(data.random_token_fraction),
        int(data.mask_span) or default_span,
    )


def target_capacity(num_tokens: int, spec: MaskingSpec, sigmas: float = 6.0) -> int:
    """An upper bound on one window's masked tokens: mean + `sigmas` standard deviations.

    Each token is covered with probability `rate`; spans correlate neighbours, which at most
    multiplies the variance by (2 span - 1). Rounded up to a multiple of 8, at most the window.
    """
    p = spec.rate
    sd = math.sqrt(num_tokens * p * (1 - p) * (2 * spec.span - 1))
    bound = math.ceil(num_tokens * p + sigmas * sd)
    return min(num_tokens, -(-bound // 8) * 8)
