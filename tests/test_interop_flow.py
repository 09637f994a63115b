"""An imported public checkpoint through every evaluation mode, fine-tuning, continued
pretraining (`--config.train.init_from` with the flags the import prints) and export back to
its family's layout, for NT v1, OmniGenome and DNABERT-2 (small width, published configs).
Slow: CI runs it."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
from interop_refs import (  # noqa: E402
    Dnabert2Reference,
    batch,
    esm_reference,
    save_dnabert2,
    save_esm,
    small_config,
)

from gfm_jax.evaluate import pretrained  # noqa: E402
from gfm_jax.evaluate.__main__ import main as evaluate_main  # noqa: E402
from gfm_jax.interop.__main__ import main as interop_main  # noqa: E402
from gfm_jax.models.heads import MaskedLM  # noqa: E402

VCF = "builtin:saureus_RN4220_vs_NCTC8325.vcf.gz"
REF = "builtin:saureus_NCTC8325_NC_007795.fa.gz"
SPLICE = [
    "--config",
    "configs/tasks/splice.py",
    "--seeds",
    "0",
    "--config.task.train_rows=(0,128)",
    "--config.task.test_rows=(2000,2064)",
]


def checkpoint_dir(name: str, tmp_path):
    if name == "dnabert2":
        config = small_config("dnabert2")
        return save_dnabert2(Dnabert2Reference(config), config, tmp_path / "hf")
    files = {"nt_v1": "nt_v1", "omnigenome": "omnigenome"}[name]
    config = small_config(files)
    return save_esm(esm_reference(config), config, files, tmp_path / "hf")


def logits(workdir, ids, mask) -> np.ndarray:
    loaded = pretrained.load(workdir)
    model = MaskedLM(loaded.pretrained.model_config)
    return np.asarray(model.apply({"params": loaded.params}, ids, mask))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["nt_v1", "omnigenome", "dnabert2"])
def test_imported_model_evaluates_fine_tunes_trains_on_and_exports(
    tmp_path, monkeypatch, capsys, name
):
    from conftest import run_module

    src = checkpoint_dir(name, tmp_path)
    work = tmp_path / "imported"
    interop_main(["import", str(src), "--workdir", str(work)])
    flags = capsys.readouterr().out.splitlines()[-1].split()
    assert flags[:4] == ["train", "from", "it", "with:"]
    monkeypatch.setenv("GFM_JAX_MALLOC_DEFAULTS", "1")
    w = str(work)
    evaluate_main(["finetune", *SPLICE, "--workdir", w, "--config.finetune.epochs=1"])
    evaluate_main(["probe", *SPLICE, "--workdir", w])
    for mode in ("finetune", "probe"):
        run = json.loads(
            (work / "eval" / "splice" / f"splice_{mode}_pretrained_seed0.json").read_text()
        )
        assert run["checkpoint_step"] == 0 and 0.0 <= run["test"]["accuracy"] <= 1.0
    fa = tmp_path / "seqs.fa"
    fa.write_text(">a\nACGTTGCAACGTAGGCTTAACGGATCCA\n>b\nTTGACCGTANNACGTTAGC\n")
    evaluate_main(["embed", "--workdir", w, "--input", str(fa), "--out", str(tmp_path / "e.npy")])
    emb = np.load(tmp_path / "e.npy")
    assert emb.shape == (2, 64) and np.isfinite(emb).all()
    scores = tmp_path / "vep.tsv"
    evaluate_main(["vep", "--workdir", w, "--vcf", VCF, "--fasta", REF, "--out", str(scores)])
    assert len(scores.read_text().splitlines()) > 10
    perplexity = tmp_path / "p.json"
    lam = "builtin:lambda_phage_NC_001416.fa.gz"
    evaluate_main(["perplexity", "--workdir", w, "--fasta", lam, "--out", str(perplexity)])
    assert 0.0 < json.loads(perplexity.read_text())["loss"] < 20.0
    # Pretraining continues from the imported weights, with its own tokenizer.
    more = tmp_path / "more"
    r = run_module(
        "gfm_jax.train",
        "--config",
        "configs/pretrain/tiny.py",
        "--workdir",
        str(more),
        *flags[4:],
        "--config.train.num_steps=1",
        "--config.optim.warmup_steps=0",
        "--config.train.global_batch_size=8",
        "--config.data.window_len=120",
        "--config.train.eval_batches=1",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "parameters from" in r.stdout
    before, after = pretrained.load(work), pretrained.load(more)
    assert after.tokenizer.vocab == before.tokenizer.vocab
    saved = [m.pretrained.meta["config"]["model"] for m in (before, after)]
    keys = ("token_dropout", "norm_placement", "position", "tie_embeddings", "token_type_embed")
    assert [saved[0][k] for k in keys] == [saved[1][k] for k in keys]
    changed = [
        not np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(before.params), jax.tree.leaves(after.params), strict=True)
    ]
    assert any(changed)
    # Export in the family's layout (auto: the imported family) and back: the same model.
    interop_main(["export", "--workdir", str(more), "--out", str(tmp_path / "out")])
    interop_main(["import", str(tmp_path / "out"), "--workdir", str(tmp_path / "again")])
    ids, mask = batch(after.tokenizer)
    np.testing.assert_array_equal(logits(more, ids, mask), logits(tmp_path / "again", ids, mask))
    if name == "nt_v1":  # transformers has the architecture: the export runs there too
        back = transformers.EsmForMaskedLM.from_pretrained(tmp_path / "out").eval()
        with torch.no_grad():
            ref = back(input_ids=torch.tensor(ids).long(), attention_mask=torch.tensor(mask).long())
        assert np.abs(ref.logits.numpy() - logits(more, ids, mask))[mask].max() < 1e-4


@pytest.mark.slow
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
    interop_main(["export", "--workdir", str(tmp_path / "w"), "--out", str(tmp_path / "out")])
    back = transformers.EsmForMaskedLM.from_pretrained(tmp_path / "out").eval()
    ids, mask = batch(pretrained.describe(tmp_path / "w").tokenizer)
    with torch.no_grad():
        ref = back(input_ids=torch.tensor(ids).long(), attention_mask=torch.tensor(mask).long())
    assert np.abs(ref.logits.numpy() - logits(tmp_path / "w", ids, mask))[mask].max() < 1e-4
