"""Named model sizes. `get(name)` returns a ConfigDict that `config.model` holds.

Shapes follow the public configurations (see DESIGN.md section 6); the vocabulary size is not a
model hyperparameter here, it comes from the tokenizer chosen in `config.data.tokenizer`.
"""

from __future__ import annotations

import ml_collections

from gfm_jax.errors import UserError


def _base() -> dict:
    return dict(
        name="",
        num_layers=2,
        hidden_size=64,
        num_heads=4,
        mlp_dim=256,
        activation="swiglu",  # swiglu | geglu | gelu
        use_bias_attn=True,
        use_bias_mlp=False,
        norm="layernorm",  # layernorm | rmsnorm
        norm_eps=1e-5,
        position="rope",
        rope_base=10000.0,
        dtype="float32",  # compute dtype; parameters stay float32
        attention="xla",  # xla | cudnn | reference (plain einsum)
        remat="none",  # none | full
        init_std=0.02,
    )


PRESETS: dict[str, dict] = {
    # Small enough to pretrain in minutes on 2 CPU cores (about 0.46M parameters).
    "tiny": dict(num_layers=4, hidden_size=96, num_heads=4, mlp_dim=256),
    # Nucleotide Transformer v2 50M: 12 x 512, 16 heads, SwiGLU FFN 2048, rotary, no MLP bias.
    "nt_v2_50m": dict(num_layers=12, hidden_size=512, num_heads=16, mlp_dim=2048),
}


def get(name: str) -> ml_collections.ConfigDict:
    if name not in PRESETS:
        raise UserError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return ml_collections.ConfigDict({**_base(), **PRESETS[name], "name": name})
