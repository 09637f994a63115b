"""Evaluation: metrics, task readers and hygiene, and every `gfm_jax.evaluate` mode end to end on
a tiny checkpoint (params only: its optimizer state is deleted first)."""

import csv
import gzip
import json
import math
import shutil

import numpy as np
import pytest

from gfm_jax import command_line
from gfm_jax import config as config_lib
from gfm_jax.data import builtin, tasks
from gfm_jax.data.tokenizers import get_tokenizer
from gfm_jax.data.vcf import read_vcf
from gfm_jax.errors import UserError
from gfm_jax.evaluate import metrics, perplexity, pretrained, probe, results, vep
from gfm_jax.evaluate.__main__ import main

SPLICE = "configs/tasks/splice.py"
VCF = "builtin:saureus_RN4220_vs_NCTC8325.vcf.gz"
REF = "builtin:saureus_NCTC8325_NC_007795.fa.gz"
SMALL = [
    "--config.task.train_rows=(0,256)",
    "--config.task.test_rows=(2000,2128)",
    "--config.finetune.epochs=1",
]


def splice_rows(n: int) -> list[dict]:
    with open(builtin.DIRECTORY / "splice.csv", newline="") as f:
        return list(csv.DictReader(f))[:n]


def _gc_rows() -> list[dict]:
    """Splice rows of the two junction classes, a quarter as test, with their GC fraction."""
    rows = [r for r in splice_rows(400) if r["label"] in ("EI", "IE")]
    for i, r in enumerate(rows):
        r["split"] = "test" if i % 4 == 0 else "train"
        r["gc"] = f"{sum(b in 'GC' for b in r['sequence']) / len(r['sequence']):.4f}"
    return rows


def write_csv(path, rows, columns=("sequence", "label", "split")):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture
def cli(monkeypatch, capsys):
    """Runs `python -m gfm_jax.evaluate ARGS` in this process; returns stdout, or
    (exit code, stderr) when it exits with a user error."""
    monkeypatch.setenv("GFM_JAX_MALLOC_DEFAULTS", "1")  # leave pytest's allocator alone

    def run(*args, expect_error=False):
        capsys.readouterr()
        if expect_error:
            with pytest.raises(SystemExit) as e:
                main([str(a) for a in args])
            return e.value.code, capsys.readouterr().err
        main([str(a) for a in args])
        return capsys.readouterr().out

    return run


def on_splice(cli, mode, ckpt, out, *args):
    """`MODE --config configs/tasks/splice.py --workdir CKPT --out OUT ARGS...`"""
    return cli(mode, "--config", SPLICE, "--workdir", ckpt, "--out", out, *args)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, micro_checkpoint):
    """The shared micro checkpoint (params only: every mode must read params only), copied:
    these tests write their runs into it."""
    return shutil.copytree(micro_checkpoint, tmp_path_factory.mktemp("evaluate") / "w")


# --- Metrics -----------------------------------------------------------------------------------


def test_mcc_matches_the_binary_formula_and_edge_cases():
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 0])
    preds = np.array([0, 1, 0, 1, 1, 0, 1, 0])
    tp, tn, fp, fn = 3, 3, 1, 1
    expect = (tp * tn - fp * fn) / np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert metrics.mcc(labels, preds) == pytest.approx(expect)
    three = np.array([0, 1, 2, 2, 1, 0])
    assert metrics.mcc(three, three) == pytest.approx(1.0)
    assert metrics.mcc(three, np.zeros_like(three)) == 0.0
    assert metrics.mcc(np.zeros(4, int), np.zeros(4, int)) == 0.0  # one class: undefined
    assert metrics.accuracy(labels, preds) == 0.75
    assert metrics.macro_f1(three, three, 3) == pytest.approx(1.0)
    # Predicting [0, 0, 2, 2, 1, 2], per class (precision, recall): 0 (1/2, 1/2), 1 (1, 1/2),
    # 2 (2/3, 1); class 3 never occurs and scores 0 in the mean over all four.
    f1 = [2 * p * r / (p + r) for p, r in ((1 / 2, 1 / 2), (1, 1 / 2), (2 / 3, 1))] + [0.0]
    assert metrics.macro_f1(three, np.array([0, 0, 2, 2, 1, 2]), 4) == pytest.approx(np.mean(f1))


def test_regression_metrics_match_hand_computed_values():
    y, y_hat = np.array([1.0, 2.0, 4.0, 5.0]), np.array([1.5, 2.0, 3.0, 6.0])
    m = metrics.regression(y, y_hat)
    # errors 0.5, 0, -1, 1: mse 2.25 / 4, mae 2.5 / 4; y's mean 3, total sum of squares 10.
    assert m["mse"] == pytest.approx(0.5625) and m["mae"] == pytest.approx(0.625)
    assert m["r2"] == pytest.approx(1 - 2.25 / 10)
    dy, dh = y - y.mean(), y_hat - y_hat.mean()
    assert m["pearson"] == pytest.approx((dy @ dh) / np.sqrt((dy @ dy) * (dh @ dh)))
    assert m["spearman"] == pytest.approx(1.0)  # same order
    assert tuple(m) == metrics.names("regression") and set(m) <= set(metrics.DIRECTIONS)
    # A constant prediction has no correlation (0), where SciPy would give nan.
    assert metrics.pearson(y, np.ones(4)) == 0.0 and metrics.spearman(y, np.ones(4)) == 0.0


def test_auroc_equals_the_pair_count_and_correlations_handle_ties():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 200)
    scores = np.round(rng.normal(size=(200, 3)) + np.eye(3)[labels], 1)  # rounding makes ties
    for c in range(3):
        pos, neg = scores[labels == c, c], scores[labels != c, c]
        pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
        assert metrics.auroc_binary(labels == c, scores[:, c]) == pytest.approx(pairs)
    assert metrics.auroc_ovr(labels, scores) == pytest.approx(
        np.mean([metrics.auroc_binary(labels == c, scores[:, c]) for c in range(3)])
    )
    assert metrics.spearman([1, 2, 3, 4], [10, 20, 20, 40]) == pytest.approx(0.9486833, abs=1e-6)
    assert metrics.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert metrics.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    m = metrics.classification(labels, scores)
    assert set(m) == {"accuracy", "mcc", "macro_f1", "auroc"} and 0.5 < m["auroc"] <= 1.0
    # A class absent from the labels is left out of the mean (sklearn's multiclass form refuses).
    two = labels != 2
    assert metrics.auroc_ovr(labels[two], scores[two]) == pytest.approx(
        np.mean([metrics.auroc_binary(labels[two] == c, scores[two, c]) for c in range(2)])
    )


def test_selection_follows_the_metric_direction():
    assert set(metrics.DIRECTIONS) == set(metrics.CLASSIFICATION) | set(metrics.REGRESSION)
    mse = [2.59, 0.87, 2.0]
    assert metrics.best_index("mse", mse) == 1 and metrics.best_index("spearman", mse) == 0
    assert metrics.best_index("mae", [1.0, 0.5, 0.5]) == 1  # ties keep the earlier
    # A non-finite value is the worst in either direction.
    assert metrics.best_index("mse", [np.nan, 3.0]) == 1
    assert metrics.best_index("auroc", [np.nan, 0.4]) == 1
    assert metrics.best_index("accuracy", [np.nan, np.nan]) == 0
    assert metrics.select_metric("regression", "") == "spearman"
    assert metrics.select_metric("token_classification", "") == "accuracy"
    with pytest.raises(UserError, match=r"select_metric='mse' for a classification task: choose"):
        metrics.select_metric("classification", "mse")


def test_regression_finetune_keeps_the_epoch_with_the_lowest_validation_mse(tmp_path):
    from gfm_jax.evaluate import finetune

    path = write_csv(tmp_path / "gc.csv", _gc_rows(), ("sequence", "label", "split", "gc"))
    config = command_line.load_config(
        SPLICE,
        [
            f"--config.task.path={path}",
            "--config.task.test_rows=()",
            "--config.task.train_rows=()",
            "--config.task.kind=regression",
            "--config.task.label_column=gc",
            "--config.cnn.pooling=meanmax",
            "--config.finetune.epochs=3",
            "--config.finetune.select_metric=mse",
        ],
    )
    run = finetune.finetune(config, str(tmp_path), "cnn", 0)
    mse = [h["val_mse"] for h in run["history"]]
    assert np.argmin(mse) != np.argmax(mse)  # the history tells the two directions apart
    assert run["best_epoch"] == 1 + int(np.argmin(mse)) and run["select_metric"] == "mse"
    assert run["val"]["val_mse"] == min(mse) and set(run["test"]) == set(metrics.REGRESSION)


def test_an_unknown_select_metric_is_a_one_line_error(cli, tmp_path):
    code, err = cli(
        "finetune", "--config", SPLICE, "--workdir", tmp_path, "--model", "cnn",
        "--config.finetune.select_metric=loss", expect_error=True,
    )  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "finetune.select_metric='loss'" in err and "'accuracy', 'mcc'" in err


# --- Tasks: readers, hygiene, splits ------------------------------------------------------------


def test_splice_statlog_split_removes_duplicates_and_leakage_and_fixes_validation():
    config = command_line.load_config(SPLICE)
    task = tasks.load_task(config.task)
    assert task.label_names == ("EI", "IE", "N")
    train = set(task.train.sequences)
    assert len(train) == len(task.train)  # no duplicate left in train
    assert not (train | set(task.val.sequences)) & set(task.test.sequences)
    assert not train & set(task.val.sequences)
    notes = " ".join(task.notes)
    assert "duplicate training rows" in notes and "test rows" in notes
    assert len(task.train) + len(task.val) < 2000 and 0 < 1186 - len(task.test) < 200
    # The validation rows depend on task.split_seed only, never on a training seed.
    again = tasks.load_task(command_line.load_config(SPLICE).task)
    assert again.val.sequences == task.val.sequences
    other = command_line.load_config(SPLICE, ["--config.task.split_seed=1"])
    assert tasks.load_task(other.task).val.sequences != task.val.sequences
    enc = tasks.encode_split(get_tokenizer("char"), task.test, task.path)
    assert enc["ids"].shape == (len(task.test), 61) and enc["mask"].all()  # CLS + 60 nt
    assert (enc["ids"][:, 0] == get_tokenizer("char").cls_id).all()


def _layouts(tmp_path, rows):
    """The first rows of splice.csv written in every directory layout the suites read."""
    splits = {"train": rows[:200], "dev": rows[200:240], "test": rows[240:]}
    csv_dir = tmp_path / "csv_dir"
    csv_dir.mkdir()
    for name, part in splits.items():
        write_csv(csv_dir / f"{name}.csv", part, ("sequence", "label"))
    fasta_dir = tmp_path / "fasta_dir"
    fasta_dir.mkdir()
    for name, part in (("train", rows[:240]), ("test", rows[240:])):
        text = "".join(f">row{i}|{r['label']}\n{r['sequence']}\n" for i, r in enumerate(part))
        (fasta_dir / f"{name}.fna").write_text(text)
    class_dirs = tmp_path / "class_dirs"
    for name, part in (("train", rows[:240]), ("test", rows[240:])):
        for i, r in enumerate(part):
            d = class_dirs / name / r["label"]
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{i}.txt").write_text(r["sequence"])
    return {"csv_dir": csv_dir, "fasta_dir": fasta_dir, "class_dirs": class_dirs}


def test_every_directory_layout_reads_the_same_examples(tmp_path):
    rows = splice_rows(300)
    reference = {(r["sequence"], r["label"]) for r in rows}
    for fmt, path in _layouts(tmp_path, rows).items():
        config = config_lib.finetune_defaults()
        config.task.format, config.task.path, config.task.test_rows = fmt, str(path), ()
        task = tasks.load_task(config.task)
        got = {
            (seq, task.label_names[label])
            for split in (task.train, task.val, task.test)
            for seq, label in zip(split.sequences, split.labels, strict=True)
        }
        assert got <= reference and len(got) >= 280, fmt  # only duplicates removed
        test_seqs = {r["sequence"] for r in rows[240:]} - {r["sequence"] for r in rows[:240]}
        assert set(task.test.sequences) == test_seqs, fmt
        if fmt == "csv_dir":  # dev.csv is the validation split, not drawn from train
            assert set(task.val.sequences) <= {r["sequence"] for r in rows[200:240]}


def test_tfds_format_reads_the_prepared_builder(tmp_path):
    csv_task = tasks.load_task(command_line.load_config(SPLICE).task)
    config = config_lib.finetune_defaults()
    config.task.format, config.task.path = "tfds", "gfm_task/splice"
    config.task.tfds_data_dir = str(tmp_path)
    tfds_task = tasks.load_task(config.task)
    assert tfds_task.label_names == csv_task.label_names
    for a, b in (
        (tfds_task.train, csv_task.train),
        (tfds_task.val, csv_task.val),
        (tfds_task.test, csv_task.test),
    ):
        assert a.sequences == b.sequences
        np.testing.assert_array_equal(a.labels, b.labels)


@pytest.mark.parametrize(
    "content, overrides, message",
    [
        ("sequence,target\nACGT,EI\n", [], "no column 'label'"),
        ("", [], "is empty"),
        ("sequence,label\n", [], "no rows"),
        (
            "sequence,label,split\nACGT,1.5,train\nACGT,x,test\n",
            ["--config.task.kind=regression"],
            "not a number",
        ),
        (
            "sequence,label,split\nACGT,EEI,train\nACGT,EEII,test\n",
            ["--config.task.kind=token_classification"],
            "one ASCII letter per base",
        ),
        (
            "sequence,label,split\nACGT,EI,train\nACGT,IE,holdout\n",
            [],
            "task.csv:3: split 'holdout'",
        ),
        # Lines as an editor numbers them (the header is line 1), a quoted field spanning two.
        (
            'sequence,label,split\n"AC\nGT",EI,train\nAC,,test\nGG,IE,test\n',
            [],
            r"task.csv:4: the label is empty",
        ),
        (
            'sequence,label,split\nACGT,EI,train\n"ACGT,IE,test\nGGCC,EI,test\n',
            [],
            "task.csv:3: .*quote",
        ),
    ],
)
def test_bad_task_files(tmp_path, content, overrides, message):
    path = tmp_path / "task.csv"
    path.write_text(content)
    config = command_line.load_config(
        SPLICE, [f"--config.task.path={path}", "--config.task.test_rows=()", *overrides]
    )
    with pytest.raises(UserError, match=message):
        tasks.load_task(config.task)


# --- The CLI, one test per mode --------------------------------------------------------------


@pytest.mark.slow  # long end to end: in the slow set CI runs
def test_finetune_cli_models_seeds_summary_and_report(ckpt, cli):
    # scratch is the pretrained path without the restore; the slow tests cover it.
    for model, seeds in (("pretrained", "0"), ("cnn", "0,1")):
        out = cli(
            "finetune",
            "--config",
            SPLICE,
            "--workdir",
            ckpt,
            "--model",
            model,
            "--seeds",
            seeds,
            *SMALL,
        )
        assert f"| splice | finetune | {model} |" in out
    eval_dir = ckpt / "eval" / "splice"
    runs = results.load_runs([eval_dir])
    assert sorted((r["model"], r["seed"]) for r in runs) == [
        ("cnn", 0),
        ("cnn", 1),
        ("pretrained", 0),
    ]
    for r in runs:
        assert 0.0 <= r["test"]["accuracy"] <= 1.0 and -1.0 <= r["test"]["mcc"] <= 1.0
        assert 0.0 <= r["test"]["auroc"] <= 1.0 and r["best_epoch"] == 1
        assert r["sizes"]["test"] < 128 or r["sizes"]["test"] == 128
        assert r["checkpoint_step"] == (None if r["model"] == "cnn" else 2)
    cnn = {r["seed"]: r["test"]["accuracy"] for r in runs if r["model"] == "cnn"}
    (row,) = [r for r in json.loads((eval_dir / "summary.json").read_text()) if r["model"] == "cnn"]
    assert row["accuracy"]["mean"] == pytest.approx(np.mean(list(cnn.values())))
    assert row["accuracy"]["sd"] == pytest.approx(np.std(list(cnn.values()), ddof=1))
    assert (eval_dir / "summary.png").read_bytes()[:4] == b"\x89PNG"
    assert "cnn" in (eval_dir / "summary.csv").read_text()
    extra = ckpt / "eval" / "splice" / "splice_finetune_cnn_seed1.json"
    table = cli("aggregate", eval_dir, extra, "--out", ckpt / "agg")
    assert (
        "| splice | finetune | cnn |  | 2 |" in table and (ckpt / "agg" / "summary.png").is_file()
    )
    report = cli("report", "--workdir", ckpt)
    rows = {line.split("|")[1].strip(): line for line in report.splitlines() if line[:2] == "| "}
    assert "not run" not in rows["encoder, pretrained (step 2)"]
    assert "not run" not in rows["CNN baseline (no pretraining)"]
    assert "not run" in rows["encoder, random init (step 0)"]  # no scratch run in this test


def test_frozen_backbone_optimizer_updates_the_head_only():
    import jax
    import optax

    from gfm_jax.evaluate.finetune import _train_only
    from gfm_jax.evaluate.finetuned import trainable_fn

    params = {
        "encoder": {"w": np.ones((2, 2), np.float32)},
        "head": {"w": np.ones((2, 2), np.float32)},
    }
    tx = _train_only(optax.adamw(0.1, weight_decay=0.5), trainable_fn("frozen"))
    grads = jax.tree.map(np.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_array_equal(new["encoder"]["w"], params["encoder"]["w"])
    assert not np.allclose(new["head"]["w"], params["head"]["w"])


@pytest.mark.slow
def test_regression_token_classification_and_frozen_backbone(ckpt, cli, tmp_path):
    rows = [r for r in splice_rows(400) if r["label"] in ("EI", "IE")]
    for i, r in enumerate(rows):
        r["split"] = "test" if i % 4 == 0 else "train"
        r["gc"] = f"{sum(b in 'GC' for b in r['sequence']) / len(r['sequence']):.4f}"
        # Per base: exon (E) / intron (I) on either side of the junction between bases 30 and 31.
        r["region"] = "E" * 30 + "I" * 30 if r["label"] == "EI" else "I" * 30 + "E" * 30
    path = write_csv(tmp_path / "derived.csv", rows, ("sequence", "label", "split", "gc", "region"))
    base = [
        f"--config.task.path={path}",
        "--config.task.test_rows=()",
        "--config.finetune.epochs=1",
        "--seeds",
        "0",
    ]
    on_splice(
        cli,
        "finetune",
        ckpt,
        tmp_path / "reg",
        "--model",
        "cnn",
        *base,
        "--config.task.kind=regression",
        "--config.task.label_column=gc",
        "--config.cnn.pooling=meanmax",
    )
    on_splice(
        cli,
        "probe",
        ckpt,
        tmp_path / "reg",
        *base,
        "--config.task.kind=regression",
        "--config.task.label_column=gc",
    )
    for run in results.load_runs([tmp_path / "reg"]):
        assert set(run["test"]) == set(metrics.REGRESSION) and run["select_metric"] == "spearman"
        assert math.isfinite(run["test"]["mse"])
    on_splice(
        cli,
        "finetune",
        ckpt,
        tmp_path / "tok",
        *base,
        "--config.task.kind=token_classification",
        "--config.task.label_column=region",
    )
    (run,) = results.load_runs([tmp_path / "tok"])
    assert run["label_names"] == ["E", "I"] and 0.0 <= run["test"]["accuracy"] <= 1.0
    # A frozen backbone goes through the sharded state (optax masks the encoder's moments).
    on_splice(
        cli,
        "finetune",
        ckpt,
        tmp_path / "frozen",
        "--seeds",
        "0",
        *SMALL,
        "--config.finetune.freeze_backbone=True",
    )
    (run,) = results.load_runs([tmp_path / "frozen"])
    assert run["frozen_backbone"] is True and run["model"] == "pretrained_frozen"


def test_probe_cli_and_its_solvers(ckpt, cli, tmp_path):
    out = cli(
        "probe", "--config", SPLICE, "--workdir", ckpt, "--seeds", "0", "--out", tmp_path, *SMALL
    )
    assert "| splice | probe | pretrained |" in out
    (run,) = results.load_runs([tmp_path])
    assert (
        run["embedding_dim"] == 32
        and len(run["sweep"]) == 5
        and run["l2"] in (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
    )
    # Even a two-step encoder's embeddings rank the classes better than chance.
    assert run["test"]["auroc"] > 0.55
    # Two layers side by side: the embeddings (each base alone) and the output.
    two = tmp_path / "layers"
    cli("probe", "--config", SPLICE, "--workdir", ckpt, "--seeds", "0", "--out", two, *SMALL,
        "--config.probe.layers=0,-1")  # fmt: skip
    (run,) = results.load_runs([two])
    top = pretrained.describe(ckpt).model_config.num_layers
    assert run["embedding_dim"] == 64 and run["layers"] == [0, top]
    assert run["model"] == f"pretrained_layers0,{top}"
    # ... and per position (flatten): 60 bases x 2 layers x 32.
    flat = tmp_path / "flat"
    cli("probe", "--config", SPLICE, "--workdir", ckpt, "--seeds", "0", "--out", flat, *SMALL,
        "--config.probe.layers=0,-1", "--config.finetune.pooling=flatten")  # fmt: skip
    (run,) = results.load_runs([flat])
    assert run["embedding_dim"] == 60 * 2 * 32 and run["test"]["accuracy"] > 0.7
    code, err = cli("probe", "--config", SPLICE, "--workdir", ckpt, "--out", two, *SMALL,
                    "--config.probe.layers=9", expect_error=True)  # fmt: skip
    assert code == 2 and f"layers 0 (embeddings) .. {top}" in err


def _one_hot_bases(sequences: list[str]) -> np.ndarray:
    return np.stack([np.array(list(s))[:, None] == np.array(list("ACGT")) for s in sequences])


def test_probe_solvers_on_splice_bases_and_their_l2_scale():
    # Logistic regression on one-hot bases of the splice task: far above the majority class.
    task = tasks.load_task(command_line.load_config(SPLICE).task)
    x = {k: _one_hot_bases(getattr(task, k).sequences).reshape(-1, 240) for k in ("train", "test")}
    y = {"train": task.train.labels, "test": task.test.labels}
    w, b = probe.fit_logistic(x["train"], y["train"], 3, 1e-3, 500)
    majority = np.bincount(y["test"]).max() / len(y["test"])
    test = metrics.classification(y["test"], x["test"] @ w + b)
    assert majority < 0.6 and test["accuracy"] > 0.9 and w.shape == (240, 3)
    # l2 means: minimise mean cross-entropy + l2 * |W|^2 (bias free), whatever the class count;
    # the gradient of that objective vanishes at the solution (two classes, and three of which
    # one is absent from the training rows and never predicted).
    import jax
    import optax

    rng = np.random.default_rng(0)
    for y2, classes in ((rng.integers(0, 2, 300), 2), (rng.integers(0, 2, 300) * 2, 3)):
        x2 = rng.normal(size=(300, 4)) + np.eye(4)[y2]
        w, b = probe.fit_logistic(x2, y2, classes, 0.05, 1000)
        present = np.unique(y2)

        def objective(wb, x2=x2, y2=y2, present=present):
            logits = x2 @ wb[0] + wb[1]
            ce = optax.softmax_cross_entropy_with_integer_labels(
                logits, np.searchsorted(present, y2)
            )
            return ce.mean() + 0.05 * (wb[0] ** 2).sum()

        grads = jax.grad(objective)((w[:, present], b[present]))
        assert max(float(np.abs(g).max()) for g in grads) < 1e-3
        assert np.isneginf(b).sum() == classes - len(present)
    # Ridge recovers a linear map; l2 is per example (sklearn's alpha = l2 * N).
    y = rng.integers(0, 3, 300)
    x = rng.normal(size=(300, 4)) * 0.3 + np.eye(4)[y] * 3.0
    true_w = np.array([1.5, -2.0, 0.5, 0.0])
    w, b = probe.fit_ridge(x, x @ true_w + 0.7, 1e-8)
    np.testing.assert_allclose(w[:, 0], true_w, atol=1e-5)
    assert b[0] == pytest.approx(0.7, abs=1e-5)
    xc = x - x.mean(axis=0)
    w, _ = probe.fit_ridge(x, x @ true_w, 0.1)
    np.testing.assert_allclose(xc.T @ xc @ w[:, 0] + 0.1 * 300 * w[:, 0], xc.T @ (x @ true_w))


def test_embed_cli_fasta_windows_and_csv_rows(ckpt, cli, tmp_path):
    out = tmp_path / "emb.npy"
    cli("embed", "--workdir", ckpt, "--input", "builtin:lambda_phage_NC_001416.fa.gz", "--out", out)
    emb = np.load(out)
    assert emb.shape == (-(-48502 // 64), 32) and np.isfinite(emb).all()
    index = out.with_suffix(".tsv").read_text().splitlines()
    assert len(index) == 1 + len(emb) and index[-1].endswith("\t54")  # 48502 = 757 * 64 + 54
    # Padding and batching do not change an embedding: the short last window alone.
    from gfm_jax.evaluate import embed, pretrained

    loaded = pretrained.load(ckpt)
    text = embed.read_inputs("builtin:lambda_phage_NC_001416.fa.gz", 64)[0]
    alone = embed.embed_sequences(loaded, [text[-1]], ["last"])
    np.testing.assert_allclose(alone[0], emb[-1], atol=1e-5)
    csv_out = tmp_path / "rows.npy"
    cli(
        "embed",
        "--workdir",
        ckpt,
        "--input",
        "builtin:splice.csv",
        "--out",
        csv_out,
        "--pooling",
        "cls",
    )
    assert np.load(csv_out).shape == (3186, 32)


def test_embed_warns_about_inputs_that_are_mostly_n(ckpt, tmp_path, capsys):
    from gfm_jax.evaluate import embed

    fasta = tmp_path / "n.fa"
    fasta.write_text(">n\n" + "N" * 60 + "ACGT\n>s\n" + "ACGTTGCA" * 8 + "\n")
    result = embed.run(str(ckpt), str(fasta), str(tmp_path / "e.npy"), "mean", 0, "sequence")
    assert result["mostly_n"] == 1 and result["shape"] == [2, 32]
    assert "1 of 2 inputs are more than half N (first: n:0-64)" in capsys.readouterr().err


def test_vep_scores_every_snv_of_the_saureus_vcf(ckpt, cli, tmp_path):
    out = tmp_path / "scores.tsv"
    stdout = cli("vep", "--workdir", ckpt, "--vcf", VCF, "--fasta", REF, "--out", out)
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    variants, _ = read_vcf(builtin.DIRECTORY / VCF.removeprefix("builtin:"))
    snvs = {(v.pos, v.alt) for v in variants if v.kind == "snv"}
    assert len(snvs) == 77
    scored_snvs = {(int(r["pos"]), r["alt"]) for r in rows if r["kind"] == "snv"}
    assert scored_snvs == snvs
    for r in rows:
        if r["kind"] == "snv":
            fwd, rev, mean = float(r["llr_forward"]), float(r["llr_reverse"]), float(r["llr"])
            assert math.isfinite(mean) and mean == pytest.approx((fwd + rev) / 2, abs=1e-5)
        assert float(r["embed_l2"]) >= 0.0
    long = [v for v in variants if max(len(v.ref), len(v.alt)) > 64]  # the micro window
    skipped = (tmp_path / "scores.tsv.skipped.tsv").read_text().splitlines()[1:]
    assert len(skipped) == len(long) >= 5 and len(rows) + len(long) == len(variants)
    assert all("longer than the 64-base window" in line for line in skipped)
    assert stdout.count("skipped NC_007795:") == len(long)


def test_llr_sign_rule_and_strand_average_on_a_constructed_case():
    """A model that only knows base composition (A 70%, C G T 10% each) scores C>A on the
    forward strand as log 7 and, on the reverse strand (G>T), as 0: the mean is log(7) / 2."""
    char = get_tokenizer("char")
    prefs = {"A": 0.7, "C": 0.1, "G": 0.1, "T": 0.1}

    def composition_model(tokenizer, items):
        logp = np.full(tokenizer.vocab_size, -30.0)
        for token_id, text in enumerate(tokenizer.vocab):
            if len(text) and set(text) <= set(prefs):
                logp[token_id] = sum(math.log(prefs[b]) for b in text)
        return [np.tile(logp, (len(it.positions), 1)) for it in items]

    def llrs(tok, ref, alt):
        return vep.strand_llrs(tok, lambda items: composition_model(tok, items), ref, alt)

    fwd, rev, mean = llrs(char, "GGGCGGG", "GGGAGGG")
    assert fwd == pytest.approx(math.log(7)) and rev == pytest.approx(0.0)
    assert mean == pytest.approx(math.log(7) / 2)
    assert llrs(char, "GGGAGGG", "GGGCGGG")[2] == pytest.approx(-math.log(7) / 2)  # the sign flips
    # NT 6-mers: the SNV sits inside one 6-mer; that token alone is masked and compared.
    nt6 = get_tokenizer("nt6")
    item = vep.masked_item(nt6, "GGGGGGGGCGGGGGGGGG", "GGGGGGGGAGGGGGGGGG")
    assert list(item.positions) == [2] and item.ids[2] == nt6.mask_id and item.coverage == 1
    assert nt6.vocab[item.ref_tokens[0]] == "GGCGGG" and nt6.vocab[item.alt_tokens[0]] == "GGAGGG"
    assert llrs(nt6, "GGGGGGGGCGGGGGGGGG", "GGGGGGGGAGGGGGGGGG")[0] == pytest.approx(math.log(7))
    # Overlapping 3-mers: the k tokens covering the base are masked; dividing by k keeps one
    # base change on the same scale.
    kmer3 = get_tokenizer("kmer3")
    item = vep.masked_item(kmer3, "GGGCGGG", "GGGAGGG")
    assert len(item.positions) == 3 and item.coverage == 3
    assert llrs(kmer3, "GGGCGGG", "GGGAGGG")[0] == pytest.approx(math.log(7))
    # An indel gets no LLR (nan), never a misaligned one: with 6-mers an insertion can keep the
    # token count while changing every later token.
    assert math.isnan(llrs(char, "GGGCGGG", "GGGGGG")[0])
    ref, alt = "ACGTACGTACGTA" + "CCCC", "ACGTACGTACGTA" + "TTTTT" + "CCCC"
    assert vep.masked_item(nt6, ref, ref[:12] + "TTTTT" + ref[12:]) is None
    assert math.isnan(llrs(nt6, ref, alt)[0])


def test_perplexity_cli(ckpt, cli, tmp_path):
    out = tmp_path / "p.json"
    cli(
        "perplexity",
        "--workdir",
        ckpt,
        "--fasta",
        "builtin:lambda_phage_NC_001416.fa.gz",
        "--out",
        out,
    )
    r = json.loads(out.read_text())
    assert r["windows"] == 48502 // 64 and r["tail_bases"] == 48502 % 64
    assert 0.05 < r["masked_tokens"] / (r["windows"] * 64) < 0.25  # 15% masking
    assert r["bits_per_base"] == pytest.approx(r["loss"] / math.log(2))
    assert 0.0 < r["loss"] < 3.0 and 0.0 <= r["accuracy"] <= 1.0 and r["checkpoint_step"] == 2


def test_perplexity_names_n_as_the_reason_for_no_window(tmp_path):
    from gfm_jax.evaluate.perplexity import tile_windows

    all_n, short = tmp_path / "all_n.fa", tmp_path / "short.fa"
    all_n.write_text(">gap\n" + "N" * 20_000 + "\n")
    short.write_text(">s\nACGT\n")
    with pytest.raises(UserError, match="all 156 full 128-base windows have more than 10% N"):
        tile_windows([str(all_n)], 128, 0.1)
    with pytest.raises(UserError, match="no full 128-base window to score; give longer records"):
        tile_windows([str(short)], 128, 0.1)


@pytest.mark.slow
def test_suite_runs_every_task_of_a_local_layout(ckpt, cli, tmp_path):
    rows = splice_rows(300)
    for task in ("EMP/H3", "mouse/0"):
        (tmp_path / "GUE" / task).mkdir(parents=True)
        layout = _layouts(tmp_path / "GUE" / task, rows)["csv_dir"]
        for f in layout.iterdir():
            f.rename(tmp_path / "GUE" / task / f.name)
    out = cli(
        "suite",
        "--config",
        "configs/suites/gue.py",
        "--workdir",
        ckpt,
        "--models",
        "cnn",
        "--seeds",
        "0",
        "--out",
        tmp_path / "out",
        f"--config.suite.root={tmp_path / 'GUE'}",
        "--config.suite.only=('EMP/H3','mouse/0')",
        "--config.finetune.epochs=1",
    )
    assert "| EMP_H3 | finetune | cnn |" in out and "| mouse_0 | finetune | cnn |" in out
    assert (tmp_path / "out" / "summary.png").is_file()
    code, err = cli(
        "suite",
        "--config",
        "configs/suites/gue.py",
        "--workdir",
        ckpt,
        f"--config.suite.root={tmp_path / 'GUE'}",
        expect_error=True,
    )
    assert code == 2 and "26 task folders missing" in err and "suite.only" in err


@pytest.mark.parametrize(
    "content, args, message",
    [
        (
            "sequence,target,split\nACGT,EI,train\nACGA,IE,train\nACGT,N,test\n",
            [],
            "no column 'label'",
        ),
        ("", [], "is empty"),
        (
            "sequence,label,split\nACGT,EI,train\nACXT,IE,train\nAAAA,EI,test\n",
            ["--config.task.val_fraction=0.4"],
            "ACXT",
        ),
    ],
)
def test_bad_inputs_fail_with_one_clear_line(ckpt, cli, tmp_path, content, args, message):
    path = tmp_path / "t.csv"
    path.write_text(content)
    code, err = cli(
        "finetune",
        "--config",
        SPLICE,
        "--workdir",
        ckpt,
        f"--config.task.path={path}",
        "--config.task.test_rows=()",
        *args,
        expect_error=True,
    )
    assert code == 2 and message in err and "Traceback" not in err


def test_vep_refuses_a_vcf_of_another_reference(ckpt, cli, tmp_path):
    def refuse(vcf):
        out = tmp_path / "s.tsv"
        return cli(
            "vep", "--workdir", ckpt, "--vcf", vcf, "--fasta", REF, "--out", out, expect_error=True
        )

    vcf = tmp_path / "v.vcf"
    vcf.write_text("##fileformat=VCFv4.1\n#CHROM\tPOS\tID\tREF\tALT\nchrZ\t10\t.\tA\tG\n")
    code, err = refuse(vcf)
    assert code == 2 and "CHROM ['chrZ'] not in" in err and "NC_007795" in err
    with gzip.open(builtin.DIRECTORY / VCF.removeprefix("builtin:"), "rt") as f:
        first = next(line for line in f if not line.startswith("#")).split("\t")
    wrong = {"A": "C", "C": "G", "G": "T", "T": "A"}[first[3]]
    vcf.write_text(f"#CHROM\tPOS\tID\tREF\tALT\n{first[0]}\t{first[1]}\t.\t{wrong}\t{first[3]}\n")
    code, err = refuse(vcf)
    assert code == 2 and "1 REF alleles do not match" in err and f"{first[0]}:{first[1]}" in err
    assert not (tmp_path / "s.tsv").exists()  # nothing half-written


@pytest.mark.slow  # long end to end: in the slow set CI runs
def test_perplexity_and_embed_run_on_the_sequence_axis_and_with_rope_scaling(ckpt, tmp_path):
    """A window sharded over 8 devices scores and embeds as on one; context extension is a
    run option."""
    from gfm_jax.evaluate import embed

    fasta = ["builtin:lambda_phage_NC_001416.fa.gz"]
    runs = [
        embed.run(str(ckpt), fasta[0], str(tmp_path / f"{i}.npy"), "mean", 4000, mesh_shape=shape)
        for i, shape in enumerate([(-1, 1, 1, 1), (1, 1, 1, 8)])
    ]
    a, b = (np.load(r["embeddings"]) for r in runs)
    assert a.shape == b.shape and a.shape[0] >= 7
    np.testing.assert_allclose(a, b, atol=1e-5)
    one = perplexity.run(str(ckpt), fasta, window=4000)
    eight = perplexity.run(str(ckpt), fasta, window=4000, mesh_shape=(1, 1, 1, 8))
    assert one["windows"] == eight["windows"] > 5 and one["window_bases"] == 4000
    assert abs(one["loss"] - eight["loss"]) < 1e-5
    extended = perplexity.run(
        str(ckpt), fasta, window=4000, model_overrides={"rope_scaling": "ntk", "rope_factor": 4.0}
    )
    assert extended["loss"] != one["loss"]
