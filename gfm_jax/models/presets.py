"""Named model sizes. `get(name)` returns a ConfigDict that `config.model` holds.

Shapes follow the public model cards and configurations; the vocabulary size is not a model
hyperparameter here, it comes from the tokenizer chosen in `config.data.tokenizer`.
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
        use_bias_mlp_in=True,  # with use_bias_mlp: biases on the gate / up projections too
        norm="layernorm",  # layernorm | rmsnorm
        norm_eps=1e-5,
        norm_placement="pre",  # pre (final norm) | post (BERT)
        embed_norm=False,  # a norm on the embeddings before the blocks
        token_type_embed=False,  # a learned vector added to every token (BERT's type 0)
        token_dropout=False,  # ESM's mask-ratio rescaling of the embeddings
        position="rope",  # rope | alibi | learned
        max_positions=0,  # learned positions: table size
        rope_base=10000.0,
        rope_scaling="none",  # context extension: none | linear | ntk (models/attention.py)
        rope_factor=1.0,  # ... for windows this many times the pretraining length
        dtype="float32",  # compute dtype; parameters stay float32
        kernels="auto",  # auto (the fastest measured per backend) | xla (see gfm_jax/ops)
        remat="none",  # none | full | save_dots
        scan_layers=False,
        tie_embeddings=False,  # MLM decoder shares the token embedding matrix
        rc_equivariant=False,  # both strands through shared weights (models/encoder.py)
        init_std=0.02,
    )


_NT_V1 = dict(
    activation="gelu",
    use_bias_mlp=True,
    position="learned",
    max_positions=1002,
    norm_eps=1e-12,
    token_dropout=True,
    tie_embeddings=True,
)

PRESETS: dict[str, dict] = {
    # Small enough to pretrain in minutes on 2 CPU cores (about 0.46M parameters).
    "tiny": dict(num_layers=4, hidden_size=96, num_heads=4, mlp_dim=256),
    # Nucleotide Transformer v2: rotary, SwiGLU without bias, biases in attention.
    "nt_v2_50m": dict(num_layers=12, hidden_size=512, num_heads=16, mlp_dim=2048),
    "nt_v2_500m": dict(num_layers=29, hidden_size=1024, num_heads=16, mlp_dim=4096),
    # Nucleotide Transformer v1 (ESM-1b style): learned positions, plain GELU FFN with bias,
    # ESM's token dropout.
    "nt_v1_500m": dict(num_layers=24, hidden_size=1280, num_heads=20, mlp_dim=5120, **_NT_V1),
    # NT v1 2.5B (the multi-species and 1000G models), for plans past one machine
    # (scripts/plan_scale.py).
    "nt_v1_2500m": dict(num_layers=32, hidden_size=2560, num_heads=40, mlp_dim=10240, **_NT_V1),
    # DNABERT-2 (MosaicBERT): ALiBi, post-LN, an embedding norm, GEGLU (no bias in, bias out),
    # BPE vocabulary.
    "dnabert2_117m": dict(
        num_layers=12,
        hidden_size=768,
        num_heads=12,
        mlp_dim=3072,
        activation="geglu",
        use_bias_mlp=True,
        use_bias_mlp_in=False,
        norm_eps=1e-12,
        norm_placement="post",
        embed_norm=True,
        token_type_embed=True,
        position="alibi",
        tie_embeddings=True,
    ),
    # OmniGenome 52M (RNA): rotary, plain GELU FFN.
    "omnigenome_52m": dict(
        num_layers=16,
        hidden_size=480,
        num_heads=24,
        mlp_dim=2400,
        activation="gelu",
        use_bias_mlp=True,
        token_dropout=True,
        tie_embeddings=True,
    ),
}

# Parameter counts the model cards publish, and the vocabulary they go with, so a run can print
# its own count beside them. NT v2 checkpoints also hold a 2,050-row absolute-position table
# that rotary models never read; the published counts include it (see `published_extra`).
PUBLISHED = {
    "nt_v2_50m": dict(params=55.9e6, vocab=4107, published_extra=2050 * 512),
    "nt_v2_500m": dict(params=498e6, vocab=4107, published_extra=2050 * 1024),
    "nt_v1_500m": dict(params=480e6, vocab=4105, published_extra=0),
    "dnabert2_117m": dict(params=117e6, vocab=4096, published_extra=0),
    "omnigenome_52m": dict(params=52e6, vocab=24, published_extra=0),
}


def get(name: str) -> ml_collections.ConfigDict:
    if name not in PRESETS:
        raise UserError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return ml_collections.ConfigDict({**_base(), **PRESETS[name], "name": name})


def compare_to_published(name: str, num_params: int, vocab_size: int) -> str:
    """A line putting a model's parameter count beside its model card's, when there is one."""
    line = f"model {name or 'custom'}: {num_params:,} parameters"
    pub = PUBLISHED.get(name)
    if pub is None:
        return line
    line += f"; published {pub['params'] / 1e6:,.1f}M with a {pub['vocab']:,}-token vocabulary"
    if pub["published_extra"]:
        line += (
            f" (which counts {pub['published_extra']:,} values of an absolute-position table the "
            "checkpoint carries but rotary attention never reads)"
        )
    if vocab_size == pub["vocab"]:
        ratio = (num_params + pub["published_extra"]) / pub["params"] - 1
        line += f": {ratio:+.2%}"
    else:
        line += f"; this run's vocabulary is {vocab_size:,}"
    return line
