"""Hugging Face ESM-family checkpoints <-> gfm_jax parameters: ESM-2, Nucleotide Transformer
v1 and v2, OmniGenome.

One weight layout (`EsmForMaskedLM`'s; OmniGenome's renames the `esm.` prefix `OmniGenome.`),
three feed-forward and position variants:
- NT v1 / ESM-1b style: learned absolute positions, GELU feed-forward with biases;
- ESM-2 style and OmniGenome: rotary positions, GELU feed-forward with biases;
- NT v2: rotary positions and a SwiGLU feed-forward without biases. Its config carries
  `add_bias_fnn` (transformers' own ESM has no such key and no SwiGLU; the NT v2 checkpoints
  ship their own modelling code). Its `intermediate.dense` holds [gate; up] stacked: the first
  half goes through SiLU and multiplies the second.
`token_dropout` (ESM-2, NT v1, OmniGenome) is the encoder's `model.token_dropout`,
`emb_layer_norm_before` its `model.embed_norm`.

Conventions that matter for parity:
- torch `Linear.weight` is [out, in]; gfm_jax kernels are [in, out], and the attention kernels
  split the head axis: query [D, N, H], out [N, H, D].
- ESM numbers learned positions from `pad_token_id + 1`. gfm_jax's table starts at position 0,
  so rows `pad + 1 ...` of the Hugging Face table become rows `0 ...` here. Exported tables fill
  the unused first `pad + 1` rows with zeros.
- The vocabulary is the checkpoint's `vocab.txt`, in its order, cut to the config's
  `vocab_size` (NT v1's file lists `<eos>` and `<bos>` after its 4,105 embedding rows).
"""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np

from gfm_jax.data.checkpoint_vocab import CheckpointVocab
from gfm_jax.errors import UserError
from gfm_jax.interop.state_dict import Weights

Params = dict[str, Any]
# The state-dict prefix of the encoder, per model_type (OmniGenome's code renames ESM's).
PREFIXES = ("esm.", "OmniGenome.")


# --- Reading the files ---------------------------------------------------------------------


def check_config(config: dict, path: pathlib.Path) -> None:
    position = config.get("position_embedding_type", "absolute")
    if position not in ("absolute", "rotary"):
        raise UserError(
            f"{path}: position_embedding_type={position!r}; gfm_jax imports 'absolute' and 'rotary'"
        )


# Single letters a nucleotide vocabulary may hold: bases and IUPAC codes (any case).
NUCLEOTIDE_LETTERS = set("ACGTUNRYSWKMBDHV")


def read_tokenizer(src: pathlib.Path, config: dict) -> CheckpointVocab:
    """The checkpoint's vocabulary (vocab.txt, cut to the embedding rows) as a tokenizer: 6-mers
    when it holds them, else one base per token (RNA letters when it holds U). Refuses protein
    vocabularies and pad / mask ids that disagree with config.json."""
    path = src / "vocab.txt"
    if not path.is_file():
        raise UserError(f"{src}: no vocab.txt (the ESM tokenizer's vocabulary)")
    try:
        vocab = [line.strip() for line in path.read_text().splitlines()]
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not a text file ({e})") from None
    rows = int(config["vocab_size"])
    if len(vocab) < rows:
        raise UserError(f"{path}: {len(vocab)} tokens for vocab_size={rows} embedding rows")
    vocab = vocab[:rows]
    other = sorted(
        t for t in vocab if len(t) == 1 and t.isalpha() and t.upper() not in NUCLEOTIDE_LETTERS
    )
    if other:
        raise UserError(
            f"{path}: letters {''.join(other)} are not nucleotides; is this a protein model?"
        )
    scheme = "nt6" if "AAAAAA" in vocab else "char_rna" if "U" in vocab else "char"
    tokenizer = CheckpointVocab(vocab, scheme, str(path))
    for key, ours in (("pad_token_id", tokenizer.pad_id), ("mask_token_id", tokenizer.mask_id)):
        if key in config and int(config[key]) != ours:
            raise UserError(
                f"{src}/config.json: {key}={config[key]} but vocab.txt puts it at {ours}"
            )
    return tokenizer


def model_overrides(config: dict, family: str) -> dict[str, Any]:
    """gfm_jax `config.model` values for a Hugging Face ESM-family config."""
    glu = "add_bias_fnn" in config  # NT v2's modelling code
    position = (
        "rope" if config.get("position_embedding_type", "absolute") == "rotary" else "learned"
    )
    pad = int(config["pad_token_id"])
    return {
        "name": f"{family}_import",
        "num_layers": int(config["num_hidden_layers"]),
        "hidden_size": int(config["hidden_size"]),
        "num_heads": int(config["num_attention_heads"]),
        "mlp_dim": int(config["intermediate_size"]),
        "activation": "swiglu" if glu else "gelu",
        "use_bias_attn": True,
        "use_bias_mlp": bool(config.get("add_bias_fnn", True)),
        "use_bias_mlp_in": True,
        "norm": "layernorm",
        "norm_eps": float(config.get("layer_norm_eps", 1e-12)),
        "norm_placement": "pre",
        "embed_norm": bool(config.get("emb_layer_norm_before", False)),
        "token_dropout": bool(config.get("token_dropout", False)),
        "position": position,
        "max_positions": int(config["max_position_embeddings"]) - pad - 1
        if position == "learned"
        else 0,
        "tie_embeddings": bool(config.get("tie_word_embeddings", True)),
    }


def _embedding(w: Weights, config: dict) -> dict:
    """The token embedding table, checked against the config's vocab_size."""
    table = w.get("embeddings.word_embeddings.weight")
    if table.shape[0] != int(config["vocab_size"]):
        raise UserError(
            f"embeddings.word_embeddings.weight has {table.shape[0]} rows but config.json says "
            f"vocab_size={config['vocab_size']}"
        )
    return {"embedding": table}


def _import_layer(w: Weights, i: int, m: dict[str, Any]) -> Params:
    """Encoder layer `i`: attention kernels split by head, the feed-forward, the two norms."""
    d, n = m["hidden_size"], m["num_heads"]
    h = d // n
    p = f"encoder.layer.{i}"
    attn = {}
    for name in ("query", "key", "value"):
        q = w.dense(f"{p}.attention.self.{name}")
        attn[name] = {"kernel": q["kernel"].reshape(d, n, h), "bias": q["bias"].reshape(n, h)}
    out = w.dense(f"{p}.attention.output.dense")
    attn["out"] = {"kernel": out["kernel"].reshape(n, h, d), "bias": out["bias"]}
    bias = m["use_bias_mlp"]
    if m["activation"] == "swiglu":  # NT v2: intermediate.dense holds [gate; up]
        stacked = w.dense(f"{p}.intermediate.dense", bias)
        f = m["mlp_dim"]
        mlp = {
            "gate": {k: v[..., :f] for k, v in stacked.items()},
            "up": {k: v[..., f:] for k, v in stacked.items()},
        }
    else:
        mlp = {"up": w.dense(f"{p}.intermediate.dense", bias)}
    mlp["down"] = w.dense(f"{p}.output.dense", bias)
    return {
        "attn": attn,
        "attn_norm": w.norm(f"{p}.attention.LayerNorm"),
        "mlp": mlp,
        "mlp_norm": w.norm(f"{p}.LayerNorm"),
    }


def import_params(weights: dict[str, np.ndarray], config: dict, family: str) -> Params:
    """gfm_jax MaskedLM parameters (nested dicts of numpy arrays) from an ESM state dict; without
    `mlm_head` when the checkpoint has no MLM head (a base-model save)."""
    w = Weights(weights, PREFIXES, "ESM")
    m = model_overrides(config, family)
    encoder: Params = {"embed": _embedding(w, config)}
    if m["position"] == "learned":
        pad = int(config["pad_token_id"])
        table = w.get("embeddings.position_embeddings.weight")
        encoder["position_embed"] = {"embedding": table[pad + 1 : pad + 1 + m["max_positions"]]}
    if m["embed_norm"]:
        encoder["embed_norm"] = w.norm("embeddings.layer_norm")
    for i in range(m["num_layers"]):
        encoder[f"layer_{i}"] = _import_layer(w, i, m)
    encoder["final_norm"] = w.norm("encoder.emb_layer_norm_after")
    if "lm_head.dense.weight" not in w:
        return {"encoder": encoder}
    head: Params = {"dense": w.dense("lm_head.dense"), "norm": w.norm("lm_head.layer_norm")}
    if m["tie_embeddings"]:
        head["decoder_bias"] = w.get("lm_head.bias")
    else:
        head["decoder"] = {
            "kernel": w.dense("lm_head.decoder", bias=False)["kernel"],
            "bias": w.get("lm_head.bias"),
        }
    return {"encoder": encoder, "mlm_head": head}
