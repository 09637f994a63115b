"""Fine-tune a sequence classifier on a CSV task, from a pretrained encoder or from scratch.

The encoder shape and tokenizer come from the checkpoint's `meta`; with `init="pretrained"` only
the `params` item is restored (never the optimizer state) and its `encoder` subtree is placed
under the classifier. The best epoch on the validation rows is kept; the test rows are evaluated
once, with it.
"""

from __future__ import annotations

import pathlib
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from gfm_jax import sharding
from gfm_jax.data import tasks
from gfm_jax.data.pipeline import host_batch_size, to_global
from gfm_jax.errors import UserError
from gfm_jax.evaluate import metrics, pretrained
from gfm_jax.models.heads import SequenceClassifier
from gfm_jax.train import losses, optim
from gfm_jax.train import state as state_lib
from gfm_jax.train import step as step_lib

INITS = ("pretrained", "scratch")


def log(message: str) -> None:
    if jax.process_index() == 0:
        print(message, flush=True)


def _host_rows(global_rows: np.ndarray) -> np.ndarray:
    """This process's contiguous slice of a global batch's rows."""
    per_host = host_batch_size(len(global_rows), jax.process_count())
    return global_rows[jax.process_index() * per_host : (jax.process_index() + 1) * per_host]


def _batches(ids, mask, labels, batch_size: int, order: np.ndarray):
    """Fixed-size batches over `order`; the last one is padded with weight-0 examples."""
    for first in range(0, len(order), batch_size):
        rows = order[first : first + batch_size]
        weights = np.ones(batch_size, np.float32)
        if len(rows) < batch_size:
            weights[len(rows) :] = 0.0
            rows = np.concatenate([rows, np.zeros(batch_size - len(rows), rows.dtype)])
        rows_h = _host_rows(rows)
        w_h = _host_rows(weights)
        yield {"ids": ids[rows_h], "mask": mask[rows_h], "labels": labels[rows_h], "weights": w_h}


def finetune(
    config: ml_collections.ConfigDict,
    workdir: str | pathlib.Path,
    init: str = "pretrained",
    seed: int | None = None,
) -> dict[str, Any]:
    """Fine-tunes on `config.task`; returns the test metrics and what reproduces them."""
    if init not in INITS:
        raise UserError(f"--init={init!r}: choose one of {INITS}")
    seed = int(config.seed if seed is None else seed)
    t0 = time.perf_counter()

    # --- The pretrained model's description (meta only, no arrays) ------------------------
    pre = pretrained.describe(workdir)
    tokenizer, model_cfg, ckpt_step = pre.tokenizer, pre.model_config, pre.step

    # --- Task data -----------------------------------------------------------------------------
    task = tasks.load_csv_task(config.task, seed)
    for note in task.notes:
        log(f"task: {note}")
    encoded = {
        name: (*tasks.encode_split(tokenizer, split, task.path), split.labels)
        for name, split in (("train", task.train), ("val", task.val), ("test", task.test))
    }
    log(
        f"task {pathlib.Path(task.path).name}: classes {task.label_names}, "
        f"train {len(task.train)} / val {len(task.val)} / test {len(task.test)}"
    )

    # --- Classifier, optimizer, sharded state -------------------------------------------------
    mesh = sharding.make_mesh(config.mesh.shape)
    rules = tuple(tuple(r) for r in config.mesh.rules)
    batch_sharding = sharding.batch_sharding(mesh, rules)
    f_cfg = config.finetune
    num_classes = len(task.label_names)
    if f_cfg.pooling not in ("mean", "cls"):
        raise UserError(f"finetune.pooling={f_cfg.pooling!r}: choose mean or cls")
    model = SequenceClassifier(model_cfg, num_classes, f_cfg.pooling, mesh, rules)
    example_ids, example_mask = encoded["train"][0][:1], encoded["train"][1][:1]

    def init_params(rng: jax.Array) -> Any:
        return model.init(rng, example_ids, example_mask)["params"]

    steps_per_epoch = -(-len(task.train) // f_cfg.batch_size)
    tx = optim.make_optimizer(config.optim, steps_per_epoch * f_cfg.epochs)
    state, shardings = state_lib.create_sharded_state(
        init_params, tx, jax.random.key(seed), mesh, rules
    )
    if init == "pretrained":
        encoder = pretrained.load_params(workdir, pre, mesh, rules)["encoder"]
        state = state.replace(params={**state.params, "encoder": encoder})
        log(f"encoder initialised from {workdir} step {ckpt_step}")

    def objective(params: Any, batch: dict) -> dict:
        logits_BxC = model.apply({"params": params}, batch["ids"], batch["mask"])
        return losses.classification_sums(logits_BxC, batch["labels"], batch["weights"])

    train_step = step_lib.compile_train_step(
        step_lib.make_train_step(objective, tx), shardings, batch_sharding
    )
    replicated = NamedSharding(mesh, PartitionSpec())
    predict = jax.jit(
        lambda params, batch: model.apply({"params": params}, batch["ids"], batch["mask"]),
        in_shardings=(shardings.params, batch_sharding),
        out_shardings=replicated,
    )

    def evaluate(params: Any, split: str) -> dict[str, float]:
        ids, mask, labels = encoded[split]
        order = np.arange(len(labels))
        preds = []
        for batch in _batches(ids, mask, labels, f_cfg.batch_size, order):
            logits = predict(params, to_global(batch, batch_sharding))
            preds.append(np.argmax(np.asarray(logits), axis=-1))
        pred = np.concatenate(preds)[: len(labels)]
        return {
            "accuracy": metrics.accuracy(labels, pred),
            "mcc": metrics.mcc(labels, pred, num_classes),
            "macro_f1": metrics.macro_f1(labels, pred, num_classes),
        }

    # --- Training: keep the epoch with the best validation accuracy --------------------------
    rng = np.random.default_rng(seed)
    best: tuple[float, int, Any] = (-1.0, -1, None)
    history = []
    ids, mask, labels = encoded["train"]
    for epoch in range(1, f_cfg.epochs + 1):
        loss_sum = weight_sum = 0.0
        for batch in _batches(ids, mask, labels, f_cfg.batch_size, rng.permutation(len(labels))):
            state, m = train_step(state, to_global(batch, batch_sharding))
            m = jax.device_get(m)
            loss_sum, weight_sum = (
                loss_sum + float(m["loss_sum"]),
                weight_sum + float(m["weight_sum"]),
            )
        val = evaluate(state.params, "val")
        history.append(
            {
                "epoch": epoch,
                "train_loss": loss_sum / weight_sum,
                **{f"val_{k}": v for k, v in val.items()},
            }
        )
        log(
            f"epoch {epoch}: train loss {loss_sum / weight_sum:.4f} "
            f"val accuracy {val['accuracy']:.4f} mcc {val['mcc']:.4f}"
        )
        if val["accuracy"] > best[0]:
            best = (val["accuracy"], epoch, jax.tree.map(lambda x: x.copy(), state.params))

    test = evaluate(best[2], "test")
    log(
        f"test ({init}, best epoch {best[1]}): "
        f"accuracy {test['accuracy']:.4f} mcc {test['mcc']:.4f}"
    )
    return {
        "init": init,
        "seed": seed,
        "workdir": str(workdir),
        "checkpoint_step": ckpt_step,
        "task": task.path,
        "label_names": list(task.label_names),
        "sizes": {"train": len(task.train), "val": len(task.val), "test": len(task.test)},
        "notes": list(task.notes),
        "best_epoch": best[1],
        "test": test,
        "history": history,
        "config": config.to_dict(),
        "seconds": time.perf_counter() - t0,
    }
