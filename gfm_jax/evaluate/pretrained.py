"""Load a pretrained masked-LM from a workdir: its meta (model shape, tokenizer) and params only."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from gfm_jax import checkpoint, sharding
from gfm_jax import config as config_lib
from gfm_jax.data.tokenizer_choice import from_spec
from gfm_jax.data.tokenizers import Tokenizer
from gfm_jax.models.encoder import EncoderConfig
from gfm_jax.models.heads import MaskedLM
from gfm_jax.train import state as state_lib


@dataclasses.dataclass(frozen=True)
class Pretrained:
    step: int
    model_config: EncoderConfig
    tokenizer: Tokenizer
    meta: dict


# Model keys an evaluation may set apart from the checkpoint's: they change no parameter.
RUN_KEYS = ("rope_scaling", "rope_factor")


def describe(workdir: str | pathlib.Path, model_overrides: dict | None = None) -> Pretrained:
    """Reads only the `meta` item of the latest checkpoint."""
    return from_meta(*checkpoint.read_meta(workdir), model_overrides)


def from_meta(step: int, meta: dict, model_overrides: dict | None = None) -> Pretrained:
    """The model and tokenizer a checkpoint's `meta` item describes; `model_overrides` sets
    keys of RUN_KEYS (context extension) for this run."""
    tokenizer = from_spec(meta["tokenizer"])
    model = config_lib.ConfigDict({**meta["config"]["model"], **(model_overrides or {})})
    causal = meta["config"]["train"].get("objective", "mlm") == "causal"
    model_config = EncoderConfig.from_config(
        model, tokenizer.vocab_size, causal, tokenizer.complement_ids(), tokenizer.mask_id
    )
    return Pretrained(step, model_config, tokenizer, meta)


def load_params(
    workdir: str | pathlib.Path, pretrained: Pretrained, mesh: Mesh, rules: sharding.Rules
) -> Any:
    """The full masked-LM parameters of `pretrained.step`, sharded on `mesh` by `rules`.

    Only the `params` item is read: no optimizer state is touched.
    """
    mlm = MaskedLM(pretrained.model_config, mesh, rules)
    example = np.zeros((1, 8), np.int32)
    boxed = jax.eval_shape(lambda r: mlm.init(r, example)["params"], jax.random.key(0))
    abstract = state_lib.abstract_arrays(boxed, sharding.tree_shardings(boxed, mesh, rules))
    _, params = checkpoint.restore_params(workdir, abstract, pretrained.step)
    return params


@dataclasses.dataclass(frozen=True)
class Loaded:
    """A pretrained masked-LM ready to run: its description, mesh and parameters."""

    pretrained: Pretrained
    mesh: Mesh
    rules: sharding.Rules
    params: Any  # the full MaskedLM parameters (encoder + mlm_head)

    @property
    def tokenizer(self) -> Tokenizer:
        return self.pretrained.tokenizer


def load(
    workdir: str | pathlib.Path,
    mesh_shape: tuple = (-1, 1, 1, 1),
    model_overrides: dict | None = None,
) -> Loaded:
    """The latest checkpoint of `workdir`, params only, on a mesh of every local device
    (`mesh_shape`; a `sequence` axis > 1 shards long windows over the devices)."""
    if jax.process_count() > 1:
        from gfm_jax.errors import UserError

        raise UserError(
            "embed / probe / vep / perplexity run in one process; launch them without "
            "--num_processes (fine-tuning is the multi-process mode)"
        )
    pre = describe(workdir, model_overrides)
    mesh = sharding.make_mesh(mesh_shape)
    rules = config_lib.DEFAULT_RULES
    return Loaded(pre, mesh, rules, load_params(workdir, pre, mesh, rules))


def batch_multiple(mesh: Mesh) -> int:
    """Batches must split evenly over the data and fsdp axes."""
    return int(mesh.shape["data"] * mesh.shape["fsdp"])


def run_batched(fn, loaded: Loaded, arrays: dict[str, np.ndarray], batch_size: int):
    """Applies a jitted `fn(params, batch)` over rows of `arrays` in fixed-size batches.

    Each batch is split over the mesh's batch axes (not replicated: every device computes its
    own rows). The last batch is padded (by repeating row 0) to keep one compiled shape; the
    padded rows are cut from the output, which is returned as one numpy array.
    """
    n = len(next(iter(arrays.values())))
    multiple = batch_multiple(loaded.mesh)
    step = -(-min(batch_size, n) // multiple) * multiple
    batch_sharding = sharding.batch_sharding(loaded.mesh, loaded.rules)
    outputs = []
    for first in range(0, n, step):
        rows = np.arange(first, min(first + step, n))
        rows = np.concatenate([rows, np.zeros(step - len(rows), rows.dtype)])
        batch = jax.device_put({k: v[rows] for k, v in arrays.items()}, batch_sharding)
        out = fn(loaded.params, batch)
        outputs.append(np.asarray(out)[: min(step, n - first)])
    return np.concatenate(outputs) if outputs else np.zeros((0,))


def window(loaded: Loaded) -> tuple[int, int]:
    """(bases, tokens without CLS) of the checkpoint's pretraining windows, by the same rule as
    WindowPipeline: `data.window_tokens` when set, else `data.window_len`."""
    data = loaded.pretrained.meta["config"]["data"]
    tokens = int(data["window_tokens"])
    if tokens > 0:
        return loaded.tokenizer.bases_for_tokens(tokens), tokens
    bases = int(data["window_len"])
    return bases, loaded.tokenizer.num_tokens(bases)
