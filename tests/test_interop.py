"""Public-checkpoint interop: NT v1, NT v2, ESM-2 style, OmniGenome and DNABERT-2 at small
width from their published configs, against PyTorch references (logits and every layer's
hidden states); token ids against the published vocabulary and tokenizer files; import by
`hf:` id from a Hugging Face cache with the network off; export -> import round trips.

Needs the `interop` extra (torch, transformers, safetensors, huggingface_hub), which `make test`
installs."""

import json
import os
import pathlib
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
import tokenizers  # noqa: E402
from interop_refs import (  # noqa: E402
    DATA,
    Dnabert2Reference,
    batch,
    esm_outputs,
    esm_reference,
    real_sequences,
    save_dnabert2,
    save_esm,
    small_config,
)
from safetensors.numpy import load_file, save_file  # noqa: E402

from gfm_jax.evaluate import pretrained  # noqa: E402
from gfm_jax.interop import workdir as interop  # noqa: E402
from gfm_jax.interop.__main__ import main as interop_main  # noqa: E402
from gfm_jax.models.encoder import Encoder  # noqa: E402
from gfm_jax.models.heads import MaskedLM  # noqa: E402

# name -> (published config it mirrors, changes to it, the family the importer must see)
ESM_CASES = {
    "nt_v1_500m": ("nt_v1", {}, "esm"),  # token dropout, 4,105 rows, learned positions
    "nt_v2_50m": ("nt_v2", {}, "nt_v2"),  # rotary, SwiGLU without biases, no model_type
    # ESM-2 style: rotary, token dropout, tied decoder; ESM-1b style adds the embedding norm.
    "esm2_style": ("nt_v2", {"add_bias_fnn": None, "token_dropout": True}, "esm"),
    "esm1b_style": ("nt_v1", {"emb_layer_norm_before": True}, "esm"),
    "omnigenome_52m": ("omnigenome", {}, "omnigenome"),  # 24 RNA tokens, token dropout
}


def esm_case(name: str) -> tuple[dict, str, str]:
    published, changes, family = ESM_CASES[name]
    config = small_config(published, **changes)
    if name == "esm2_style":
        config = {k: v for k, v in config.items() if k not in ("add_bias_fnn", "auto_map")}
        config.update(model_type="esm", tie_word_embeddings=True)
    return config, "esm2" if name == "esm2_style" else published, family


def ours(workdir, ids, mask) -> tuple[np.ndarray, list[np.ndarray]]:
    """Logits and every layer's hidden states (Encoder all_layers) of an imported workdir."""
    loaded = pretrained.load(workdir)
    cfg = loaded.pretrained.model_config
    logits = MaskedLM(cfg).apply({"params": loaded.params}, ids, mask)
    states = Encoder(cfg).apply({"params": loaded.params["encoder"]}, ids, mask, all_layers=True)
    return np.asarray(logits), [np.asarray(s) for s in states]


def assert_parity(ref: tuple, got: tuple, mask: np.ndarray) -> None:
    (ref_logits, ref_states), (logits, states) = ref, got
    assert np.abs(ref_logits).max() > 0.3  # not a degenerate comparison
    assert np.abs(logits - ref_logits)[mask].max() < 1e-4
    assert len(states) == len(ref_states)
    for i, (a, b) in enumerate(zip(states, ref_states, strict=True)):
        assert np.abs(a - b)[mask].max() < 1e-4, f"hidden state {i}"


# The default suite runs the nt_v2 and the ESM-2 / ESM-1b style cases (rotary and learned
# positions, token dropout, tied decoder); the slow set runs the published shapes too.
ESM_SLOW = ("nt_v1_500m", "omnigenome_52m")
ESM_PARAMS = [pytest.param(n, marks=pytest.mark.slow) if n in ESM_SLOW else n for n in ESM_CASES]


@pytest.mark.parametrize("name", ESM_PARAMS)
def test_esm_family_logits_and_hidden_states_match_pytorch(tmp_path, name):
    config, files, family = esm_case(name)
    model = esm_reference(config)
    src = save_esm(model, config, files if name != "esm2_style" else "esm2", tmp_path / "hf")
    result = interop.import_checkpoint(src, tmp_path / "w")
    assert result["family"] == family and result["mlm_head"] == "imported"
    assert result["vocab_size"] == config["vocab_size"]  # NT v1: 4,105 of the file's 4,107
    assert result["model"]["token_dropout"] == config["token_dropout"]
    tokenizer = pretrained.describe(tmp_path / "w").tokenizer
    ids, mask = batch(tokenizer)
    assert (~mask).any() and (ids == tokenizer.mask_id).any()  # padding and mask tokens
    assert_parity(esm_outputs(model, ids, mask), ours(tmp_path / "w", ids, mask), mask)


@pytest.mark.slow  # an import checked against torch: in the slow set CI runs
def test_a_checkpoint_without_an_mlm_head_imports_its_encoder(tmp_path):
    """A base-model save (OmniGenomeModel, BertModel): the encoder, and a new head, said so."""
    config, files, _ = esm_case("omnigenome_52m")
    model = esm_reference(config)
    src = save_esm(model, config, files, tmp_path / "hf")
    state = load_file(str(src / "model.safetensors"))
    save_file(
        {k: v for k, v in state.items() if not k.startswith("lm_head.")},
        str(src / "model.safetensors"),
    )
    result = interop.import_checkpoint(src, tmp_path / "w")
    assert result["mlm_head"].startswith("initialised")
    ids, mask = batch(pretrained.describe(tmp_path / "w").tokenizer)
    want, got = esm_outputs(model, ids, mask)[1], ours(tmp_path / "w", ids, mask)[1]
    for a, b in zip(got, want, strict=True):
        assert np.abs(a - b)[mask].max() < 1e-4


def test_dnabert2_logits_and_hidden_states_match_its_reference(tmp_path):
    config = small_config("dnabert2", num_attention_heads=8)
    model = Dnabert2Reference(config)
    src = save_dnabert2(model, config, tmp_path / "hf")
    result = interop.import_checkpoint(src, tmp_path / "w")
    assert result["family"] == "dnabert2" and result["tokenizer"] == "bpe"
    tokenizer = pretrained.describe(tmp_path / "w").tokenizer
    ids, mask = batch(tokenizer)
    assert_parity(model(ids, mask), ours(tmp_path / "w", ids, mask), mask)


def test_alibi_slopes_for_a_head_count_that_is_not_a_power_of_two(tmp_path):
    """DNABERT-2 has 12 heads: the slopes interleave as MosaicBERT's do."""
    config = small_config("dnabert2", num_attention_heads=2, hidden_size=24, num_hidden_layers=1)
    config["num_attention_heads"] = 12
    config["hidden_size"] = 96
    model = Dnabert2Reference(config, seed=3)
    interop.import_checkpoint(save_dnabert2(model, config, tmp_path / "hf"), tmp_path / "w")
    ids, mask = batch(pretrained.describe(tmp_path / "w").tokenizer)
    assert_parity(model(ids, mask), ours(tmp_path / "w", ids, mask), mask)


# --- Token ids against the published files ---------------------------------------------------


def imported_tokenizer(tmp_path, name: str):
    if name == "dnabert2":
        config = small_config("dnabert2")
        src = save_dnabert2(Dnabert2Reference(config), config, tmp_path / "hf")
    else:
        config, files, _ = esm_case(name)
        src = save_esm(esm_reference(config), config, files, tmp_path / "hf")
    interop.import_checkpoint(src, tmp_path / "w")
    return pretrained.describe(tmp_path / "w").tokenizer


@pytest.mark.parametrize("name", ["nt_v1_500m", "nt_v2_50m", "omnigenome_52m"])
def test_token_ids_equal_the_published_vocabulary_with_the_esm_tokenizer(tmp_path, name):
    ours_tok = imported_tokenizer(tmp_path, name)
    files = ESM_CASES[name][0]
    reference = transformers.EsmTokenizer(str(DATA / files / "vocab.txt"))
    rna = name.startswith("omnigenome")  # OmniGenome reads RNA: T is written U
    for seq in real_sequences():
        text = seq.replace("T", "U") if rna else seq
        want = reference(text, add_special_tokens=False)["input_ids"]
        assert list(ours_tok.encode(seq)) == want
        assert reference(text)["input_ids"][0] == ours_tok.cls_id
    assert (ours_tok.pad_id, ours_tok.mask_id) == (reference.pad_token_id, reference.mask_token_id)
    # Ids the published layouts fix (a wrong vocabulary file would move them).
    expected = {
        "nt_v1_500m": {"AAAAAA": 4, "GGGGGG": 4099, "A": 4100, "N": 4104},
        "nt_v2_50m": {"AAAAAA": 6, "ATTCCG": 369, "A": 4102, "N": 4106},
        "omnigenome_52m": {"A": 4, "U": 9, "N": 8},
    }[name]
    for text, token in expected.items():
        assert ours_tok.encode(text).tolist() == [token]


def test_dnabert2_token_ids_equal_its_published_tokenizer(tmp_path):
    ours_tok = imported_tokenizer(tmp_path, "dnabert2")
    reference = tokenizers.Tokenizer.from_file(str(DATA / "dnabert2" / "tokenizer.json"))
    hf = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(DATA / "dnabert2" / "tokenizer.json")
    )
    for seq in real_sequences():
        ids = reference.encode(seq).ids  # [CLS] tokens [SEP]
        assert ids[0] == ours_tok.cls_id == 1 and ids[-1] == 2
        assert (
            list(ours_tok.encode(seq))
            == ids[1:-1]
            == hf(seq, add_special_tokens=False)["input_ids"]
        )
    assert (ours_tok.pad_id, ours_tok.mask_id, ours_tok.unk_id) == (3, 4, 0)
    assert ours_tok.encode("ACGTN").tolist() == reference.encode("ACGTN").ids[1:-1]
    assert ours_tok.encode("N").tolist() == [0]  # no N token: [UNK]


# --- Sources: hf: ids and the cache ----------------------------------------------------------


def hub_cache(root: pathlib.Path, src: pathlib.Path, repo: str, drop: str = "") -> str:
    """A Hugging Face cache holding `src`'s files as `repo` at one commit; returns the commit."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    base = root / ("models--" + repo.replace("/", "--"))
    snapshot = base / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(commit)
    for f in src.iterdir():
        if f.name != drop:
            shutil.copy(f, snapshot / f.name)
    return commit


@pytest.mark.slow  # long end to end: in the slow set CI runs
def test_import_by_hf_id_from_the_cache_with_the_network_off(tmp_path):
    from conftest import run_module

    config, files, _ = esm_case("nt_v2_50m")
    src = save_esm(esm_reference(config), config, files, tmp_path / "hf")
    repo = "InstaDeepAI/nucleotide-transformer-v2-50m-multi-species"
    commit = hub_cache(tmp_path / "hub", src, repo)
    hub_cache(tmp_path / "hub", src, "someone/no-vocab", drop="vocab.txt")
    bert = small_config("dnabert2")  # DNABERT-2's files: pytorch_model.bin and tokenizer.json
    bert_src = save_dnabert2(Dnabert2Reference(bert), bert, tmp_path / "bert")
    hub_cache(tmp_path / "hub", bert_src, "zhihan1996/DNABERT-2-117M")
    offline = {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    # Without HF_HUB_OFFLINE, a hub that cannot be reached (nothing listens on port 9).
    unreachable = {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_ENDPOINT": "http://127.0.0.1:9"}

    def run(source: str, workdir: str, env: dict):
        return run_module(
            "gfm_jax.interop", "import", source, "--workdir", str(tmp_path / workdir), env=env
        )

    runs = [(f"hf:{repo}", offline), (f"hf:{repo}@main", unreachable)]
    runs += [(f"hf:{repo}@{commit}", offline), ("hf:zhihan1996/DNABERT-2-117M", offline)]
    for i, (source, env) in enumerate(runs):
        r = run(source, f"w{i}", env)
        assert r.returncode == 0, r.stderr[-2000:]
        family = "dnabert2" if "DNABERT" in source else "nt_v2"
        assert f'"family": "{family}"' in r.stdout
    first = pretrained.load(tmp_path / "w0").params
    for a, b in zip(
        jax.tree.leaves(first),
        jax.tree.leaves(pretrained.load(tmp_path / "w2").params),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    r = run("hf:someone/no-vocab", "x", offline)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "the cached snapshot has no vocab.txt or tokenizer.json" in r.stderr
    assert "offline" in r.stderr
    r = run("hf:someone/absent", "x", unreachable)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "not in the Hugging Face cache" in r.stderr and "could not be reached" in r.stderr


# --- Export -> import round trips ------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["nt_v1_500m", "nt_v2_50m", pytest.param("omnigenome_52m", marks=pytest.mark.slow), "dnabert2"],
)  # omnigenome_52m: the ESM code path nt_v1_500m takes, with an RNA vocabulary
def test_export_import_round_trip_is_exact_and_runs_in_pytorch(tmp_path, name):
    if name == "dnabert2":
        config = small_config("dnabert2")
        model = Dnabert2Reference(config, seed=1)
        src = save_dnabert2(model, config, tmp_path / "hf")
    else:
        config, files, _ = esm_case(name)
        model = esm_reference(config, seed=1)
        # NT v1 reads PyTorch's .bin format, the others safetensors.
        src = save_esm(model, config, files, tmp_path / "hf", torch_bin=name == "nt_v1_500m")
    interop.import_checkpoint(src, tmp_path / "w1")
    interop_main(["export", "--workdir", str(tmp_path / "w1"), "--out", str(tmp_path / "out")])
    interop_main(["import", str(tmp_path / "out"), "--workdir", str(tmp_path / "w2")])
    first = pretrained.load(tmp_path / "w1").params
    second = pretrained.load(tmp_path / "w2").params
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    tokenizer = pretrained.describe(tmp_path / "w1").tokenizer
    ids, mask = batch(tokenizer)
    got = ours(tmp_path / "w1", ids, mask)
    state = {
        k: torch.from_numpy(v)
        for k, v in load_file(str(tmp_path / "out" / "model.safetensors")).items()
    }
    if name == "nt_v1_500m":  # transformers has the architecture: load the export with it
        back = transformers.EsmForMaskedLM.from_pretrained(tmp_path / "out").eval()
        assert_parity(esm_outputs(back, ids, mask), got, mask)
        return
    if name == "dnabert2":
        back = Dnabert2Reference(config, seed=2)
        back.load_state_dict(state)
        assert_parity(back(ids, mask), got, mask)
        return
    back = esm_reference(config, seed=2)  # OmniGenome / NT v2: their own code's architecture
    state = {k.replace("OmniGenome.", "esm.", 1): v for k, v in state.items()}
    missing, unexpected = back.load_state_dict(state, strict=False)
    assert not [k for k in missing if "contact_head" not in k and "inv_freq" not in k]
    assert not unexpected
    assert_parity(esm_outputs(back, ids, mask), got, mask)


def test_unsupported_checkpoints_are_refused_by_name(tmp_path, capsys):
    config, files, _ = esm_case("nt_v2_50m")
    src = save_esm(esm_reference(config), config, files, tmp_path / "hf")
    (src / "config.json").write_text(
        json.dumps({**config, "position_embedding_type": "relative_key"})
    )
    with pytest.raises(SystemExit):
        interop_main(["import", str(src), "--workdir", str(tmp_path / "w")])
    assert "position_embedding_type='relative_key'" in capsys.readouterr().err
    (src / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(SystemExit):
        interop_main(["import", str(src), "--workdir", str(tmp_path / "w")])
    assert "model_type 'gpt2'" in capsys.readouterr().err
    assert not (tmp_path / "w" / "ckpt").exists() or not any((tmp_path / "w" / "ckpt").iterdir())
    os.remove(src / "vocab.txt")
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit):
        interop_main(["import", str(src), "--workdir", str(tmp_path / "w")])
    assert "no vocab.txt" in capsys.readouterr().err
