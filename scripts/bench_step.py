"""The compiled MLM train step of gfm_jax on random batches, timed for the benchmarks.

Imports nothing of TensorFlow, so `scripts/bench_train.py` also runs on an accelerator machine
that has jax, flax and optax but no tf.data.
"""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Callable

import jax
import numpy as np

from gfm_jax import config as config_lib
from gfm_jax import sharding
from gfm_jax.data.masking_spec import MaskingSpec, target_capacity
from gfm_jax.models.encoder import EncoderConfig
from gfm_jax.models.heads import MaskedLM
from gfm_jax.train import optim
from gfm_jax.train import state as state_lib
from gfm_jax.train import step as step_lib

PAD_ID = 1  # random ids start at 5, so a batch holds padding only where `holes` puts it


def jax_step_rate(
    model_cfg: EncoderConfig, tokens: int, batch: int, steps: int, holes: bool = False
) -> Callable[[], tuple[None, float]]:
    """A function measuring (None, tokens/s) of the compiled MLM train step on random batches.

    Compiles and runs one step before returning, so the timings hold no compilation. `holes`
    puts one padding token inside each row: a mask no key-length form can express."""
    vocab = model_cfg.vocab_size
    capacity = target_capacity(tokens, MaskingSpec())
    mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])  # one device, as torch gets
    rules = config_lib.DEFAULT_RULES
    model = MaskedLM(model_cfg, mesh, rules)
    tx = optim.make_optimizer(config_lib.optim_defaults(), 1000)
    init = lambda rng: model.init(rng, np.zeros((1, tokens), np.int32))["params"]  # noqa: E731
    state, shardings = state_lib.create_sharded_state(init, tx, jax.random.key(0), mesh, rules)
    batch_sharding = sharding.batch_sharding(mesh, rules)
    step = step_lib.compile_train_step(
        # As the training loop: the MLM head runs at a 6-sigma bound on the masked positions.
        step_lib.make_train_step(step_lib.mlm_objective(model, PAD_ID, 0.0, capacity), tx),
        shardings,
        batch_sharding,
    )
    rng = np.random.default_rng(0)
    host = {
        "inputs": rng.integers(5, vocab, (batch, tokens)).astype(np.int32),
        "targets": rng.integers(5, vocab, (batch, tokens)).astype(np.int32),
        "weights": (rng.random((batch, tokens)) < 0.15).astype(np.float32),
    }
    if holes:
        host["inputs"][:, tokens // 2] = PAD_ID
        host["weights"][:, tokens // 2] = 0.0
    data = jax.device_put(host, batch_sharding)
    holder = {"state": step(state, data)[0]}  # compile and warm up
    jax.block_until_ready(holder["state"])

    def measure() -> tuple[None, float]:
        start = time.perf_counter()
        for _ in range(steps):
            holder["state"], m = step(holder["state"], data)
        jax.block_until_ready(m)
        return None, batch * tokens * steps / (time.perf_counter() - start)

    return measure


def release_device_memory() -> None:
    """Lets the next model have the memory the last one held (jax, and torch when loaded)."""
    gc.collect()
    jax.clear_caches()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
