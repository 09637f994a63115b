"""PyTorch state dicts read and written as gfm_jax parameter blocks.

torch `Linear.weight` is [out, in]; gfm_jax kernels are [in, out] (split further by the callers
where attention kernels carry a head axis). LayerNorm parameters are `.weight` / `.bias` (older
BERT-style files say `gamma` / `beta`) and become `scale` / `bias`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gfm_jax.errors import UserError


class Weights:
    """A state dict read by name, without its encoder prefix (the first of `prefixes` a name
    starts with)."""

    def __init__(self, weights: dict[str, np.ndarray], prefixes: tuple[str, ...], kind: str):
        def strip(name: str) -> str:
            prefix = next((p for p in prefixes if name.startswith(p)), "")
            return name[len(prefix) :]

        self._kind = kind
        self._w = {
            strip(k)
            .replace("LayerNorm.gamma", "LayerNorm.weight")
            .replace("LayerNorm.beta", "LayerNorm.bias"): v
            for k, v in weights.items()
        }

    def __contains__(self, name: str) -> bool:
        return name in self._w

    def get(self, name: str) -> np.ndarray:
        if name not in self._w:
            raise UserError(f"the checkpoint has no weight {name!r}; is it a {self._kind} model?")
        return self._w[name]

    def optional(self, name: str) -> np.ndarray | None:
        return self._w.get(name)

    def norm(self, prefix: str) -> dict:
        return {"scale": self.get(f"{prefix}.weight"), "bias": self.get(f"{prefix}.bias")}

    def dense(self, prefix: str, bias: bool = True) -> dict:
        out = {"kernel": np.ascontiguousarray(self.get(f"{prefix}.weight").T)}
        if bias:
            out["bias"] = self.get(f"{prefix}.bias")
        return out


class StateDict(dict):
    """A state dict being written: float32, contiguous, torch [out, in] layouts."""

    def put(self, name: str, value: Any) -> None:
        self[name] = np.ascontiguousarray(np.asarray(value, np.float32))

    def norm(self, prefix: str, p: dict) -> None:
        self.put(f"{prefix}.weight", p["scale"])
        self.put(f"{prefix}.bias", p["bias"])

    def dense(self, prefix: str, p: dict) -> None:
        kernel = np.asarray(p["kernel"])
        self.put(f"{prefix}.weight", kernel.reshape(-1, kernel.shape[-1]).T)
        if "bias" in p:
            self.put(f"{prefix}.bias", p["bias"])
