"""Model FLOPs per token and device peaks, for model FLOPs utilisation (MFU).

MFU = (training FLOPs the model needs per token x tokens/s) / (devices x peak FLOP/s). Model
FLOPs count the matmuls of the forward and backward pass (2 per multiply-add forward, 4
backward: 6 per parameter used in a matmul) plus attention scores and values (12 x layers x
sequence x width per token, as in the PaLM paper's appendix B). Recomputation under remat is
not counted: it is a cost, not model work.

Peaks are dense per-device figures from the vendors' data sheets (no sparsity), for the dtype
the matmuls run in. Devices not in the table report no MFU unless `train.peak_tflops` is set.
"""

from __future__ import annotations

import jax

from gfm_jax.models.encoder import EncoderConfig

# device_kind substring -> {compute dtype: peak TFLOP/s per device}
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H200": {"bfloat16": 989.0, "float16": 989.0, "float32": 494.0},  # float32 via TF32
    "H100": {"bfloat16": 989.0, "float16": 989.0, "float32": 494.0},  # SXM
    "A100": {"bfloat16": 312.0, "float16": 312.0, "float32": 156.0},
    "TPU v5p": {"bfloat16": 459.0},
    "TPU v5 lite": {"bfloat16": 197.0},
    "TPU v4": {"bfloat16": 275.0},
}


def matmul_params(cfg: EncoderConfig) -> int:
    """Parameters used in matmuls per token (the embedding lookup is a gather, not a matmul)."""
    d, f = cfg.hidden_size, cfg.mlp_dim
    attention = 4 * d * cfg.num_heads * cfg.head_dim
    mlp = (3 if cfg.activation in ("swiglu", "geglu") else 2) * d * f
    head = d * d + d * cfg.vocab_size
    return cfg.num_layers * (attention + mlp) + head


def train_flops_per_token(cfg: EncoderConfig, seq_len: int) -> float:
    """Forward + backward model FLOPs per token at sequence length `seq_len`."""
    attention_scores = 12 * cfg.num_layers * seq_len * cfg.num_heads * cfg.head_dim
    return 6.0 * matmul_params(cfg) + attention_scores


def peak_flops(dtype: str, override_tflops: float = 0.0) -> float | None:
    """Peak FLOP/s of all devices, or None when the device is not in the table."""
    if override_tflops > 0:
        return override_tflops * 1e12 * jax.device_count()
    kind = jax.devices()[0].device_kind
    for name, peaks in PEAK_TFLOPS.items():
        if name.lower() in kind.lower() and dtype in peaks:
            return peaks[dtype] * 1e12 * jax.device_count()
    return None
