"""DNABERT-2 checkpoints (MosaicBERT: ALiBi, a gated feed-forward, post-LN) <-> gfm_jax
parameters.

The published model (`zhihan1996/DNABERT-2-117M`) is a `BertForMaskedLM` state dict under the
`bert.` prefix, run by its own modelling code (`bert_layers.py`):
- embeddings: word + token-type row 0 (every token is type 0), then LayerNorm; no position
  table (ALiBi: each head adds -slope * |i - j| to its scores, the slopes of Press et al.);
- each layer, post-LN: h = LN(h + dense(attention(Wqkv h))), then
  h = LN(h + wo(GELU(gate) * up)), with [gate; up] = gated_layers h (no bias) and Wqkv = [q; k; v];
- no final norm; the MLM head is dense -> GELU -> LayerNorm -> decoder (the word embeddings) +
  `cls.predictions.decoder.bias`.
gfm_jax holds it as `norm_placement="post"`, `embed_norm`, `position="alibi"`, GEGLU with
`use_bias_mlp_in=False`, `token_type_embed` (the token-type row 0, added to every token) and
tied embeddings.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import numpy as np

from gfm_jax.data import bpe, builtin, fasta
from gfm_jax.data.tokenizers import Tokenizer
from gfm_jax.errors import UserError
from gfm_jax.interop.state_dict import StateDict, Weights

Params = dict[str, Any]
PREFIX = "bert."


def is_dnabert2(config: dict) -> bool:
    """DNABERT-2's config: its ALiBi key, or its modelling code in auto_map."""
    return "alibi_starting_size" in config or "bert_layers" in json.dumps(config.get("auto_map"))


def read_tokenizer(src: pathlib.Path, config: dict) -> bpe.BpeTokenizer:
    """The checkpoint's tokenizer.json (BPE); bases per token measured on the lambda genome."""
    path = src / "tokenizer.json"
    if not path.is_file():
        raise UserError(f"{src}: no tokenizer.json (DNABERT-2's BPE tokenizer)")
    import tokenizers

    try:
        backend = tokenizers.Tokenizer.from_file(str(path))
    except Exception as e:  # the Rust library raises plain Exception on a bad file
        raise UserError(f"{path}: not a tokenizers file ({e})") from None
    if backend.get_vocab_size() != int(config["vocab_size"]):
        raise UserError(
            f"{path}: {backend.get_vocab_size()} tokens, config.json vocab_size="
            f"{config['vocab_size']}"
        )
    genome = builtin.DIRECTORY / "lambda_phage_NC_001416.fa.gz"
    text = fasta.read_fasta(genome)[0].sequence().upper()
    tokens = len(backend.encode(text, add_special_tokens=False).ids)
    return bpe.BpeTokenizer(backend, len(text) / tokens)


def model_overrides(config: dict) -> dict[str, Any]:
    return {
        "name": "dnabert2_import",
        "num_layers": int(config["num_hidden_layers"]),
        "hidden_size": int(config["hidden_size"]),
        "num_heads": int(config["num_attention_heads"]),
        "mlp_dim": int(config["intermediate_size"]),
        "activation": "geglu",
        "use_bias_attn": True,
        "use_bias_mlp": True,
        "use_bias_mlp_in": False,
        "norm": "layernorm",
        "norm_eps": float(config.get("layer_norm_eps", 1e-12)),
        "norm_placement": "post",
        "embed_norm": True,
        "token_dropout": False,
        "position": "alibi",
        "max_positions": 0,
        "tie_embeddings": True,
        "token_type_embed": True,
    }


def _import_layer(w: Weights, p: str, d: int, n: int, f: int) -> Params:
    qkv_w, qkv_b = w.get(f"{p}.attention.self.Wqkv.weight"), w.get(f"{p}.attention.self.Wqkv.bias")
    attn = {
        name: {
            "kernel": qkv_w[i * d : (i + 1) * d].T.reshape(d, n, d // n),
            "bias": qkv_b[i * d : (i + 1) * d].reshape(n, d // n),
        }
        for i, name in enumerate(("query", "key", "value"))
    }
    out = w.dense(f"{p}.attention.output.dense")
    attn["out"] = {"kernel": out["kernel"].reshape(n, d // n, d), "bias": out["bias"]}
    gated = w.get(f"{p}.mlp.gated_layers.weight").T  # [D, 2F]: gate, then up
    return {
        "attn": attn,
        "attn_norm": w.norm(f"{p}.attention.output.LayerNorm"),
        "mlp": {
            "gate": {"kernel": gated[:, :f]},
            "up": {"kernel": gated[:, f:]},
            "down": w.dense(f"{p}.mlp.wo"),
        },
        "mlp_norm": w.norm(f"{p}.mlp.layernorm"),
    }


def import_params(weights: dict[str, np.ndarray], config: dict) -> Params:
    """gfm_jax MaskedLM parameters from a DNABERT-2 (BertForMaskedLM) state dict; without
    `mlm_head` when the checkpoint has no MLM head (a BertModel save)."""
    w = Weights(weights, (PREFIX,), "DNABERT-2")
    m = model_overrides(config)
    d, n, f = m["hidden_size"], m["num_heads"], m["mlp_dim"]
    word = w.get("embeddings.word_embeddings.weight")
    encoder: Params = {
        "embed": {"embedding": word},
        "token_type": w.get("embeddings.token_type_embeddings.weight")[0],
        "embed_norm": w.norm("embeddings.LayerNorm"),
    }
    for i in range(m["num_layers"]):
        encoder[f"layer_{i}"] = _import_layer(w, f"encoder.layer.{i}", d, n, f)
    if w.optional("cls.predictions.transform.dense.weight") is None:
        return {"encoder": encoder}
    decoder = w.optional("cls.predictions.decoder.weight")
    if decoder is not None and not np.array_equal(decoder, word):
        raise UserError(
            "cls.predictions.decoder.weight differs from the word embeddings; DNABERT-2 ties them"
        )
    bias = w.optional("cls.predictions.decoder.bias")
    head = {
        "dense": w.dense("cls.predictions.transform.dense"),
        "norm": w.norm("cls.predictions.transform.LayerNorm"),
        "decoder_bias": w.get("cls.predictions.bias") if bias is None else bias,
    }
    return {"encoder": encoder, "mlm_head": head}


def _check_exportable(model: Any) -> None:
    wanted = {
        "position": "alibi",
        "activation": "geglu",
        "norm": "layernorm",
        "norm_placement": "post",
        "embed_norm": True,
        "use_bias_attn": True,
        "use_bias_mlp": True,
        "use_bias_mlp_in": False,
        "tie_embeddings": True,
        "token_type_embed": True,
        "token_dropout": False,
        "rc_equivariant": False,
    }
    wrong = {k: model.get(k) for k, v in wanted.items() if model.get(k) != v}
    if wrong:
        settings = ", ".join(f"model.{k}={v!r}" for k, v in wrong.items())
        raise UserError(f"{settings}: the DNABERT-2 layout needs {wanted}")


def export_state(params: Params, model: Any, tokenizer: Tokenizer) -> tuple[dict, dict]:
    """(state dict, config.json) in DNABERT-2's layout for gfm_jax MaskedLM parameters."""
    _check_exportable(model)
    if not isinstance(tokenizer, bpe.BpeTokenizer):
        raise UserError(
            f"the DNABERT-2 layout needs a BPE tokenizer; this model uses {tokenizer.name}"
        )
    e, head = params["encoder"], params["mlm_head"]
    d = int(model["hidden_size"])
    out = StateDict()
    out.put("bert.embeddings.word_embeddings.weight", e["embed"]["embedding"])
    out.put("bert.embeddings.token_type_embeddings.weight", np.stack([e["token_type"]] * 2))
    out.norm("bert.embeddings.LayerNorm", e["embed_norm"])
    for i in range(int(model["num_layers"])):
        layer, p = e[f"layer_{i}"], f"bert.encoder.layer.{i}"
        attn = layer["attn"]
        out.put(
            f"{p}.attention.self.Wqkv.weight",
            np.concatenate([np.asarray(attn[k]["kernel"]).reshape(d, d).T for k in QKV]),
        )
        out.put(
            f"{p}.attention.self.Wqkv.bias",
            np.concatenate([np.asarray(attn[k]["bias"]).reshape(d) for k in QKV]),
        )
        out.dense(f"{p}.attention.output.dense", attn["out"])
        out.norm(f"{p}.attention.output.LayerNorm", layer["attn_norm"])
        mlp = layer["mlp"]
        gated = np.concatenate([mlp["gate"]["kernel"], mlp["up"]["kernel"]], axis=-1)
        out.dense(f"{p}.mlp.gated_layers", {"kernel": gated})
        out.dense(f"{p}.mlp.wo", mlp["down"])
        out.norm(f"{p}.mlp.layernorm", layer["mlp_norm"])
    out.dense("cls.predictions.transform.dense", head["dense"])
    out.norm("cls.predictions.transform.LayerNorm", head["norm"])
    out.put("cls.predictions.decoder.weight", e["embed"]["embedding"])
    out.put("cls.predictions.decoder.bias", head["decoder_bias"])
    return dict(out), _hf_config(model, tokenizer)


QKV = ("query", "key", "value")


def _hf_config(model: Any, tokenizer: Tokenizer) -> dict:
    return {
        "architectures": ["BertForMaskedLM"],
        "model_type": "bert",
        "alibi_starting_size": 512,
        "attention_probs_dropout_prob": 0.0,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "hidden_size": int(model["hidden_size"]),
        "intermediate_size": int(model["mlp_dim"]),
        "layer_norm_eps": float(model["norm_eps"]),
        "max_position_embeddings": 512,
        "num_attention_heads": int(model["num_heads"]),
        "num_hidden_layers": int(model["num_layers"]),
        "pad_token_id": tokenizer.pad_id,
        "type_vocab_size": 2,
        "vocab_size": tokenizer.vocab_size,
        "torch_dtype": "float32",
    }


def write_tokenizer(out: pathlib.Path, tokenizer: Tokenizer) -> None:
    """tokenizer.json (the BPE model itself) and tokenizer_config.json."""
    (out / "tokenizer.json").write_text(tokenizer.spec()["json"])
    specials = {
        f"{role}_token": tokenizer.vocab[getattr(tokenizer, f"{role}_id")]
        for role in ("unk", "cls", "pad", "mask")
    }
    if "[SEP]" in tokenizer.vocab:
        specials["sep_token"] = "[SEP]"
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **specials}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
