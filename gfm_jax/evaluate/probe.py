"""Linear probe: a linear model on frozen encoder embeddings.

Embeddings are pooled encoder outputs (masked mean, or CLS with `finetune.pooling=cls`),
standardised with the training rows' mean and sd. Classification fits multinomial logistic
regression by L-BFGS (optax), regression fits ridge regression in closed form; each L2
strength in `probe.l2` is fitted on train and the best on validation is tested once.
`--model scratch` probes a randomly initialised encoder of the same shape (seeded): the floor
that the pretrained embeddings should clear.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

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


@functools.partial(jax.jit, static_argnames=("num_classes", "iterations"))
def _lbfgs_logistic(x, y, l2, num_classes: int, iterations: int):
    def loss(params):
        logits = x @ params["w"] + params["b"]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return ce + l2 * jnp.sum(params["w"] ** 2)

    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)

    def body(carry, _):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=loss)
        return (optax.apply_updates(params, updates), state), value

    params = {"w": jnp.zeros((x.shape[1], num_classes)), "b": jnp.zeros((num_classes,))}
    (params, _), _ = jax.lax.scan(body, (params, opt.init(params)), None, length=iterations)
    return params


def fit_logistic(x_NxD: np.ndarray, y_N: np.ndarray, num_classes: int, l2: float, iterations: int):
    """Multinomial logistic regression (bias unpenalised) by L-BFGS; returns (W_DxC, b_C).

    One compiled solver serves every L2 strength (it is an argument, not a constant)."""
    x, y = jnp.asarray(x_NxD, jnp.float32), jnp.asarray(y_N, jnp.int32)
    out = _lbfgs_logistic(x, y, jnp.float32(l2), num_classes, iterations)
    return np.asarray(out["w"]), np.asarray(out["b"])


def fit_ridge(x_NxD: np.ndarray, y_N: np.ndarray, l2: float) -> tuple[np.ndarray, np.ndarray]:
    """Ridge regression with an unpenalised intercept, in closed form (float64)."""
    x = np.asarray(x_NxD, np.float64)
    y = np.asarray(y_N, np.float64)
    x_mean, y_mean = x.mean(axis=0), y.mean()
    xc = x - x_mean
    w = np.linalg.solve(xc.T @ xc + l2 * len(x) * np.eye(x.shape[1]), xc.T @ (y - y_mean))
    return w[:, None], np.array([y_mean - x_mean @ w])


def probe(
    config: ml_collections.ConfigDict, workdir: str, model_name: str = "pretrained", seed: int = 0
) -> dict[str, Any]:
    if model_name not in MODELS:
        raise UserError(f"probe --model={model_name!r}: choose one of {MODELS}")
    t0 = time.perf_counter()
    task = tasks.load_task(config.task)
    if task.kind == "token_classification":
        raise UserError("probe fits one label per sequence; use finetune for token_classification")
    loaded = pretrained.load(workdir, tuple(config.mesh.shape))
    if model_name == "scratch":
        loaded = random_encoder(loaded, seed)
    pooling = config.finetune.pooling
    feats = {
        name: embed.embed_sequences(
            loaded, split.sequences, [f"{task.path}, {r}" for r in split.rows], pooling
        )
        for name, split in (("train", task.train), ("val", task.val), ("test", task.test))
    }
    mean, sd = feats["train"].mean(axis=0), feats["train"].std(axis=0) + 1e-6
    feats = {k: (v - mean) / sd for k, v in feats.items()}
    labels = {"train": task.train.labels, "val": task.val.labels, "test": task.test.labels}

    select = config.finetune.select_metric or metrics.default_select_metric(task.kind)
    sweep, best = [], None
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
        if best is None or val[select] > best[0]:
            best = (val[select], float(l2), w, b)
    _, l2, w, b = best
    test = metrics.for_kind(task.kind, labels["test"], feats["test"] @ w + b)
    print(
        f"probe ({model_name}, seed {seed}, l2 {l2:g}): "
        + ", ".join(f"{k} {v:.4f}" for k, v in test.items()),
        flush=True,
    )
    return {
        "mode": "probe",
        "model": model_name,
        "seed": seed,
        "task": task.name,
        "task_path": task.path,
        "kind": task.kind,
        "workdir": str(workdir),
        "checkpoint_step": loaded.pretrained.step,
        "tokenizer": loaded.tokenizer.name,
        "pooling": pooling,
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
