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
from gfm_jax.data.tokenizers import Tokenizer, from_spec
from gfm_jax.models.encoder import EncoderConfig
from gfm_jax.models.heads import MaskedLM
from gfm_jax.train import state as state_lib


@dataclasses.dataclass(frozen=True)
class Pretrained:
    step: int
    model_config: EncoderConfig
    tokenizer: Tokenizer
    meta: dict


def describe(workdir: str | pathlib.Path) -> Pretrained:
    """Reads only the `meta` item of the latest checkpoint."""
    step, meta = checkpoint.read_meta(workdir)
    tokenizer = from_spec(meta["tokenizer"])
    model = config_lib.ConfigDict(meta["config"]["model"])
    causal = meta["config"]["train"].get("objective", "mlm") == "causal"
    model_config = EncoderConfig.from_config(model, tokenizer.vocab_size, causal)
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
