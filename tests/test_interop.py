"""Hugging Face ESM / Nucleotide Transformer interop: logits parity with transformers (and with a
minimal PyTorch NT v2 reference), tokenizer id parity, exact export -> import round trips.

Needs the `interop` extra (torch, transformers, safetensors), which `make test` installs."""

import json
import pathlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402

from gfm_jax.data import builtin, fasta  # noqa: E402
from gfm_jax.data.tokenizers import get_tokenizer  # noqa: E402
from gfm_jax.evaluate import pretrained  # noqa: E402
from gfm_jax.interop import workdir as interop  # noqa: E402
from gfm_jax.interop.__main__ import main as interop_main  # noqa: E402
from gfm_jax.models.heads import MaskedLM  # noqa: E402

NT6 = get_tokenizer("nt6")
SIZES = {"small": (64, 4, 2, 128), "wider": (96, 6, 3, 160)}  # hidden, heads, layers, FFN


def real_sequences() -> list[str]:
    """Windows of real genomes, of several lengths; one holds the S. aureus N."""
    lam = fasta.read_fasta(builtin.DIRECTORY / "lambda_phage_NC_001416.fa.gz")[0].sequence()
    yeast = fasta.read_fasta(builtin.DIRECTORY / "yeast_chrI.fa.gz")[0].sequence()
    sau = fasta.read_fasta(builtin.DIRECTORY / "saureus_NCTC8325_NC_007795.fa.gz")[0].sequence()
    n_at = sau.upper().index("N")
    seqs = [lam[1000:1300], yeast[50_000:50_200], sau[n_at - 100 : n_at + 53], lam[7:68]]
    return [s.upper() for s in seqs]


def batch(tokenizer=NT6) -> tuple[np.ndarray, np.ndarray]:
    """CLS + tokens, right-padded with the pad id: a batch with padding."""
    enc = [np.concatenate([[tokenizer.cls_id], tokenizer.encode(s)]) for s in real_sequences()]
    length = max(map(len, enc))
    ids = np.full((len(enc), length), tokenizer.pad_id, np.int32)
    mask = np.zeros_like(ids, bool)
    for i, e in enumerate(enc):
        ids[i, : len(e)], mask[i, : len(e)] = e, True
    return ids, mask


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


def esm_model(position: str, size: str, nt_v2: bool = False, seed: int = 0):
    """A random-weight EsmForMaskedLM (NT v2: with the SwiGLU feed-forward swapped in)."""
    hidden, heads, layers, ffn = SIZES[size]
    kwargs = {"add_bias_fnn": False} if nt_v2 else {}
    config = transformers.EsmConfig(
        vocab_size=NT6.vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
        max_position_embeddings=80 + NT6.pad_id + 1,
        position_embedding_type=position,
        pad_token_id=NT6.pad_id,
        mask_token_id=NT6.mask_id,
        token_dropout=False,
        emb_layer_norm_before=False,
        layer_norm_eps=1e-5,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        **kwargs,
    )
    torch.manual_seed(seed)
    model = transformers.EsmForMaskedLM(config).eval()
    if nt_v2:
        for layer in model.esm.encoder.layer:
            layer.intermediate = SwiGluIntermediate(hidden, ffn)
            layer.output.dense = torch.nn.Linear(ffn, hidden, bias=False)
    with torch.no_grad():  # weights far from init, so every parameter shows in the logits
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model


def save_hf(model, directory: pathlib.Path, torch_bin: bool = False) -> pathlib.Path:
    """config.json + model.safetensors (or pytorch_model.bin) + vocab.txt, as Hugging Face
    checkpoints ship them."""
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(model.config.to_json_string())
    state = dict(model.state_dict())
    if model.config.tie_word_embeddings:
        state.pop("lm_head.decoder.weight")  # tied: the checkpoint stores the embedding once
    if torch_bin:
        torch.save(state, directory / "pytorch_model.bin")
    else:
        save_file(
            {k: v.detach().numpy() for k, v in state.items()}, str(directory / "model.safetensors")
        )
    (directory / "vocab.txt").write_text("\n".join(NT6.vocab) + "\n")
    return directory


def torch_logits(model, ids, mask) -> np.ndarray:
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids).long(), attention_mask=torch.tensor(mask).long())
    return out.logits.numpy()


def our_logits(workdir, ids, mask) -> np.ndarray:
    loaded = pretrained.load(workdir)
    model = MaskedLM(loaded.pretrained.model_config)
    return np.asarray(model.apply({"params": loaded.params}, ids, mask))


# (position, size, NT v2): ESM-2 style (rotary), NT v1 style (absolute), NT v2 (rotary + SwiGLU).
CASES = [
    (position, size, False) for position in ("rotary", "absolute") for size in ("small", "wider")
] + [("rotary", "small", True), ("rotary", "wider", True)]


@pytest.mark.parametrize("position, size, nt_v2", CASES)
def test_imported_logits_match_transformers_on_real_sequences(tmp_path, position, size, nt_v2):
    model = esm_model(position, size, nt_v2)
    src = save_hf(model, tmp_path / "hf")
    result = interop.import_checkpoint(src, tmp_path / "w")
    assert result["tokenizer"] == "nt6"
    assert result["model"]["activation"] == ("swiglu" if nt_v2 else "gelu")
    assert result["parameters"] == sum(
        p.numel() for n, p in model.named_parameters() if "contact_head" not in n
    ) - (NT6.pad_id + 1) * SIZES[size][0] * (position == "absolute")  # unused position rows
    ids, mask = batch()
    assert (~mask).any()  # the batch has padding
    ref, ours = torch_logits(model, ids, mask), our_logits(tmp_path / "w", ids, mask)
    assert np.abs(ref).max() > 1.0  # not a degenerate comparison
    assert np.abs(ours - ref)[mask].max() < 1e-4


def test_nt_token_ids_equal_the_checkpoint_tokenizer(tmp_path):
    src = save_hf(esm_model("rotary", "small"), tmp_path / "hf")
    hf = transformers.EsmTokenizer(str(src / "vocab.txt"))
    for seq in real_sequences():
        assert hf(seq, add_special_tokens=False)["input_ids"] == list(NT6.encode(seq))
        assert hf(seq)["input_ids"][0] == NT6.cls_id


@pytest.mark.parametrize(
    "position, nt_v2", [("rotary", False), ("absolute", False), ("rotary", True)]
)
def test_export_import_round_trip_is_exact_and_loads_in_pytorch(tmp_path, position, nt_v2):
    model = esm_model(position, "small", nt_v2, seed=1)
    # The absolute-position case reads PyTorch's .bin format, the others safetensors.
    src = save_hf(model, tmp_path / "hf", torch_bin=position == "absolute")
    interop.import_checkpoint(src, tmp_path / "w1")
    interop_main(["export", "--workdir", str(tmp_path / "w1"), "--out", str(tmp_path / "out")])
    interop_main(["import", str(tmp_path / "out"), "--workdir", str(tmp_path / "w2")])
    first = pretrained.load(tmp_path / "w1").params
    second = pretrained.load(tmp_path / "w2").params
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    ids, mask = batch()
    ours = our_logits(tmp_path / "w1", ids, mask)
    if nt_v2:  # transformers has no SwiGLU ESM: load the export into the PyTorch reference
        back = esm_model(position, "small", nt_v2=True, seed=2)
        missing, _ = back.load_state_dict(
            {
                k: torch.from_numpy(v)
                for k, v in load_file(str(tmp_path / "out" / "model.safetensors")).items()
            },
            strict=False,
        )
        assert not [k for k in missing if "contact_head" not in k and "inv_freq" not in k]
        assert json.loads((tmp_path / "out" / "config.json").read_text())["add_bias_fnn"] is False
    else:
        back = transformers.EsmForMaskedLM.from_pretrained(tmp_path / "out").eval()
    assert np.abs(torch_logits(back, ids, mask) - ours)[mask].max() < 1e-4


@pytest.mark.slow  # slow set (CI runs it): keeps the default suite under 10 minutes
def test_trained_gfm_model_exports_to_transformers(tmp_path):
    """A model made by gfm_jax (not imported) exports and gives the same logits in PyTorch."""
    from conftest import micro_overrides, run_module

    esm_like = {"model.activation": "gelu", "model.use_bias_mlp": True, "data.window_len": 120}
    steps = {"train.num_steps": 1, "train.checkpoint_every": 1}
    r = run_module(
        "gfm_jax.train",
        "--config",
        "configs/pretrain/tiny_nt6.py",
        "--workdir",
        str(tmp_path / "w"),
        *micro_overrides(**steps, **esm_like),
    )
    assert r.returncode == 0, r.stderr
    interop.export_checkpoint(tmp_path / "w", tmp_path / "out")
    back = transformers.EsmForMaskedLM.from_pretrained(tmp_path / "out").eval()
    ids, mask = batch()
    ours = our_logits(tmp_path / "w", ids, mask)
    assert np.abs(torch_logits(back, ids, mask) - ours)[mask].max() < 1e-4


def test_unsupported_checkpoints_are_refused_by_name(tmp_path, capsys):
    src = save_hf(esm_model("rotary", "small"), tmp_path / "hf")
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "token_dropout": True}))
    with pytest.raises(SystemExit):
        interop_main(["import", str(src), "--workdir", str(tmp_path / "w")])
    assert "token_dropout=True is not supported" in capsys.readouterr().err
    (src / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    with pytest.raises(SystemExit):
        interop_main(["import", str(src), "--workdir", str(tmp_path / "w")])
    assert "model_type 'bert'" in capsys.readouterr().err
    assert not (tmp_path / "w" / "ckpt").exists() or not any((tmp_path / "w" / "ckpt").iterdir())


@pytest.mark.slow
def test_readme_flow_import_finetune_train_from_it_export(tmp_path, monkeypatch, capsys):
    from conftest import run_module

    from gfm_jax.evaluate.__main__ import main as evaluate_main

    src = save_hf(esm_model("rotary", "small"), tmp_path / "hf")
    interop_main(["import", str(src), "--workdir", str(tmp_path / "nt")])
    flags = capsys.readouterr().out.splitlines()[-1].split()
    assert flags[:4] == ["train", "from", "it", "with:"]
    monkeypatch.setenv("GFM_JAX_MALLOC_DEFAULTS", "1")
    evaluate_main(
        [
            "finetune",
            "--config",
            "configs/tasks/splice.py",
            "--workdir",
            str(tmp_path / "nt"),
            "--seeds",
            "0",
            "--config.task.train_rows=(0,128)",
            "--config.task.test_rows=(2000,2064)",
            "--config.finetune.epochs=1",
        ]
    )
    run = json.loads(
        (tmp_path / "nt" / "eval" / "splice" / "splice_finetune_pretrained_seed0.json").read_text()
    )
    assert run["tokenizer"] == "nt6" and run["checkpoint_step"] == 0
    # Pretraining from the imported weights with the flags the import printed.
    r = run_module(
        "gfm_jax.train",
        "--config",
        "configs/pretrain/tiny_nt6.py",
        "--workdir",
        str(tmp_path / "more"),
        *flags[4:],
        "--config.train.num_steps=1",
        "--config.train.global_batch_size=8",
        "--config.data.window_len=120",
        "--config.train.eval_batches=1",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "parameters from" in r.stdout
    interop_main(
        ["export", "--workdir", str(tmp_path / "more"), "--out", str(tmp_path / "hf_more")]
    )
    back = transformers.EsmForMaskedLM.from_pretrained(tmp_path / "hf_more").eval()
    ids, mask = batch()
    assert (
        np.abs(torch_logits(back, ids, mask) - our_logits(tmp_path / "more", ids, mask))[mask].max()
        < 1e-4
    )
