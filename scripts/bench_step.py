"""The compiled MLM train step of gfm_jax on random batches, timed for the benchmarks.

Imports nothing of TensorFlow, so `scripts/bench_train.py` also runs on an accelerator machine
that has jax, flax and optax but no tf.data.
"""

from __future__ import annotations

import dataclasses
import gc
import sys
import time
from collections.abc import Callable
from typing import Any

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
from gfm_jax.train.program import BATCH_DTYPES

PAD_ID = 1  # random ids start at 5, so a batch holds padding only where `holes` puts it


@dataclasses.dataclass(frozen=True)
class MlmStep:
    """The MLM train step as the training loop builds it, not yet run: the jitted step, the
    parameter initialiser, the optimizer, the state's abstract arrays and the shardings."""

    step: Callable
    init: Callable
    tx: Any
    abstract_state: Any  # ShapeDtypeStructs with their shardings
    batch_sharding: Any

    def compile(self, batch: int, tokens: int) -> jax.stages.Compiled:
        """The step compiled ahead of time for batches of [batch, tokens]."""
        abstract_batch = {
            k: jax.ShapeDtypeStruct((batch, tokens), dt, sharding=self.batch_sharding)
            for k, dt in BATCH_DTYPES.items()
        }
        return self.step.lower(self.abstract_state, abstract_batch).compile()


def mlm_step(
    model_cfg: EncoderConfig, tokens: int, device: Any, mesh_shape: tuple = (1, 1, 1, 1)
) -> MlmStep:
    """The train step on one device (a (1, 1, 1, 1) mesh), as torch gets one in the
    comparisons, or on `mesh_shape` over a list of devices."""
    devices = device if isinstance(device, list) else [device]
    mesh = sharding.make_mesh(mesh_shape, devices)
    rules = config_lib.DEFAULT_RULES
    model = MaskedLM(model_cfg, mesh, rules)
    tx = optim.make_optimizer(config_lib.optim_defaults(), 1000)
    init = lambda rng: model.init(rng, np.zeros((1, tokens), np.int32))["params"]  # noqa: E731
    boxed = state_lib.abstract_state(init, tx, jax.random.key(0))
    shardings = sharding.tree_shardings(boxed, mesh, rules)
    batch_sharding = sharding.batch_sharding(mesh, rules)
    capacity = target_capacity(tokens, MaskingSpec())
    step = step_lib.compile_train_step(
        # As the training loop: the MLM head runs at a 6-sigma bound on the masked positions.
        step_lib.make_train_step(step_lib.mlm_objective(model, PAD_ID, 0.0, capacity), tx),
        shardings,
        batch_sharding,
    )
    abstract = state_lib.abstract_arrays(boxed, shardings)
    return MlmStep(step, init, tx, abstract, batch_sharding)


@dataclasses.dataclass
class StepTimer:
    """Calling it times `steps` compiled train steps on one fixed batch: (None, tokens/s)."""

    compiled: jax.stages.Compiled  # the step, compiled ahead of time: one compile, kept
    state: Any
    data: dict[str, jax.Array]
    steps: int

    def __call__(self) -> tuple[None, float]:
        start = time.perf_counter()
        for _ in range(self.steps):
            self.state, metrics = self.compiled(self.state, self.data)
        jax.block_until_ready(metrics)
        batch, tokens = self.data["inputs"].shape
        return None, batch * tokens * self.steps / (time.perf_counter() - start)

    def compiled_text(self) -> str:
        """The optimized HLO of the step it times."""
        return self.compiled.as_text()


def jax_step_rate(
    model_cfg: EncoderConfig, tokens: int, batch: int, steps: int, holes: bool = False
) -> StepTimer:
    """A timer of the compiled MLM train step on a random batch.

    Compiles and runs one step before returning, so the timings hold no compilation. `holes`
    puts one padding token inside each row: a mask no key-length form can express."""
    vocab = model_cfg.vocab_size
    built = mlm_step(model_cfg, tokens, jax.devices()[0])
    state, _ = state_lib.create_sharded_state(
        built.init, built.tx, jax.random.key(0), built.batch_sharding.mesh, config_lib.DEFAULT_RULES
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
    data = jax.device_put(host, built.batch_sharding)
    start = time.perf_counter()
    compiled = built.compile(batch, tokens)
    # Printed apart from the warm-up: on a GPU the 500M compile (autotuning included) is what
    # decides how many variants fit one device session.
    print(f"compiled in {time.perf_counter() - start:.0f} s", flush=True)
    state = compiled(state, data)[0]  # warm up
    jax.block_until_ready(state)
    return StepTimer(compiled, state, data, steps)


def release_device_memory() -> None:
    """Lets the next model have the memory the last one held (jax, and torch when loaded)."""
    gc.collect()
    jax.clear_caches()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
