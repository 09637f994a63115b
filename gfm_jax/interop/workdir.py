"""Hugging Face checkpoint directory <-> a gfm_jax workdir (an Orbax checkpoint with `meta`).

An imported workdir holds one checkpoint, step 0, with the parameters, a fresh AdamW state and
the `meta` every evaluation mode reads (model shape, tokenizer). Evaluate it with
`--workdir`, or start training from it with `--config.train.init_from` (params only, a fresh
optimizer), as for any pretraining workdir.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax
import numpy as np

import gfm_jax
from gfm_jax import checkpoint
from gfm_jax import config as config_lib
from gfm_jax.errors import UserError
from gfm_jax.evaluate import pretrained
from gfm_jax.interop import esm
from gfm_jax.models.encoder import EncoderConfig
from gfm_jax.models.heads import MaskedLM
from gfm_jax.train import optim


def _check_shapes(params: Any, model_cfg: EncoderConfig, src: pathlib.Path) -> None:
    import flax.linen as nn

    expected = jax.eval_shape(
        lambda r: nn.meta.unbox(MaskedLM(model_cfg).init(r, np.zeros((1, 8), np.int32))["params"]),
        jax.random.key(0),
    )
    want = {
        jax.tree_util.keystr(p): x.shape for p, x in jax.tree_util.tree_leaves_with_path(expected)
    }
    got = {
        jax.tree_util.keystr(p): np.shape(x) for p, x in jax.tree_util.tree_leaves_with_path(params)
    }
    if want != got:
        diff = sorted(set(want.items()) ^ set(got.items()))[:6]
        raise UserError(f"{src}: the imported weights do not form the gfm_jax model: {diff}")


def import_checkpoint(src: str | pathlib.Path, workdir: str | pathlib.Path) -> dict:
    """Writes `workdir`'s step-0 checkpoint from the Hugging Face directory `src`."""
    src, workdir = pathlib.Path(src), pathlib.Path(workdir)
    if checkpoint.checkpoint_dir(workdir).exists() and any(
        checkpoint.checkpoint_dir(workdir).iterdir()
    ):
        raise UserError(f"{workdir} already holds checkpoints; import into a new workdir")
    hf_config = esm.read_config(src)
    vocab = esm.read_vocab(src)
    tokenizer = esm.tokenizer_for_vocab(vocab, src)
    params = esm.import_params(esm.read_weights(src), hf_config, vocab, tokenizer)

    config = config_lib.pretrain_defaults()
    overrides = esm.model_overrides(hf_config, tokenizer)
    for key, value in overrides.items():
        config.model[key] = value
    config.data.tokenizer = tokenizer.name
    model_cfg = EncoderConfig.from_config(
        config.model, tokenizer.vocab_size, complement=tokenizer.complement_ids()
    )
    _check_shapes(params, model_cfg, src)
    meta = {
        "step": 0,
        "config": json.loads(config_lib.to_json(config)),
        "tokenizer": tokenizer.spec(),
        "data_position": {"next_window_index": 0},
        "mesh": {},
        "version": gfm_jax.__version__,
        "imported_from": str(src),
    }
    # A fresh optimizer state (step 0), so the workdir is a complete checkpoint: training can
    # continue in it directly with a matching config, or start elsewhere with init_from.
    opt_state = optim.make_optimizer(config.optim, int(config.train.num_steps)).init(params)
    ckpt = checkpoint.Checkpointer(workdir)
    ckpt.save(0, params, opt_state, meta)
    ckpt.wait()
    ckpt.close()
    flags = [f"--config.model.{k}={v}" for k, v in overrides.items() if k != "name"]
    return {
        "workdir": str(workdir),
        "tokenizer": tokenizer.name,
        "parameters": int(sum(np.size(x) for x in jax.tree.leaves(params))),
        "model": overrides,
        "init_from_flags": [*flags, f"--config.data.tokenizer={tokenizer.name}"],
    }


def export_checkpoint(workdir: str | pathlib.Path, out: str | pathlib.Path) -> dict:
    """Writes the latest checkpoint of `workdir` as a Hugging Face ESM directory `out`."""
    loaded = pretrained.load(workdir)
    params = jax.tree.map(np.asarray, loaded.params)
    model = loaded.pretrained.meta["config"]["model"]
    state, hf_config = esm.export_state(params, model, loaded.tokenizer)
    esm.write_hf_dir(pathlib.Path(out), state, hf_config, loaded.tokenizer)
    return {"out": str(out), "step": loaded.pretrained.step, "tensors": len(state)}
