"""gfm_jax parameters -> a Hugging Face ESM-family checkpoint (ESM-2 / NT v1, NT v2's
SwiGLU, OmniGenome's prefix): the inverse of esm.py's import, with the same conventions."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import numpy as np

from gfm_jax.data.tokenizers import Tokenizer
from gfm_jax.errors import UserError
from gfm_jax.interop.state_dict import StateDict

Params = dict[str, Any]


def _check_exportable(model: Any) -> None:
    """Refuses a model the ESM format cannot hold, naming the keys."""
    if model["position"] not in ("learned", "rope") or model["norm"] != "layernorm":
        raise UserError(
            f"model.position={model['position']!r}, model.norm={model['norm']!r}: the ESM format "
            "holds learned or rotary positions and LayerNorm only"
        )
    if model["activation"] not in ("gelu", "swiglu") or not model["use_bias_attn"]:
        raise UserError(
            f"model.activation={model['activation']!r}, use_bias_attn={model['use_bias_attn']}: "
            "the ESM format holds GELU (ESM, NT v1) or SwiGLU (NT v2) with attention biases"
        )
    if model["activation"] != "swiglu" and not model["use_bias_mlp"]:
        raise UserError("model.use_bias_mlp=False with GELU has no ESM equivalent")
    if model.get("norm_placement", "pre") != "pre" or not model.get("use_bias_mlp_in", True):
        raise UserError(
            "model.norm_placement='post' or use_bias_mlp_in=False is a BERT-style model: "
            "export it with --family dnabert2"
        )
    if model.get("rc_equivariant") or model.get("token_type_embed"):
        raise UserError(
            "model.rc_equivariant / token_type_embed have no ESM equivalent (an ESM model runs "
            "one strand and has no token-type vector): its outputs would differ"
        )


def check_tokenizer(tokenizer: Tokenizer) -> None:
    """Refuses tokenizers an ESM tokenizer (greedy longest match over vocab.txt) cannot be."""
    if tokenizer.scheme not in ("nt6", "char", "char_rna"):
        raise UserError(
            f"data.tokenizer {tokenizer.name!r}: an ESM vocab.txt tokenizes as nt6, char or "
            "char_rna only (a BPE model exports with --family dnabert2)"
        )


def _export_layer(out: StateDict, layer: Params, p: str, d: int, glu: bool) -> None:
    for name in ("query", "key", "value"):
        q = layer["attn"][name]
        out.put(f"{p}.attention.self.{name}.weight", np.asarray(q["kernel"]).reshape(d, d).T)
        out.put(f"{p}.attention.self.{name}.bias", np.asarray(q["bias"]).reshape(d))
    o = layer["attn"]["out"]
    out.put(f"{p}.attention.output.dense.weight", np.asarray(o["kernel"]).reshape(d, d).T)
    out.put(f"{p}.attention.output.dense.bias", o["bias"])
    out.norm(f"{p}.attention.LayerNorm", layer["attn_norm"])
    out.norm(f"{p}.LayerNorm", layer["mlp_norm"])
    mlp = layer["mlp"]
    if glu:  # NT v2 stacks [gate; up] in one intermediate.dense
        stacked = {k: np.concatenate([mlp["gate"][k], mlp["up"][k]], axis=-1) for k in mlp["up"]}
        out.dense(f"{p}.intermediate.dense", stacked)
    else:
        out.dense(f"{p}.intermediate.dense", mlp["up"])
    out.dense(f"{p}.output.dense", mlp["down"])


def _hf_config(model: Any, tokenizer: Tokenizer, max_positions: int, family: str) -> dict:
    """The config.json of the exported EsmForMaskedLM (OmniGenomeForMaskedLM)."""
    omni = family == "omnigenome"
    config = {
        "architectures": ["OmniGenomeForMaskedLM" if omni else "EsmForMaskedLM"],
        "model_type": family if omni else "esm",
        "vocab_size": tokenizer.vocab_size,
        "hidden_size": int(model["hidden_size"]),
        "num_hidden_layers": int(model["num_layers"]),
        "num_attention_heads": int(model["num_heads"]),
        "intermediate_size": int(model["mlp_dim"]),
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "max_position_embeddings": max_positions,
        "position_embedding_type": "rotary" if model["position"] == "rope" else "absolute",
        "layer_norm_eps": float(model["norm_eps"]),
        "emb_layer_norm_before": bool(model.get("embed_norm", False)),
        "token_dropout": bool(model.get("token_dropout", False)),
        "pad_token_id": tokenizer.pad_id,
        "mask_token_id": tokenizer.mask_id,
        "tie_word_embeddings": bool(model["tie_embeddings"]),
        "is_folding_model": False,
        "torch_dtype": "float32",
    }
    if model["activation"] == "swiglu":  # NT v2's own modelling code reads this key
        config["add_bias_fnn"] = bool(model["use_bias_mlp"])
    return config


def export_state(
    params: Params, model: Any, tokenizer: Tokenizer, family: str = "esm"
) -> tuple[dict, dict]:
    """(state dict, config.json) of an EsmForMaskedLM (`family` "omnigenome": the
    OmniGenomeForMaskedLM layout) for gfm_jax MaskedLM parameters.

    `model` is the `config.model` block (a ConfigDict or dict) the parameters were made with.
    """
    _check_exportable(model)
    check_tokenizer(tokenizer)
    e, head = params["encoder"], params["mlm_head"]
    d = int(model["hidden_size"])
    pad = tokenizer.pad_id
    base = "OmniGenome." if family == "omnigenome" else "esm."
    out = StateDict()
    out.put(f"{base}embeddings.word_embeddings.weight", e["embed"]["embedding"])
    max_positions = 1026  # unused with rotary positions; the value ESM-2 configs carry
    if model["position"] == "learned":
        table = np.asarray(e["position_embed"]["embedding"])
        max_positions = table.shape[0] + pad + 1
        out.put(
            f"{base}embeddings.position_embeddings.weight",
            np.concatenate([np.zeros((pad + 1, d), np.float32), table]),
        )
    if model.get("embed_norm"):
        out.norm(f"{base}embeddings.layer_norm", e["embed_norm"])
    glu = model["activation"] == "swiglu"
    for i in range(int(model["num_layers"])):
        _export_layer(out, e[f"layer_{i}"], f"{base}encoder.layer.{i}", d, glu)
    out.norm(f"{base}encoder.emb_layer_norm_after", e["final_norm"])
    out.dense("lm_head.dense", head["dense"])
    out.norm("lm_head.layer_norm", head["norm"])
    if model["tie_embeddings"]:
        out.put("lm_head.bias", head["decoder_bias"])
        out.put("lm_head.decoder.weight", e["embed"]["embedding"])
    else:
        out.put("lm_head.bias", head["decoder"]["bias"])
        out.put("lm_head.decoder.weight", np.asarray(head["decoder"]["kernel"]).T)
    return dict(out), _hf_config(model, tokenizer, max_positions, family)


def write_tokenizer(out: pathlib.Path, tokenizer: Tokenizer) -> None:
    """The ESM tokenizer files: vocab.txt, special_tokens_map.json, tokenizer_config.json."""
    (out / "vocab.txt").write_text("\n".join(tokenizer.vocab) + "\n")
    specials = {
        "unk_token": tokenizer.vocab[tokenizer.unk_id],
        "pad_token": tokenizer.vocab[tokenizer.pad_id],
        "mask_token": tokenizer.vocab[tokenizer.mask_id],
        "cls_token": tokenizer.vocab[tokenizer.cls_id],
    }
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")
    tokenizer_config = {"tokenizer_class": "EsmTokenizer", "model_max_length": 1000, **specials}
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
