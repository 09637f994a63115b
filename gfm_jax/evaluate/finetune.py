"""Fine-tune a head on a downstream task: from the pretrained encoder, from scratch, or the CNN.

Models (`model`):
- `pretrained`: the workdir's encoder (only the checkpoint's `params` item is read, never the
  optimizer state) under a new head; `finetune.freeze_backbone` trains the head only, and
  `finetune.adapter` (lora, ia3) trains adapters in the frozen encoder and the head. Frozen
  parameters get no gradient (stop_gradient) and no optimizer state (optax.multi_transform).
- `scratch`: the same architecture and tokenizer, randomly initialised: what pretraining adds.
- `cnn`: the non-pretrained CNN baseline (models/cnn.py) on single-base tokens.

The heads: pooled linear layer (classification, regression) or one linear layer per position
(token classification). The step is the pretraining step machinery (`jax.jit` with shardings,
donation), so fine-tuning runs on any mesh and in several processes. The epoch with the best
validation `finetune.select_metric` (in its direction: lowest mse, highest accuracy; see
metrics.DIRECTIONS) is kept; the test rows are evaluated once, with it. `finetune.strand=both`
averages each validation and test sequence's prediction with its reverse complement's. With
`finetune.save`, the kept epoch's trained parameters go to a checkpoint (see finetuned.py).

Steps: `_build` (model, tokenizer, encoded splits), `_build_state` (sharded state, restored
encoder, compiled step), `_evaluator` (metrics of a split), `_run_epochs` (train, select).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from gfm_jax import config as config_lib
from gfm_jax import sharding
from gfm_jax.data import fasta, tasks
from gfm_jax.data.pipeline import host_batch_size, to_global
from gfm_jax.data.tokenizers import get_tokenizer
from gfm_jax.errors import UserError
from gfm_jax.evaluate import finetuned, metrics, pretrained, results
from gfm_jax.models import adapters
from gfm_jax.models.cnn import CnnClassifier
from gfm_jax.models.heads import SequenceClassifier, TokenClassifier
from gfm_jax.train import losses, optim
from gfm_jax.train import state as state_lib
from gfm_jax.train import step as step_lib

MODELS = ("pretrained", "scratch", "cnn")


def log(message: str) -> None:
    if jax.process_index() == 0:
        print(message, flush=True)


def _host_rows(global_rows: np.ndarray) -> np.ndarray:
    """This process's contiguous slice of a global batch's rows."""
    per_host = host_batch_size(len(global_rows), jax.process_count(), "finetune.batch_size")
    return global_rows[jax.process_index() * per_host : (jax.process_index() + 1) * per_host]


def _batches(data: dict[str, np.ndarray], batch_size: int, order: np.ndarray, augment=None):
    """Fixed-size batches over `order`; the last one is padded with weight-0 examples.
    `augment(batch) -> ids` rewrites the global batch's ids before each process takes its rows."""
    for first in range(0, len(order), batch_size):
        rows = order[first : first + batch_size]
        weights = np.ones(batch_size, np.float32)
        if len(rows) < batch_size:
            weights[len(rows) :] = 0.0
            rows = np.concatenate([rows, np.zeros(batch_size - len(rows), rows.dtype)])
        batch = {k: v[rows] for k, v in data.items()}
        if augment is not None:
            batch["ids"] = augment(batch)
        batch = {k: _host_rows(v) for k, v in batch.items()}
        batch["weights"] = _host_rows(weights)
        yield batch


def input_masking(rate: float, tokenizer: Any, rng: np.random.Generator):
    """Fine-tuning augmentation: each sequence token (not CLS, not padding) of a training batch
    becomes the mask token with probability `rate`, drawn from `rng` over the global batch."""

    def augment(batch: dict[str, np.ndarray]) -> np.ndarray:
        ids_BxL = batch["ids"]
        hit_BxL = rng.random(ids_BxL.shape) < rate
        hit_BxL &= batch["mask"].astype(bool) & (ids_BxL != tokenizer.cls_id)
        return np.where(hit_BxL, np.asarray(tokenizer.mask_id, ids_BxL.dtype), ids_BxL)

    return augment


def _objective(model: Any, kind: str, trainable):
    def objective(params: Any, batch: dict) -> dict:
        # Frozen parameters are constants: XLA computes no gradient for their weights.
        params = jax.tree_util.tree_map_with_path(
            lambda path, x: x if trainable(path) else jax.lax.stop_gradient(x), params
        )
        out = model.apply({"params": params}, batch["ids"], batch["mask"])
        if kind == "regression":
            return losses.regression_sums(out[:, 0], batch["labels"], batch["weights"])
        if kind == "token_classification":
            labels_BxL = batch["labels"]
            w_BxL = (labels_BxL != tasks.IGNORE) * batch["weights"][:, None]
            return losses.masked_lm_sums(out, labels_BxL.clip(0), w_BxL)
        return losses.classification_sums(out, batch["labels"], batch["weights"])

    return objective


def _train_only(tx: optax.GradientTransformation, trainable) -> optax.GradientTransformation:
    """`tx` on the parameters `trainable(path)` accepts; the others get no update, no weight
    decay and no optimizer state."""

    def labels(params: Any) -> Any:
        return jax.tree_util.tree_map_with_path(
            lambda path, _: "train" if trainable(path) else "frozen", params
        )

    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


@dataclasses.dataclass
class _Run:
    """What the steps of one fine-tune share: the task, its encoded splits and the model."""

    config: ml_collections.ConfigDict
    task: tasks.Task
    model: Any
    tokenizer: Any
    data: dict[str, dict[str, np.ndarray]]
    mesh: Any
    rules: tuple
    pre: pretrained.Pretrained | None  # None for the CNN
    mode: str  # full | frozen | lora | ia3 (finetuned.training_mode)

    @property
    def trainable(self):
        """trainable(path) -> bool: which parameters fine-tuning updates."""
        return finetuned.trainable_fn(self.mode)

    @property
    def per_token(self) -> bool:
        return self.task.kind == "token_classification"


def _build(
    config: ml_collections.ConfigDict, workdir: str, model_name: str, task: tasks.Task
) -> _Run:
    """The model and tokenizer for `model_name`, and the task's splits encoded with it."""
    f_cfg, per_token = config.finetune, task.kind == "token_classification"
    mesh = sharding.make_mesh(config.mesh.shape)
    rules = tuple(tuple(r) for r in config.mesh.rules)
    pre = None
    if model_name == "cnn":
        tokenizer = get_tokenizer("char")
        model = CnnClassifier.from_config(
            config.cnn, tokenizer.vocab_size, task.num_outputs, per_token
        )
    else:
        pre = pretrained.describe(workdir)
        tokenizer = pre.tokenizer
        model_config = dataclasses.replace(pre.model_config, adapter=finetuned.adapter_of(f_cfg))
        if per_token:
            model = TokenClassifier(model_config, task.num_outputs, mesh, rules)
        else:
            model = SequenceClassifier(model_config, task.num_outputs, f_cfg.pooling, mesh, rules)
    splits = [("train", task.train), ("val", task.val), ("test", task.test)]
    if f_cfg.strand == "both":
        splits += [(f"{n}_rc", reverse_complemented(s)) for n, s in splits[1:]]
    data = tasks.pad_to_one_length(
        {
            name: tasks.encode_split(tokenizer, split, task.path, task.kind)
            for name, split in splits
        },
        tokenizer.pad_id,
    )
    mode = finetuned.training_mode(f_cfg, model_name)
    return _Run(config, task, model, tokenizer, data, mesh, rules, pre, mode)


def reverse_complemented(split: tasks.Split) -> tasks.Split:
    rc = tuple(fasta.reverse_complement(s) for s in split.sequences)
    return dataclasses.replace(
        split, sequences=rc, rows=tuple(f"{r} (reverse)" for r in split.rows)
    )


def _build_state(run: _Run, workdir: str, model_name: str, seed: int):
    """The sharded train state (the pretrained encoder restored into it), its shardings, the
    compiled train step and the batch sharding."""
    f_cfg, example = run.config.finetune, run.data["train"]
    batch_sharding = sharding.batch_sharding(run.mesh, run.rules)

    def init_params(rng: jax.Array) -> Any:
        return run.model.init(rng, example["ids"][:1], example["mask"][:1])["params"]

    steps_per_epoch = -(-len(run.task.train) // f_cfg.batch_size)
    tx = optim.make_optimizer(run.config.optim, steps_per_epoch * f_cfg.epochs)
    if model_name == "pretrained" and f_cfg.layer_decay != 1.0:  # keeps pretrained features
        tx = optax.chain(
            tx, optim.scale_by_depth(f_cfg.layer_decay, run.pre.model_config.num_layers)
        )
    tx = _train_only(tx, run.trainable)
    state, shardings = state_lib.create_sharded_state(
        init_params, tx, jax.random.key(seed), run.mesh, run.rules
    )
    if model_name == "pretrained":
        encoder = pretrained.load_params(workdir, run.pre, run.mesh, run.rules)["encoder"]
        # The adapters keep their initial values; every other encoder weight is the base's.
        fresh_adapters, _ = adapters.split(state.params["encoder"])
        encoder = finetuned.merge_trees(encoder, fresh_adapters)
        state = state.replace(params={**state.params, "encoder": encoder})
        suffix = "" if run.mode == "full" else f" ({run.mode})"
        log(f"encoder from {workdir} step {run.pre.step}{suffix}")
    train_step = step_lib.compile_train_step(
        step_lib.make_train_step(_objective(run.model, run.task.kind, run.trainable), tx),
        shardings,
        batch_sharding,
    )
    return state, shardings, train_step, batch_sharding


def _evaluator(run: _Run, shardings: Any, batch_sharding: Any):
    """`evaluate(params, split)`: the metrics of `split` (ignored token positions removed)."""
    model, batch_size = run.model, run.config.finetune.batch_size
    predict = jax.jit(
        lambda params, batch: model.apply({"params": params}, batch["ids"], batch["mask"]),
        in_shardings=(shardings.params, batch_sharding),
        out_shardings=NamedSharding(run.mesh, PartitionSpec()),
    )

    def outputs(params: Any, split: str) -> np.ndarray:
        d = run.data[split]
        outs = [
            np.asarray(predict(params, to_global(b, batch_sharding)))
            for b in _batches(d, batch_size, np.arange(len(d["ids"])))
        ]
        return np.concatenate(outs)[: len(d["ids"])]

    def evaluate(params: Any, split: str) -> dict[str, float]:
        out, labels = outputs(params, split), run.data[split]["labels"]
        if f"{split}_rc" in run.data:  # strand averaging: the mean of both strands' outputs
            out = (out + outputs(params, f"{split}_rc")) / 2
        if run.per_token:
            keep = labels != tasks.IGNORE
            out, labels = out[keep], labels[keep]
        return metrics.for_kind(run.task.kind, labels, out)

    return evaluate


def _run_epochs(run: _Run, state: Any, train_step, evaluate, batch_sharding, seed: int, select):
    """Trains every epoch; returns (best epoch, its params, per-epoch history). The best epoch
    is the one whose validation `select` metric is best in that metric's direction."""
    f_cfg = run.config.finetune
    rng = np.random.default_rng(seed)
    augment = None
    if f_cfg.input_mask_rate > 0:
        augment = input_masking(
            f_cfg.input_mask_rate, run.tokenizer, np.random.default_rng([seed, 1])
        )
    best_epoch, best_score, best_params = -1, None, None
    history = []
    for epoch in range(1, f_cfg.epochs + 1):
        loss_sum = weight_sum = 0.0
        order = rng.permutation(len(run.task.train))
        for batch in _batches(run.data["train"], f_cfg.batch_size, order, augment):
            state, m = train_step(state, to_global(batch, batch_sharding))
            m = jax.device_get(m)
            loss_sum += float(m["loss_sum"])
            weight_sum += float(m["weight_sum"])
        val = evaluate(state.params, "val")
        history.append(
            {
                "epoch": epoch,
                "train_loss": loss_sum / weight_sum,
                **{f"val_{k}": v for k, v in val.items()},
            }
        )
        log(f"epoch {epoch}: train loss {loss_sum / weight_sum:.4f} val {select} {val[select]:.4f}")
        if metrics.is_better(select, val[select], best_score):
            best_epoch, best_score = epoch, val[select]
            best_params = jax.tree.map(lambda x: x.copy(), state.params)
        elif f_cfg.patience and epoch - best_epoch >= f_cfg.patience:
            log(f"early stop: no better val {select} for {f_cfg.patience} epochs")
            break
    return best_epoch, best_params, history


def finetune(
    config: ml_collections.ConfigDict,
    workdir: str,
    model_name: str = "pretrained",
    seed: int = 0,
    out_dir: str | None = None,
) -> dict[str, Any]:
    """Fine-tunes on `config.task` with one seed; returns the test metrics and their recipe.
    With `out_dir` (and finetune.save), the kept epoch's trained parameters go to a directory
    there named as the run's JSON."""
    if model_name not in MODELS:
        raise UserError(f"--model={model_name!r}: choose one of {MODELS}")
    config_lib.check_finetune(config)
    if model_name == "cnn" and config.finetune.adapter != "none":
        raise UserError("finetune.adapter adapts the encoder; the CNN has none (use --model "
                        "pretrained, or finetune.adapter=none)")  # fmt: skip
    t0 = time.perf_counter()
    f_cfg = config.finetune
    # Refused before the task loads and the model compiles, not at the first batch.
    host_batch_size(f_cfg.batch_size, jax.process_count(), "finetune.batch_size")
    task = tasks.load_task(config.task)
    select = metrics.select_metric(task.kind, f_cfg.select_metric)
    for note in task.notes:
        log(f"task {task.name}: {note}")
    run = _build(config, workdir, model_name, task)
    log(
        f"task {task.name} ({task.kind}): {task.label_names or 'regression'}, train"
        f" {len(task.train)} / val {len(task.val)} / test {len(task.test)}; model {model_name},"
        f" seed {seed}"
    )
    mode = run.mode
    state, shardings, train_step, batch_sharding = _build_state(run, workdir, model_name, seed)
    sizes = finetuned.trained_sizes(state, run.trainable)
    evaluate = _evaluator(run, shardings, batch_sharding)
    epoch, params, history = _run_epochs(
        run, state, train_step, evaluate, batch_sharding, seed, select
    )
    test = evaluate(params, "test")
    label = run_label(model_name, mode, f_cfg.strand)
    save_dir = None
    if out_dir and f_cfg.save:
        name = {"task": task.name, "mode": "finetune", "model": label, "seed": seed}
        save_dir = results.run_file(out_dir, name).with_suffix("")
        meta = finetuned.meta_of(run.config, run.task, model_name, workdir, run.pre, run.tokenizer)
        finetuned.save(save_dir, params, meta)
        log(f"fine-tuned parameters in {save_dir}")
    log(
        f"test ({model_name}, seed {seed}, best epoch {epoch}): "
        + ", ".join(f"{k} {v:.4f}" for k, v in test.items())
    )
    return {
        "mode": "finetune",
        # A frozen backbone, an adapter or strand averaging is another model in every table
        # (and another file name).
        "model": label,
        "seed": seed,
        "task": task.name,
        "task_path": task.path,
        "kind": task.kind,
        "workdir": str(workdir),
        "checkpoint_step": run.pre.step if run.pre else None,
        "tokenizer": run.tokenizer.name,
        "frozen_backbone": mode != "full",
        "training": mode,
        "strand": f_cfg.strand,
        **sizes,
        "checkpoint": str(save_dir) if save_dir else None,
        "label_names": list(task.label_names),
        "sizes": {"train": len(task.train), "val": len(task.val), "test": len(task.test)},
        "notes": list(task.notes),
        "select_metric": select,
        "best_epoch": epoch,
        "val": history[epoch - 1],
        "test": test,
        "history": history,
        "config": config.to_dict(),
        "seconds": time.perf_counter() - t0,
    }


def run_label(model_name: str, mode: str, strand: str) -> str:
    """The model's name in tables: `pretrained`, `pretrained_lora`, `pretrained_frozen`, ...,
    with `_both_strands` when predictions average the two strands."""
    label = model_name if mode == "full" else f"{model_name}_{mode}"
    return f"{label}_both_strands" if strand == "both" else label
