"""What a pretraining config compiles to on a mesh: model, optimizer, sharded abstract state and
the jitted train and eval steps.

The training loop builds its program here, and so does `scripts/plan_scale.py` on compile-only
devices (TPU slices, GPU nodes not attached), so that a plan compiles exactly the step a run
executes. Nothing here reads data or touches a device.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
import optax

from gfm_jax import sharding
from gfm_jax.data import masking_spec
from gfm_jax.data.tokenizers import Tokenizer
from gfm_jax.errors import UserError
from gfm_jax.models.encoder import EncoderConfig
from gfm_jax.models.heads import MaskedLM
from gfm_jax.train import optim
from gfm_jax.train import state as state_lib
from gfm_jax.train import step as step_lib

BATCH_DTYPES = {"inputs": np.int32, "targets": np.int32, "weights": np.float32}


@dataclasses.dataclass(frozen=True)
class Program:
    """The model and optimizer, the abstract train state with its shardings, and the steps."""

    cfg: EncoderConfig
    module: MaskedLM
    tx: optax.GradientTransformation
    init_params: Callable[[jax.Array], Any]
    rng: jax.Array
    boxed: state_lib.TrainState  # abstract, parameters boxed with their logical axes
    shardings: state_lib.TrainState
    batch_sharding: jax.sharding.NamedSharding
    window_tokens: int  # CLS + tokens
    head_positions: int  # MLM head positions per window (the window for causal)
    train_step: Callable  # jitted, state donated
    eval_step: Callable

    def abstract_batch(self, global_batch: int) -> dict[str, jax.ShapeDtypeStruct]:
        shape = (global_batch, self.window_tokens)
        return {
            k: jax.ShapeDtypeStruct(shape, dt, sharding=self.batch_sharding)
            for k, dt in BATCH_DTYPES.items()
        }

    def lower_train_step(self, global_batch: int) -> jax.stages.Lowered:
        """The train step traced for a global batch, without any array: compile() it for the
        mesh's devices, attached or not."""
        state = state_lib.abstract_arrays(self.boxed, self.shardings)
        return self.train_step.lower(state, self.abstract_batch(global_batch))


def build(
    config: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
    tokenizer: Tokenizer,
    window_tokens: int,
) -> Program:
    """The program of `config` on `mesh` for windows of `window_tokens` (CLS included)."""
    t_cfg = config.train
    if t_cfg.objective not in ("mlm", "causal"):
        raise UserError(f"train.objective={t_cfg.objective!r}: choose 'mlm' or 'causal'")
    causal = t_cfg.objective == "causal"
    rules = tuple(tuple(r) for r in config.mesh.rules)
    batch_sharding = sharding.batch_sharding(mesh, rules)
    model_cfg = EncoderConfig.from_config(
        config.model, tokenizer.vocab_size, causal, tokenizer.complement_ids(), tokenizer.mask_id
    )
    module = MaskedLM(model_cfg, mesh, rules)
    window = np.zeros((1, window_tokens), np.int32)

    def init_params(rng: jax.Array) -> Any:
        return module.init(rng, window)["params"]

    tx = optim.make_optimizer(config.optim, t_cfg.num_steps)
    rng = jax.random.key(config.seed)
    boxed = state_lib.abstract_state(init_params, tx, rng)
    shardings = sharding.tree_shardings(boxed, mesh, rules)
    z_loss = float(config.optim.z_loss)
    if causal:
        capacity = window_tokens
        objective = step_lib.causal_objective(module, tokenizer.pad_id, tokenizer.maskable, z_loss)
    else:
        capacity = int(t_cfg.target_capacity)
        if capacity == 0:
            capacity = masking_spec.target_capacity(
                window_tokens, masking_spec.from_config(config.data, tokenizer.default_mask_span)
            )
        elif capacity < 0:
            capacity = window_tokens
        objective = step_lib.mlm_objective(module, tokenizer.pad_id, z_loss, capacity)
    train_step = step_lib.compile_train_step(
        step_lib.make_train_step(objective, tx, int(t_cfg.micro_batches), batch_sharding),
        shardings,
        batch_sharding,
    )
    eval_step = step_lib.compile_eval_step(objective, shardings.params, batch_sharding)
    return Program(
        model_cfg,
        module,
        tx,
        init_params,
        rng,
        boxed,
        shardings,
        batch_sharding,
        window_tokens,
        min(capacity, window_tokens),
        train_step,
        eval_step,
    )
