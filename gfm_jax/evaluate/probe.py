"""Linear probe: a linear model on frozen encoder embeddings.

Embeddings are pooled encoder states (`finetune.pooling`: cls, mean, max or flatten; with
`finetune.strand=both` the mean of each sequence's and its reverse complement's) of the layers
`probe.layers` names, concatenated (default: the output; "0" is the embeddings, each base
without context), standardised with the training rows' mean and sd. Classification fits
multinomial logistic regression by L-BFGS, regression fits ridge regression in closed form (both
scikit-learn); each L2 strength in `probe.l2` is fitted on train and the best on validation (by
the select metric, in its direction) is tested once. The sweep is ours, not LogisticRegressionCV /
RidgeCV: those cross-validate inside train and refit, where the probe selects on the task's
fixed validation rows and reports every strength's validation metrics.
`--model scratch` probes a randomly initialised encoder of the same shape (seeded): the floor
that the pretrained embeddings should clear.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, Ridge

from gfm_jax.data import tasks
from gfm_jax.errors import UserError
from gfm_jax.evaluate import embed, metrics, pretrained
from gfm_jax.models.heads import MaskedLM

MODELS = ("pretrained", "scratch")


def random_encoder(loaded: pretrained.Loaded, seed: int) -> pretrained.Loaded:
    """The same model with freshly initialised parameters (on the same shardings)."""
    mlm = MaskedLM(loaded.pretrained.model_config, loaded.mesh, loaded.rules)
    shardings = jax.tree.map(lambda x: x.sharding, loaded.params)
    init = jax.jit(
        lambda key: nn.meta.unbox(mlm.init(key, jnp.zeros((1, 8), jnp.int32))["params"]),
        out_shardings=shardings,
    )
    return dataclasses.replace(loaded, params=init(jax.random.key(seed)))


def fit_logistic(
    x_NxD: np.ndarray, y_N: np.ndarray, num_classes: int, l2: float, iterations: int
) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression by L-BFGS (scikit-learn); returns (W_DxC, b_C).

    Minimises mean cross-entropy + l2 * |W|^2 with the bias unpenalised. sklearn's objective
    is C * summed loss + |w|^2 / 2, hence C = 1 / (2 N l2); two classes it fits as one logit
    w, which is the softmax pair (-w/2, w/2) whose penalty is |w|^2 / 2 (so C = 1 / (N l2)).
    A class absent from the training rows gets logit -inf: never predicted."""
    y = np.asarray(y_N)
    present = np.unique(y)
    if len(present) < 2:
        raise UserError(
            f"probe: the training rows hold one class only ({present.tolist()}); "
            "a classifier needs at least two (check task.label_column and the split)"
        )
    n, binary = len(y), len(present) == 2
    model = LogisticRegression(
        C=1.0 / ((1 if binary else 2) * n * l2),
        solver="lbfgs",  # deterministic
        max_iter=iterations,
        random_state=0,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(np.asarray(x_NxD, np.float64), y)
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        print(
            f"probe: L-BFGS did not converge in probe.max_iterations={iterations} (l2 {l2:g}); "
            "raise it for this task",
            flush=True,
        )
    coef, intercept = model.coef_, model.intercept_
    if binary:
        coef, intercept = np.concatenate([-coef, coef]) / 2, np.r_[-intercept, intercept] / 2
    w = np.zeros((x_NxD.shape[1], num_classes))
    b = np.full(num_classes, -np.inf)
    w[:, model.classes_], b[model.classes_] = coef.T, intercept
    return w, b


def fit_ridge(x_NxD: np.ndarray, y_N: np.ndarray, l2: float) -> tuple[np.ndarray, np.ndarray]:
    """Ridge regression (scikit-learn, Cholesky) with an unpenalised intercept: minimises
    mean squared error + l2 * |w|^2, i.e. sklearn's alpha = l2 * N; returns (W_Dx1, b_1)."""
    model = Ridge(alpha=l2 * len(x_NxD), solver="cholesky", random_state=0)
    model.fit(np.asarray(x_NxD, np.float64), np.asarray(y_N, np.float64))
    return model.coef_[:, None], np.array([model.intercept_])


def flattened(tokens: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """[N, T, D] per-token states -> [N, T_max * D]: every position in order, zero-padded to the
    longest sequence of any split (the `flatten` pooling of fine-tuning)."""
    longest = max(v.shape[1] for v in tokens.values())
    return {
        k: np.pad(v, ((0, 0), (0, longest - v.shape[1]), (0, 0))).reshape(len(v), -1)
        for k, v in tokens.items()
    }


def chosen_layers(spec: str, num_layers: int) -> tuple[int, ...]:
    """`probe.layers` as indices 0 (the embeddings) .. num_layers (the output)."""
    try:
        return embed.layer_indices(str(spec), num_layers)[0]
    except UserError as e:
        raise UserError(f"probe.{e}") from None


def probe(
    config: ml_collections.ConfigDict, workdir: str, model_name: str = "pretrained", seed: int = 0
) -> dict[str, Any]:
    if model_name not in MODELS:
        raise UserError(f"probe --model={model_name!r}: choose one of {MODELS}")
    if not config.probe.l2 or any(float(l2) <= 0 for l2 in config.probe.l2):
        raise UserError(f"probe.l2={tuple(config.probe.l2)}: give positive strengths, e.g. (1e-3,)")
    if config.finetune.pooling == "flatten" and config.finetune.strand == "both":
        raise UserError("a flatten probe reads one strand's positions: use --strand forward")
    t0 = time.perf_counter()
    task = tasks.load_task(config.task)
    if task.kind == "token_classification":
        raise UserError("probe fits one label per sequence; use finetune for token_classification")
    select = metrics.select_metric(task.kind, config.finetune.select_metric)
    loaded = pretrained.load(workdir, tuple(config.mesh.shape))
    if model_name == "scratch":
        loaded = random_encoder(loaded, seed)
    pooling, strand = config.finetune.pooling, config.finetune.strand
    layers = chosen_layers(config.probe.layers, loaded.pretrained.model_config.num_layers)
    feats = {
        name: embed.embed_sequences(
            loaded,
            split.sequences,
            [f"{task.path}, {r}" for r in split.rows],
            "none" if pooling == "flatten" else pooling,
            layers=layers,
            strand=strand,
        )  # fmt: skip
        for name, split in (("train", task.train), ("val", task.val), ("test", task.test))
    }
    if pooling == "flatten":  # [N, K, T, D] -> [N, T, K * D]: each position's states side by side
        feats = flattened(
            {k: np.moveaxis(v, 1, 2).reshape(*v.shape[::2], -1) for k, v in feats.items()}
        )
    else:  # [N, K, D]
        feats = {k: v.reshape(len(v), -1) for k, v in feats.items()}
    mean, sd = feats["train"].mean(axis=0), feats["train"].std(axis=0) + 1e-6
    feats = {k: (v - mean) / sd for k, v in feats.items()}
    labels = {"train": task.train.labels, "val": task.val.labels, "test": task.test.labels}

    sweep, fits = [], []
    for l2 in config.probe.l2:
        if task.kind == "regression":
            w, b = fit_ridge(feats["train"], labels["train"], float(l2))
        else:
            w, b = fit_logistic(
                feats["train"],
                labels["train"],
                task.num_outputs,
                float(l2),
                int(config.probe.max_iterations),
            )
        val = metrics.for_kind(task.kind, labels["val"], feats["val"] @ w + b)
        sweep.append({"l2": float(l2), **{f"val_{k}": v for k, v in val.items()}})
        fits.append((float(l2), w, b))
    l2, w, b = fits[metrics.best_index(select, [s[f"val_{select}"] for s in sweep])]
    test = metrics.for_kind(task.kind, labels["test"], feats["test"] @ w + b)
    print(
        f"probe ({model_name}, seed {seed}, l2 {l2:g}): "
        + ", ".join(f"{k} {v:.4f}" for k, v in test.items()),
        flush=True,
    )
    output = layers == (loaded.pretrained.model_config.num_layers,)
    name = model_name + ("" if output else f"_layers{','.join(map(str, layers))}")
    return {
        "mode": "probe",
        "model": f"{name}_both_strands" if strand == "both" else name,
        "seed": seed,
        "task": task.name,
        "task_path": task.path,
        "kind": task.kind,
        "workdir": str(workdir),
        "checkpoint_step": loaded.pretrained.step,
        "tokenizer": loaded.tokenizer.name,
        "pooling": pooling,
        "layers": list(layers),
        "strand": strand,
        "trainable_params": int(w.size + b.size),
        "embedding_dim": int(w.shape[0]),
        "label_names": list(task.label_names),
        "sizes": {"train": len(task.train), "val": len(task.val), "test": len(task.test)},
        "notes": list(task.notes),
        "select_metric": select,
        "l2": l2,
        "sweep": sweep,
        "test": test,
        "config": config.to_dict(),
        "seconds": time.perf_counter() - t0,
    }
