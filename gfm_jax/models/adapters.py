"""Parameter-efficient fine-tuning: LoRA and IA3 inside the encoder's projections.

- LoRA (Hu et al. 2021): a projection W gains a low-rank update, y = x W + (alpha / rank) x A B,
  A [in, rank] drawn like the kernels, B [rank, out] zero, so training starts from the base
  model's outputs. `targets` chooses the projections: query, key, value, out (attention) and
  gate, up, down (MLP).
- IA3 (Liu et al. 2022, as the Nucleotide Transformer paper fine-tuned): learned vectors,
  initialised to one, scale the keys, the values and the MLP's inner activations.

Adapter parameters live beside the kernel they adapt, in submodules named `<projection>_lora`
or `<projection>_ia3`; `is_adapter_path` finds them (the optimizer trains those and the head,
the checkpoint stores them apart from the base), and `merge` folds them into the base kernels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from gfm_jax.config import ADAPTERS as KINDS
from gfm_jax.config import LORA_TARGETS
from gfm_jax.errors import UserError

IA3_TARGETS = ("key", "value", "mlp")
SUFFIXES = ("_lora", "_ia3")


@dataclasses.dataclass(frozen=True)
class Adapter:
    kind: str = "none"
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = LORA_TARGETS  # LoRA only; IA3 always scales k, v and the MLP

    def __post_init__(self):
        if self.kind not in KINDS:
            raise UserError(f"finetune.adapter={self.kind!r}: choose one of {KINDS}")
        unknown = set(self.targets) - set(LORA_TARGETS)
        if self.kind == "lora" and (unknown or not self.targets):
            raise UserError(
                f"finetune.lora_targets={self.targets}: choose from {LORA_TARGETS} (at least one)"
            )
        if self.kind == "lora" and (self.rank < 1 or self.alpha <= 0):
            raise UserError(
                f"finetune.lora_rank={self.rank}, lora_alpha={self.alpha}: give a rank >= 1 "
                "and a positive alpha"
            )

    def lora(self, name: str) -> bool:
        return self.kind == "lora" and name in self.targets

    def ia3(self, name: str) -> bool:
        return self.kind == "ia3" and name in IA3_TARGETS


NO_ADAPTER = Adapter()


class LoraDelta(nn.Module):
    """(alpha / rank) x A B for a projection contracting `axis` of x into `features`."""

    features: int | tuple[int, ...]
    names: tuple[str | None, ...]  # the adapted kernel's logical axes (inputs, then outputs)
    axis: int | tuple[int, ...]
    adapter: Adapter
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n_in = 1 if isinstance(self.axis, int) else len(self.axis)
        a_init = nn.with_logical_partitioning(
            nn.initializers.lecun_normal(), (*self.names[:n_in], None)
        )
        b_init = nn.with_logical_partitioning(
            nn.initializers.zeros_init(), (None, *self.names[n_in:])
        )
        a = nn.DenseGeneral(self.adapter.rank, axis=self.axis, use_bias=False, dtype=self.dtype,
                            kernel_init=a_init, name="a")  # fmt: skip
        b = nn.DenseGeneral(self.features, use_bias=False, dtype=self.dtype, kernel_init=b_init,
                            name="b")  # fmt: skip
        return b(a(x)) * (self.adapter.alpha / self.adapter.rank)


class Ia3Scale(nn.Module):
    """Multiplies the trailing `shape` axes of x by a learned vector (ones at init)."""

    shape: tuple[int, ...]
    names: tuple[str | None, ...]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        init = nn.with_logical_partitioning(nn.initializers.ones_init(), self.names)
        return x * self.param("scale", init, self.shape, jnp.float32).astype(x.dtype)


def is_adapter_path(path: Sequence[str]) -> bool:
    return any(str(p).endswith(SUFFIXES) for p in path)


def split(params: dict) -> tuple[dict, dict]:
    """(adapter parameters, the rest), each a nested dict of the same layout."""
    flat = traverse_util.flatten_dict(params)
    adapter = {k: v for k, v in flat.items() if is_adapter_path(k)}
    rest = {k: v for k, v in flat.items() if not is_adapter_path(k)}
    return traverse_util.unflatten_dict(adapter), traverse_util.unflatten_dict(rest)


def _lora_delta(a: np.ndarray, b: np.ndarray, shape: tuple, adapter: Adapter) -> np.ndarray:
    rank = a.shape[-1]
    return ((a.reshape(-1, rank) @ b.reshape(rank, -1)) * (adapter.alpha / rank)).reshape(shape)


def merge(encoder: dict, adapter: Adapter, stacked: bool = False) -> dict:
    """The encoder parameters with every adapter folded into its base kernel (numpy, float32):
    the same outputs from the plain encoder, no adapter parameters left. `stacked`: the
    parameters carry a leading layer axis (model.scan_layers)."""
    flat = {k: np.asarray(v, np.float32) for k, v in traverse_util.flatten_dict(encoder).items()}
    out = {k: v for k, v in flat.items() if not is_adapter_path(k)}
    for key, value in flat.items():
        if len(key) >= 3 and key[-3].endswith("_lora") and key[-2:] == ("a", "kernel"):
            b = flat[(*key[:-2], "b", "kernel")]
            target = (*key[:-3], key[-3].removesuffix("_lora"), "kernel")
            kernel = out[target]
            if stacked:
                delta = np.stack([_lora_delta(a, b_, kernel.shape[1:], adapter)
                                  for a, b_ in zip(value, b, strict=True)])  # fmt: skip
            else:
                delta = _lora_delta(value, b, kernel.shape, adapter)
            out[target] = kernel + delta
        elif key[-2:] == ("mlp_ia3", "scale"):  # (h * l) W_down = h (diag(l) W_down)
            target = (*key[:-2], "down", "kernel")
            out[target] = out[target] * value[..., None]
        elif key[-1] == "scale" and key[-2] in ("key_ia3", "value_ia3"):  # (x W + b) * l
            name = key[-2].removesuffix("_ia3")
            kernel = (*key[:-2], name, "kernel")
            out[kernel] = out[kernel] * (value[:, None] if stacked else value)
            if (*key[:-2], name, "bias") in out:
                out[(*key[:-2], name, "bias")] = out[(*key[:-2], name, "bias")] * value
    return traverse_util.unflatten_dict(out)
