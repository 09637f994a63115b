"""PyTorch references and checkpoint writers for the interop tests.

Each published family is built at small width from its published config.json (tests/data/hf),
with random weights, and saved as its Hugging Face repository lays it out:
- ESM-2, NT v1, OmniGenome: transformers' `EsmForMaskedLM` (OmniGenome's modelling code is a copy
  of transformers' ESM with `esm.` renamed `OmniGenome.`, so the weights are saved under that
  prefix, with the unused position table and contact head its files carry);
- NT v2: `EsmForMaskedLM` with NT v2's feed-forward swapped in (SwiGLU without biases);
- DNABERT-2: `Dnabert2Reference` below, written from the model's published description.
"""

from __future__ import annotations

import json
import math
import pathlib
import shutil

import numpy as np
import torch
import transformers
from safetensors.numpy import save_file

from gfm_jax.data import builtin, fasta

DATA = pathlib.Path(__file__).parent / "data" / "hf"
SMALL = {
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "intermediate_size": 96,
}
# Keys of the published configs that only the Hugging Face loaders read.
_LOADER_KEYS = ("auto_map", "architectures", "model_type", "_name_or_path", "torch_dtype")


def published_config(family: str) -> dict:
    return json.loads((DATA / family / "config.json").read_text())


def small_config(family: str, **changes: object) -> dict:
    """The published config.json of `family` at small width (and with `changes`)."""
    return {**published_config(family), **SMALL, **changes}


def real_sequences() -> list[str]:
    """Windows of real genomes, of several lengths; one holds the S. aureus N."""
    lam = fasta.read_fasta(builtin.DIRECTORY / "lambda_phage_NC_001416.fa.gz")[0].sequence()
    yeast = fasta.read_fasta(builtin.DIRECTORY / "yeast_chrI.fa.gz")[0].sequence()
    sau = fasta.read_fasta(builtin.DIRECTORY / "saureus_NCTC8325_NC_007795.fa.gz")[0].sequence()
    n_at = sau.upper().index("N")
    seqs = [lam[1000:1300], yeast[50_000:50_200], sau[n_at - 100 : n_at + 53], lam[7:68]]
    return [s.upper() for s in seqs]


def batch(tokenizer, masked: tuple[int, ...] = (2, 5, 9)) -> tuple[np.ndarray, np.ndarray]:
    """CLS + tokens, right-padded with the pad id; the first two rows (one unpadded, one padded)
    have mask tokens at `masked`, so ESM's token dropout sees mask fractions above zero."""
    enc = [np.concatenate([[tokenizer.cls_id], tokenizer.encode(s)]) for s in real_sequences()]
    length = max(map(len, enc))
    ids = np.full((len(enc), length), tokenizer.pad_id, np.int32)
    mask = np.zeros_like(ids, bool)
    for i, e in enumerate(enc):
        ids[i, : len(e)], mask[i, : len(e)] = e, True
    ids[:2, list(masked)] = tokenizer.mask_id
    return ids, mask


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Weights far from init, so every parameter shows in the outputs."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)


# --- ESM family ------------------------------------------------------------------------------


class SwiGluIntermediate(torch.nn.Module):
    """NT v2's feed-forward input, from its published description: one bias-free linear layer
    to 2F, split into halves; SiLU(first) * second."""

    def __init__(self, hidden: int, ffn: int):
        super().__init__()
        self.ffn = ffn
        self.dense = torch.nn.Linear(hidden, 2 * ffn, bias=False)

    def forward(self, x):
        gate, up = self.dense(x).split(self.ffn, dim=-1)
        return torch.nn.functional.silu(gate) * up


def esm_reference(config: dict, seed: int = 0) -> transformers.EsmForMaskedLM:
    """A random-weight EsmForMaskedLM for an ESM-family config (NT v2: its SwiGLU swapped in)."""
    kwargs = {k: v for k, v in config.items() if k not in _LOADER_KEYS}
    kwargs.update({k: float(v) for k, v in kwargs.items() if k.endswith("_prob")})  # OmniGenome: 0
    model = transformers.EsmForMaskedLM(transformers.EsmConfig(**kwargs)).eval()
    if "add_bias_fnn" in config:
        hidden, ffn = config["hidden_size"], config["intermediate_size"]
        for layer in model.esm.encoder.layer:
            layer.intermediate = SwiGluIntermediate(hidden, ffn)
            layer.output.dense = torch.nn.Linear(ffn, hidden, bias=False)
    _randomize(model, seed)
    return model


def save_esm(model, config: dict, family: str, directory: pathlib.Path, torch_bin=False):
    """The checkpoint directory as the family's Hugging Face repository holds it."""
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.decoder.weight")  # tied: the checkpoint stores the embedding once
    if family == "omnigenome":
        state = {k.replace("esm.", "OmniGenome.", 1): v for k, v in state.items()}
        d, rows = config["hidden_size"], config["max_position_embeddings"]
        state["OmniGenome.embeddings.position_embeddings.weight"] = np.ones((rows, d), np.float32)
    if torch_bin:
        torch.save(
            {k: torch.from_numpy(v) for k, v in state.items()}, directory / "pytorch_model.bin"
        )
    else:
        save_file(state, str(directory / "model.safetensors"))
    source = DATA / ("nt_v2" if family == "esm2" else family)
    for f in source.iterdir():
        if f.name != "config.json":
            shutil.copy(f, directory / f.name)
    return directory


def esm_outputs(model, ids, mask) -> tuple[np.ndarray, list[np.ndarray]]:
    """Logits and transformers' hidden states: the embeddings, each layer's output but the
    last, and the output after the final norm."""
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(ids).long(),
            attention_mask=torch.tensor(mask).long(),
            output_hidden_states=True,
        )
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    return out.logits.numpy(), [s.numpy() for s in out.hidden_states]


# --- DNABERT-2 -------------------------------------------------------------------------------


def _alibi_slopes(n: int) -> list[float]:
    """ALiBi head slopes (Press et al.): a geometric series from 2^(-8/n) for a power of two n;
    otherwise the closest power's slopes, then every other slope of twice that power."""
    if math.log2(n).is_integer():
        return [2.0 ** (-8.0 * (i + 1) / n) for i in range(n)]
    closest = 2 ** math.floor(math.log2(n))
    return _alibi_slopes(closest) + _alibi_slopes(2 * closest)[0::2][: n - closest]


def _module(**children: torch.nn.Module) -> torch.nn.ModuleDict:
    return torch.nn.ModuleDict(children)


class Dnabert2Reference(torch.nn.Module):
    """DNABERT-2's forward pass (MosaicBERT), written from its published description: token +
    token-type embeddings -> LayerNorm; per layer, post-LN attention with fused [q; k; v] and
    symmetric ALiBi, then a post-LN gated feed-forward GELU(first half) * second half; MLM
    head dense -> GELU -> LayerNorm -> word embeddings + bias. Parameter names are those of the
    published state dict."""

    def __init__(self, config: dict, seed: int = 0):
        super().__init__()
        d, f, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
        eps = config["layer_norm_eps"]
        self.heads, self.ffn = config["num_attention_heads"], f
        linear, norm = torch.nn.Linear, lambda: torch.nn.LayerNorm(d, eps=eps)
        layers = [
            _module(
                attention=_module(
                    self=_module(Wqkv=linear(d, 3 * d)),
                    output=_module(dense=linear(d, d), LayerNorm=norm()),
                ),
                mlp=_module(
                    gated_layers=linear(d, 2 * f, bias=False), wo=linear(f, d), layernorm=norm()
                ),
            )
            for _ in range(config["num_hidden_layers"])
        ]
        self.bert = _module(
            embeddings=_module(
                word_embeddings=torch.nn.Embedding(v, d),
                token_type_embeddings=torch.nn.Embedding(config["type_vocab_size"], d),
                LayerNorm=norm(),
            ),
            encoder=_module(layer=torch.nn.ModuleList(layers)),
        )
        self.cls = _module(
            predictions=_module(
                transform=_module(dense=linear(d, d), LayerNorm=torch.nn.LayerNorm(d, eps=1e-12)),
                decoder=linear(d, v),
            )
        )
        self.cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight
        _randomize(self, seed)
        self.eval()

    def forward(self, ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        gelu = torch.nn.functional.gelu
        ids_t, mask_t = torch.tensor(ids).long(), torch.tensor(mask).float()
        emb = self.bert.embeddings
        with torch.no_grad():
            x = emb.LayerNorm(emb.word_embeddings(ids_t) + emb.token_type_embeddings.weight[0])
            b, length, d = x.shape
            pos = torch.arange(length)
            slopes = torch.tensor(_alibi_slopes(self.heads))
            bias = -slopes[:, None, None] * (pos[None, :] - pos[:, None]).abs()
            bias = bias[None] + (1.0 - mask_t)[:, None, None, :] * -10000.0
            states = [x]
            for layer in self.bert.encoder.layer:
                qkv = layer.attention.self.Wqkv(x).view(b, length, 3, self.heads, -1)
                q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
                scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + bias
                a = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, length, d)
                out = layer.attention.output
                x = out.LayerNorm(x + out.dense(a))
                gate, up = layer.mlp.gated_layers(x).split(self.ffn, dim=-1)
                x = layer.mlp.layernorm(x + layer.mlp.wo(gelu(gate) * up))
                states.append(x)
            t = self.cls.predictions.transform
            logits = self.cls.predictions.decoder(t.LayerNorm(gelu(t.dense(x))))
        return logits.numpy(), [s.numpy() for s in states]


def save_dnabert2(model: Dnabert2Reference, config: dict, directory: pathlib.Path):
    """config.json, pytorch_model.bin and the tokenizer files, as the published repository."""
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    torch.save(model.state_dict(), directory / "pytorch_model.bin")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(DATA / "dnabert2" / name, directory / name)
    return directory
