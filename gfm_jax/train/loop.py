"""The pretraining loop: set up, init or restore, train, evaluate, checkpoint, log.

Read top to bottom; each section is labelled. Metrics go to stdout (process 0) and, as one JSON
object per line, to `<workdir>/metrics.jsonl`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import shutil
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
import tensorflow as tf

import gfm_jax
from gfm_jax import checkpoint, sharding
from gfm_jax import config as config_lib
from gfm_jax.data.corpus import load_corpus
from gfm_jax.data.pipeline import (
    WindowPipeline,
    global_batches,
    host_slice,
    to_global,
)
from gfm_jax.data.tokenizer_choice import tokenizer_for_run
from gfm_jax.data.tokenizers import Tokenizer
from gfm_jax.errors import UserError
from gfm_jax.models import presets
from gfm_jax.models.encoder import EncoderConfig
from gfm_jax.train import flops
from gfm_jax.train import program as program_lib
from gfm_jax.train import state as state_lib
from gfm_jax.train import step as step_lib
from gfm_jax.train.lm_metrics import summarize, unigram_baseline
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


def train(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict[str, Any]:
    """Runs (or resumes) pretraining; returns the final held-out metrics."""
    config_lib.check_pretrain(config)
    workdir = pathlib.Path(workdir)
    created = not workdir.exists()
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        return _train(config, workdir)
    except BaseException:
        if created and jax.process_index() == 0:
            _remove_if_unused(workdir)
        raise


def _remove_if_unused(workdir: pathlib.Path) -> None:
    """Removes a workdir this run created when the run failed before its first checkpoint, so
    that a failed start leaves nothing behind to resume from."""
    ckpt = workdir / "ckpt"
    if ckpt.is_dir() and any(p.name.isdigit() for p in ckpt.iterdir()):
        return
    shutil.rmtree(workdir, ignore_errors=True)


def _train(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict[str, Any]:
    t_cfg = config.train
    data = _setup_data(config, workdir)
    program = _build_program(config, data)
    ckpt = checkpoint.Checkpointer(
        workdir,
        keep=t_cfg.keep_checkpoints,
        best_metric=t_cfg.best_metric,
        best_mode=t_cfg.best_mode,
    )
    state = _init_or_restore(config, data, program, ckpt)
    train_step, eval_step = program.train_step, program.eval_step
    writer = MetricsWriter(workdir, bool(t_cfg.tensorboard))
    run = _Run(config, data, program.cfg, ckpt, writer, _Evaluator(config, data, eval_step, writer))

    start_step = int(jax.device_get(state.step))
    final = run.evaluate(state.params, start_step) if start_step == 0 else {}
    state = _train_steps(run, state, train_step, start_step)
    return _finish(run, state, start_step, final)


# --- Set-up: devices, mesh and data ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Data:
    """The mesh and how batches are laid out on it, the run's tokenizer and its windows."""

    mesh: jax.sharding.Mesh
    rules: tuple
    batch_sharding: jax.sharding.Sharding
    tokenizer: Tokenizer
    pipeline: WindowPipeline

    @property
    def window_tokens(self) -> int:
        return 1 + self.pipeline.num_tokens  # CLS + tokens


def _setup_data(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> _Data:
    mesh = sharding.make_mesh(config.mesh.shape)
    rules = tuple(tuple(r) for r in config.mesh.rules)
    batch_sharding = sharding.batch_sharding(mesh, rules)
    log(f"gfm_jax {gfm_jax.__version__}: {jax.device_count()} devices, mesh {dict(mesh.shape)}")
    sharding.check_batch_divides(
        config.train.global_batch_size, int(config.train.micro_batches), batch_sharding
    )
    corpus = load_corpus(config.data.genomes, config.data.iupac, config.data.cache_dir, log)
    log(corpus.summary())
    tokenizer = tokenizer_for_run(config.data, corpus, workdir, config.train.init_from)
    pipeline = WindowPipeline(corpus, tokenizer, config.data, config.seed)
    log(pipeline.describe_mixture())
    return _Data(mesh, rules, batch_sharding, tokenizer, pipeline)


# --- Model, optimizer, sharded state and steps (train/program.py) ---------------------------


def _build_program(config: ml_collections.ConfigDict, data: _Data) -> program_lib.Program:
    program = program_lib.build(config, data.mesh, data.tokenizer, data.window_tokens)
    if config.train.objective == "mlm":
        log(f"MLM head on {program.head_positions} of {data.window_tokens} positions per window")
    return program


def _init_or_restore(
    config: ml_collections.ConfigDict,
    data: _Data,
    program: program_lib.Program,
    ckpt: checkpoint.Checkpointer,
) -> state_lib.TrainState:
    """The workdir's latest checkpoint, else `train.init_from`'s parameters, else a fresh
    initialization; the parameters are logged with their shardings."""
    init_from = config.train.init_from
    state = _resume(ckpt, program.boxed, program.shardings, config)
    if state is None and init_from:
        state = _init_from(init_from, program.boxed, program.shardings, program.tx, config)
        log(f"parameters from {init_from} (params only; optimizer and step start afresh)")
    if state is None:
        state, _ = state_lib.create_sharded_state(
            program.init_params, program.tx, program.rng, data.mesh, data.rules
        )
    log(f"model {config.model.name}: parameters (shape, dtype, sharding):")
    log(sharding.describe(state.params, program.shardings.params))
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    log(presets.compare_to_published(config.model.name, num_params, data.tokenizer.vocab_size))
    return state


# --- Held-out evaluation (fixed windows from the held-out ranges) -----------------------------


class _Evaluator:
    """Scores parameters on the same held-out batches every time, beside the unigram baseline
    of their targets; writes and logs the result."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        data: _Data,
        eval_step: Callable,
        writer: MetricsWriter,
    ):
        t_cfg, tok = config.train, data.tokenizer
        ds = data.pipeline.dataset(
            "val",
            global_batch=t_cfg.global_batch_size,
            first_step=0,
            last_step=t_cfg.eval_batches,
            **host_slice(data.batch_sharding, t_cfg.global_batch_size),
        )
        self.batches = [{k: b[k] for k in MODEL_KEYS} for b in ds.as_numpy_iterator()]
        targets = np.concatenate([b["targets"] for b in self.batches])
        if t_cfg.objective == "causal":  # the objective's next-token targets
            weights = step_lib.causal_targets(targets, tok.pad_id, tok.maskable)
            self.baseline = unigram_baseline(targets[:, 1:], weights)
        else:
            weights = np.concatenate([b["weights"] for b in self.batches])
            self.baseline = unigram_baseline(targets, weights)
        self._eval_step, self._writer = eval_step, writer
        self._batch_sharding, self._bases_per_token = data.batch_sharding, tok.bases_per_token

    def __call__(self, params: Any, step: int) -> dict[str, float]:
        totals: dict[str, float] = {}
        for host_batch in self.batches:
            batch = to_global(host_batch, self._batch_sharding)
            for k, v in jax.device_get(self._eval_step(params, batch)).items():
                totals[k] = totals.get(k, 0.0) + float(v)
        values = summarize(totals, self._bases_per_token)
        values.update(self.baseline)
        self._writer.write(step, "val", values)
        base = self.baseline
        log(
            f"[eval] step {step}: loss {values['loss']:.4f} accuracy {values['accuracy']:.4f} "
            f"(unigram {base['unigram_entropy']:.4f} / {base['unigram_accuracy']:.4f}) "
            f"bits/base {values['bits_per_base']:.4f}"
        )
        return values


# --- Training ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Run:
    """What the step loop and the final evaluation and save need."""

    config: ml_collections.ConfigDict
    data: _Data
    model_cfg: EncoderConfig
    ckpt: checkpoint.Checkpointer
    writer: MetricsWriter
    evaluate: _Evaluator


class _TrainLog:
    """Sums each step's metrics over a logging interval, checks them, and every
    `train.log_every` steps (and at the last) writes and logs them with throughput and MFU."""

    def __init__(self, run: _Run, last_step: int):
        t_cfg, window_tokens = run.config.train, run.data.window_tokens
        self._run, self._last_step = run, last_step
        self._flops_per_token = flops.train_flops_per_token(run.model_cfg, window_tokens)
        self._peak = flops.peak_flops(run.model_cfg.dtype, float(t_cfg.peak_tflops))
        if self._peak is None:
            kind = jax.devices()[0].device_kind
            log(f"MFU not reported: no peak for {kind} (set train.peak_tflops)")
        self._reset()

    def _reset(self) -> None:
        self._sums: dict[str, float] = {}
        self._start, self._steps, self._tokens = time.perf_counter(), 0, 0

    def add(self, step: int, metrics: dict) -> None:
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not math.isfinite(values["loss_sum"]):
            raise UserError(
                f"training loss became {values['loss_sum']} at step {step}; the last checkpoint "
                f"({self._run.ckpt.latest_step()}) is kept. Lower optim.learning_rate or raise "
                "warmup_steps"
            )
        if values.get("dropped_targets", 0.0) > 0:
            log(
                f"warning: step {step} dropped {values['dropped_targets']:.0f} masked targets "
                "beyond train.target_capacity; raise it (or set -1: every position)"
            )
        for k, v in values.items():
            self._sums[k] = self._sums.get(k, 0.0) + v
        self._steps += 1
        batch = self._run.config.train.global_batch_size
        self._tokens += batch * self._run.data.pipeline.tokens_at(step)  # warm-up: shorter
        if step % self._run.config.train.log_every == 0 or step == self._last_step:
            self._write(step)

    def _write(self, step: int) -> None:
        elapsed = time.perf_counter() - self._start
        out = summarize(self._sums, self._run.data.tokenizer.bases_per_token)
        out["grad_norm"] = self._sums["grad_norm"] / self._steps
        out["tokens_per_sec"] = self._tokens / elapsed
        mfu = ""
        if self._peak is not None:
            out["mfu"] = out["tokens_per_sec"] * self._flops_per_token / self._peak
            mfu = f" MFU {out['mfu']:.1%}"
        self._run.writer.write(step, "train", out)
        eta = (self._last_step - step) * elapsed / self._steps
        log(
            f"step {step}/{self._run.config.train.num_steps}: loss {out['loss']:.4f} "
            f"accuracy {out['accuracy']:.4f} grad_norm {out['grad_norm']:.3f} "
            f"{out['tokens_per_sec']:,.0f} tokens/s{mfu} ETA {_duration(eta)}"
        )
        self._reset()


def _train_steps(
    run: _Run, state: state_lib.TrainState, train_step: Callable, start_step: int
) -> state_lib.TrainState:
    """Steps `start_step + 1` to the last, evaluating and saving on schedule; on a stop
    request (SIGTERM, ...) the current step is saved and `Preempted` raised."""
    t_cfg, ckpt = run.config.train, run.ckpt
    last_step = t_cfg.num_steps
    if t_cfg.stop_at_step:
        last_step = min(last_step, t_cfg.stop_at_step)
    train_ds = run.data.pipeline.dataset(
        "train",
        global_batch=t_cfg.global_batch_size,
        first_step=start_step,
        last_step=last_step,
        **host_slice(run.data.batch_sharding, t_cfg.global_batch_size),
    )
    batches = global_batches(train_ds, run.data.batch_sharding, MODEL_KEYS)
    train_log = _TrainLog(run, last_step)
    pending: tuple[int, dict] | None = None  # step t-1's metrics, read after step t is dispatched
    stop = StopRequests()
    try:
        for step in range(start_step + 1, last_step + 1):
            state, metrics = train_step(state, next(batches))
            if pending is not None:
                train_log.add(*pending)
            pending = (step, metrics)
            signum = stop.stop_after(step)
            do_save = step % t_cfg.checkpoint_every == 0 and step != last_step
            do_eval = step % t_cfg.eval_every == 0 and step != last_step
            if do_save or do_eval or signum is not None:
                train_log.add(*pending)
                pending = None
            values = run.evaluate(state.params, step) if do_eval and signum is None else None
            if do_save or signum is not None:
                _save(run, state, step, values)
            if signum is not None:
                ckpt.wait()  # the step is on disk before the process exits
                ckpt.close()
                raise Preempted(signum, step, str(ckpt.directory))
        if pending is not None:
            train_log.add(*pending)
    finally:
        stop.close()
    return state


# --- Checkpoints and the end of the run -------------------------------------------------------


def _save(run: _Run, state: state_lib.TrainState, step: int, metrics: dict | None = None) -> None:
    t_cfg = run.config.train
    meta = {
        "step": step,
        "config": json.loads(config_lib.to_json(run.config)),
        "tokenizer": run.data.tokenizer.spec(),
        "data_position": {"next_window_index": step * t_cfg.global_batch_size},
        "mesh": dict(run.data.mesh.shape),
        "version": gfm_jax.__version__,
    }
    ranked = None
    if metrics is not None and t_cfg.best_metric:
        ranked = {t_cfg.best_metric: float(metrics[t_cfg.best_metric])}
    run.ckpt.save(step, state.params, state.opt_state, meta, ranked)


def _finish(
    run: _Run, state: state_lib.TrainState, start_step: int, final: dict[str, float]
) -> dict[str, float]:
    """Evaluates and saves the last step unless that is already on disk; waits for the saves."""
    end_step = int(jax.device_get(state.step))
    if end_step > start_step or run.ckpt.latest_step() != end_step:
        final = run.evaluate(state.params, end_step)
        _save(run, state, end_step, final)
    run.ckpt.wait()
    run.ckpt.close()
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
    "use_bias_mlp_in",
    "norm_placement",
    "embed_norm",
    "token_type_embed",
    "token_dropout",  # not a shape, but the same weights compute another function without it
)
# What configs saved before a shape key existed meant by its absence: the field's default.
SHAPE_KEY_DEFAULTS = {
    f.name: f.default
    for f in dataclasses.fields(EncoderConfig)
    if f.default is not dataclasses.MISSING
}


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

    def value(model: dict, key: str) -> Any:
        return model.get(key, SHAPE_KEY_DEFAULTS.get(key))

    changed = [
        f"model.{k}" for k in SHAPE_KEYS if value(saved["model"], k) != value(current["model"], k)
    ]
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
