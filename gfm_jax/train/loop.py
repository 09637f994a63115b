"""The pretraining loop: set up, init or restore, train, evaluate, checkpoint, log.

Read top to bottom; each section is labelled. Metrics go to stdout (process 0) and, as one JSON
object per line, to `<workdir>/metrics.jsonl`.
"""

from __future__ import annotations

import json
import math
import pathlib
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
import tensorflow as tf

import gfm_jax
from gfm_jax import checkpoint, sharding
from gfm_jax import config as config_lib
from gfm_jax.data.bpe import tokenizer_for_run
from gfm_jax.data.corpus import load_corpus
from gfm_jax.data.masking_spec import target_capacity
from gfm_jax.data.pipeline import WindowPipeline, global_batches, host_batch_size, to_global
from gfm_jax.errors import UserError
from gfm_jax.models import presets
from gfm_jax.models.encoder import EncoderConfig
from gfm_jax.models.heads import MaskedLM
from gfm_jax.train import flops, optim
from gfm_jax.train import state as state_lib
from gfm_jax.train import step as step_lib
from gfm_jax.train.preemption import Preempted, StopRequests

MODEL_KEYS = ("inputs", "targets", "weights")


def log(message: str) -> None:
    if jax.process_index() == 0:
        print(message, flush=True)


class MetricsWriter:
    """Metrics to `<workdir>/metrics.jsonl` and TensorBoard events in `<workdir>/tensorboard/`
    (one sub-directory per split), from process 0 only."""

    def __init__(self, workdir: pathlib.Path, tensorboard: bool = True):
        self.path = workdir / "metrics.jsonl"
        self.tb_dir = workdir / "tensorboard" if tensorboard else None
        self._tb: dict[str, Any] = {}

    def write(self, step: int, split: str, values: dict[str, float]) -> None:
        if jax.process_index() != 0:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, "split": split, **values}) + "\n")
        if self.tb_dir is None:
            return
        if split not in self._tb:
            self._tb[split] = tf.summary.create_file_writer(str(self.tb_dir / split))
        with self._tb[split].as_default(step=step):
            for name, value in values.items():
                tf.summary.scalar(name, value)
        self._tb[split].flush()


def unigram_baseline(targets: np.ndarray, weights: np.ndarray) -> dict[str, float]:
    """The best context-free predictor of the targets (their token distribution): its loss,
    the entropy in nats, and its accuracy, the frequency of the commonest token."""
    ids = targets[weights > 0]
    p = np.bincount(ids).astype(np.float64)
    p = p[p > 0] / p.sum()
    return {"unigram_entropy": float(-(p * np.log(p)).sum()), "unigram_accuracy": float(p.max())}


def summarize(sums: dict[str, float], bases_per_token: float) -> dict[str, float]:
    loss = sums["loss_sum"] / max(sums["weight_sum"], 1.0)
    return {
        "loss": loss,
        "accuracy": sums["correct_sum"] / max(sums["weight_sum"], 1.0),
        "perplexity": math.exp(min(loss, 50.0)),
        "bits_per_base": loss / math.log(2) / bases_per_token,
    }


def train(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict[str, Any]:
    """Runs (or resumes) pretraining; returns the final held-out metrics."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    t_cfg = config.train

    # --- Devices, mesh and data -----------------------------------------------------------
    mesh = sharding.make_mesh(config.mesh.shape)
    rules = tuple(tuple(r) for r in config.mesh.rules)
    batch_sharding = sharding.batch_sharding(mesh, rules)
    log(f"gfm_jax {gfm_jax.__version__}: {jax.device_count()} devices, mesh {dict(mesh.shape)}")
    host_batch_size(t_cfg.global_batch_size, jax.process_count())
    corpus = load_corpus(config.data.genomes, config.data.iupac, config.data.cache_dir, log)
    log(corpus.summary())
    tokenizer = tokenizer_for_run(config.data, corpus, workdir)
    pipeline = WindowPipeline(corpus, tokenizer, config.data, config.seed)
    log(pipeline.describe_mixture())

    # --- Model, optimizer and sharded state -----------------------------------------------
    if t_cfg.objective not in ("mlm", "causal"):
        raise UserError(f"train.objective={t_cfg.objective!r}: choose 'mlm' or 'causal'")
    causal = t_cfg.objective == "causal"
    model_cfg = EncoderConfig.from_config(config.model, tokenizer.vocab_size, causal)
    model = MaskedLM(model_cfg, mesh, rules)
    window = np.zeros((1, 1 + pipeline.num_tokens), np.int32)  # CLS + tokens

    def init_params(rng: jax.Array) -> Any:
        return model.init(rng, window)["params"]

    tx = optim.make_optimizer(config.optim, t_cfg.num_steps)
    rng = jax.random.key(config.seed)
    boxed = state_lib.abstract_state(init_params, tx, rng)
    state_shardings = sharding.tree_shardings(boxed, mesh, rules)
    ckpt = checkpoint.Checkpointer(
        workdir,
        keep=t_cfg.keep_checkpoints,
        best_metric=t_cfg.best_metric,
        best_mode=t_cfg.best_mode,
    )
    state = _resume(ckpt, boxed, state_shardings, config)
    if state is None and t_cfg.init_from:
        state = _init_from(t_cfg.init_from, boxed, state_shardings, tx, config)
        log(f"parameters from {t_cfg.init_from} (params only; optimizer and step start afresh)")
    if state is None:
        state, _ = state_lib.create_sharded_state(init_params, tx, rng, mesh, rules)
    start_step = int(jax.device_get(state.step))
    log(f"model {config.model.name}: parameters (shape, dtype, sharding):")
    log(sharding.describe(state.params, state_shardings.params))
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    log(presets.compare_to_published(config.model.name, num_params, tokenizer.vocab_size))

    z_loss = float(config.optim.z_loss)
    if causal:
        objective = step_lib.causal_objective(model, tokenizer.pad_id, tokenizer.maskable, z_loss)
    else:
        capacity = int(t_cfg.target_capacity)
        window_tokens = 1 + pipeline.num_tokens
        if capacity == 0:
            capacity = target_capacity(window_tokens, pipeline.masking)
        elif capacity < 0:
            capacity = window_tokens
        log(f"MLM head on {capacity} of {window_tokens} positions per window")
        objective = step_lib.mlm_objective(model, tokenizer.pad_id, z_loss, capacity)
    train_step = step_lib.compile_train_step(
        step_lib.make_train_step(objective, tx, int(t_cfg.micro_batches)),
        state_shardings,
        batch_sharding,
    )
    eval_step = step_lib.compile_eval_step(objective, state_shardings.params, batch_sharding)
    writer = MetricsWriter(workdir, bool(t_cfg.tensorboard))
    process = dict(process_index=jax.process_index(), process_count=jax.process_count())

    # --- Held-out evaluation (fixed windows from the held-out ranges) -----------------------
    eval_ds = pipeline.dataset(
        "val",
        global_batch=t_cfg.global_batch_size,
        first_step=0,
        last_step=t_cfg.eval_batches,
        **process,
    )
    eval_batches = [{k: b[k] for k in MODEL_KEYS} for b in eval_ds.as_numpy_iterator()]
    eval_targets = np.concatenate([b["targets"] for b in eval_batches])
    if causal:  # the objective's next-token targets
        targets = step_lib.causal_targets(eval_targets, tokenizer.pad_id, tokenizer.maskable)
        baseline = unigram_baseline(eval_targets[:, 1:], targets)
    else:
        baseline = unigram_baseline(
            eval_targets, np.concatenate([b["weights"] for b in eval_batches])
        )

    def evaluate(step: int) -> dict[str, float]:
        totals: dict[str, float] = {}
        for host_batch in eval_batches:
            batch = to_global(host_batch, batch_sharding)
            for k, v in jax.device_get(eval_step(state.params, batch)).items():
                totals[k] = totals.get(k, 0.0) + float(v)
        values = summarize(totals, tokenizer.bases_per_token)
        values.update(baseline)
        writer.write(step, "val", values)
        log(
            f"[eval] step {step}: loss {values['loss']:.4f} accuracy {values['accuracy']:.4f} "
            f"(unigram {baseline['unigram_entropy']:.4f} / {baseline['unigram_accuracy']:.4f}) "
            f"bits/base {values['bits_per_base']:.4f}"
        )
        return values

    def save(step: int, metrics: dict | None = None) -> None:
        meta = {
            "step": step,
            "config": json.loads(config_lib.to_json(config)),
            "tokenizer": tokenizer.spec(),
            "data_position": {"next_window_index": step * t_cfg.global_batch_size},
            "mesh": dict(mesh.shape),
            "version": gfm_jax.__version__,
        }
        ranked = None
        if metrics is not None and t_cfg.best_metric:
            ranked = {t_cfg.best_metric: float(metrics[t_cfg.best_metric])}
        ckpt.save(step, state.params, state.opt_state, meta, ranked)

    # --- Training ---------------------------------------------------------------------------
    final = evaluate(start_step) if start_step == 0 else {}
    last_step = t_cfg.num_steps
    if t_cfg.stop_at_step:
        last_step = min(last_step, t_cfg.stop_at_step)
    train_ds = pipeline.dataset(
        "train",
        global_batch=t_cfg.global_batch_size,
        first_step=start_step,
        last_step=last_step,
        **process,
    )
    batches = global_batches(train_ds, batch_sharding, MODEL_KEYS)
    tokens_per_step = t_cfg.global_batch_size * (1 + pipeline.num_tokens)
    flops_per_token = flops.train_flops_per_token(model_cfg, 1 + pipeline.num_tokens)
    peak = flops.peak_flops(model_cfg.dtype, float(t_cfg.peak_tflops))
    if peak is None:
        log(f"MFU not reported: no peak for {jax.devices()[0].device_kind} (set train.peak_tflops)")
    pending: tuple[int, dict] | None = None  # step t-1's metrics, read after step t is dispatched
    interval: dict[str, float] = {}
    interval_start, interval_steps = time.perf_counter(), 0

    def account(step: int, metrics: dict) -> None:
        nonlocal interval, interval_start, interval_steps
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not math.isfinite(values["loss_sum"]):
            raise UserError(
                f"training loss became {values['loss_sum']} at step {step}; the last checkpoint "
                f"({ckpt.latest_step()}) is kept. Lower optim.learning_rate or raise warmup_steps"
            )
        if values.get("dropped_targets", 0.0) > 0:
            log(
                f"warning: step {step} dropped {values['dropped_targets']:.0f} masked targets "
                "beyond train.target_capacity; raise it (or set -1: every position)"
            )
        for k, v in values.items():
            interval[k] = interval.get(k, 0.0) + v
        interval_steps += 1
        if step % t_cfg.log_every == 0 or step == last_step:
            elapsed = time.perf_counter() - interval_start
            out = summarize(interval, tokenizer.bases_per_token)
            out["grad_norm"] = interval["grad_norm"] / interval_steps
            out["tokens_per_sec"] = interval_steps * tokens_per_step / elapsed
            mfu = ""
            if peak is not None:
                out["mfu"] = out["tokens_per_sec"] * flops_per_token / peak
                mfu = f" MFU {out['mfu']:.1%}"
            writer.write(step, "train", out)
            eta = (last_step - step) * elapsed / interval_steps
            log(
                f"step {step}/{t_cfg.num_steps}: loss {out['loss']:.4f} "
                f"accuracy {out['accuracy']:.4f} grad_norm {out['grad_norm']:.3f} "
                f"{out['tokens_per_sec']:,.0f} tokens/s{mfu} ETA {_duration(eta)}"
            )
            interval, interval_start, interval_steps = {}, time.perf_counter(), 0

    stop = StopRequests()
    try:
        for step in range(start_step + 1, last_step + 1):
            state, metrics = train_step(state, next(batches))
            if pending is not None:
                account(*pending)
            pending = (step, metrics)
            signum = stop.stop_after(step)
            do_save = step % t_cfg.checkpoint_every == 0 and step != last_step
            do_eval = step % t_cfg.eval_every == 0 and step != last_step
            if do_save or do_eval or signum is not None:
                account(*pending)
                pending = None
            values = evaluate(step) if do_eval and signum is None else None
            if do_save or signum is not None:
                save(step, values)
            if signum is not None:
                ckpt.wait()  # the step is on disk before the process exits
                ckpt.close()
                raise Preempted(signum, step, str(ckpt.directory))
        if pending is not None:
            account(*pending)
    finally:
        stop.close()

    # --- Finish -----------------------------------------------------------------------------
    end_step = int(jax.device_get(state.step))
    if end_step > start_step or ckpt.latest_step() != end_step:
        final = evaluate(end_step)
        save(end_step, final)
    ckpt.wait()
    ckpt.close()
    return final


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


# Model keys that fix parameter shapes: a checkpoint with other values cannot be loaded.
SHAPE_KEYS = (
    "num_layers",
    "hidden_size",
    "num_heads",
    "mlp_dim",
    "activation",
    "use_bias_attn",
    "use_bias_mlp",
    "norm",
    "position",
    "max_positions",
    "tie_embeddings",
    "scan_layers",
)


def _changed(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts, as 'key: old -> new'."""
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _changed(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a} -> {b}")
    return out


def _check_model_shape(source: str, saved: dict, current: dict) -> None:
    """Refuses a checkpoint whose parameter shapes differ: model keys, or the tokenizer (the
    vocabulary size), naming what changed."""
    changed = [f"model.{k}" for k in SHAPE_KEYS if saved["model"].get(k) != current["model"].get(k)]
    if saved["data"].get("tokenizer") != current["data"].get("tokenizer"):
        changed.append("data.tokenizer")
    if changed:
        raise UserError(
            f"{source} was trained with another model shape ({', '.join(changed)} differ); "
            "use a new --workdir, or the saved config's values"
        )


def _resume(
    ckpt: checkpoint.Checkpointer,
    boxed: state_lib.TrainState,
    shardings: state_lib.TrainState,
    config: ml_collections.ConfigDict,
) -> state_lib.TrainState | None:
    """The state of the workdir's latest readable checkpoint, on this run's mesh, or None.

    A model-shape change is refused; other changes (steps, learning rate, ...) are logged.
    With train.fallback_on_corrupt, an unreadable step is skipped for the one before it.
    """
    current = json.loads(config_lib.to_json(config))
    for step in reversed(ckpt.all_steps()):
        try:
            meta = ckpt.read_meta(step)
            _check_model_shape(f"the checkpoint in {ckpt.directory}", meta["config"], current)
            params, opt_state, _ = ckpt.restore(
                step,
                state_lib.abstract_arrays(boxed.params, shardings.params),
                state_lib.abstract_arrays(boxed.opt_state, shardings.opt_state),
            )
        except checkpoint.CorruptCheckpoint as e:
            if not config.train.fallback_on_corrupt:
                raise
            aside = ckpt.set_aside(step)
            log(f"warning: {e}; moved it to {aside} and trying the step before it")
            continue
        changes = _changed(meta["config"], current)
        if changes:
            log(f"resuming with a changed config: {'; '.join(changes)}")
        log(f"resumed from {ckpt.directory}/{step} (saved on mesh {meta.get('mesh')})")
        step_array = jax.device_put(np.int32(step), shardings.step)
        return state_lib.TrainState(step_array, params, opt_state)
    if ckpt.all_steps():
        raise UserError(f"no checkpoint in {ckpt.directory} could be read; see the warnings")
    return None


def _init_from(
    source: str,
    boxed: state_lib.TrainState,
    shardings: state_lib.TrainState,
    tx: optax.GradientTransformation,
    config: ml_collections.ConfigDict,
) -> state_lib.TrainState:
    """Step 0 with the parameters of `source`'s latest checkpoint and a fresh optimizer."""
    step, meta = checkpoint.read_meta(source)
    current = json.loads(config_lib.to_json(config))
    _check_model_shape(f"--config.train.init_from={source}", meta["config"], current)
    abstract = state_lib.abstract_arrays(boxed.params, shardings.params)
    _, params = checkpoint.restore_params(source, abstract, step)
    opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
    step_array = jax.device_put(np.int32(0), shardings.step)
    return state_lib.TrainState(step_array, params, opt_state)
