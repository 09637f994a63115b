"""Hugging Face checkpoints <-> a gfm_jax workdir (an Orbax checkpoint with `meta`).

Families: `esm` (ESM-2, Nucleotide Transformer v1), `nt_v2`, `omnigenome` (esm.py) and
`dnabert2` (dnabert2.py), told apart by their config.json.

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
from gfm_jax.data.tokenizers import Tokenizer
from gfm_jax.errors import UserError
from gfm_jax.evaluate import pretrained
from gfm_jax.interop import dnabert2, esm, esm_export, sources
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


FAMILIES = ("esm", "nt_v2", "omnigenome", "dnabert2")
NEW_HEAD = (
    "initialised (seed 0): the checkpoint has none. Fine-tuning, probes and embeddings use the "
    "encoder only; vep and perplexity need a trained head"
)


def _new_head(model_cfg: EncoderConfig) -> Any:
    import flax.linen as nn

    params = MaskedLM(model_cfg).init(jax.random.key(0), np.zeros((1, 8), np.int32))["params"]
    return jax.tree.map(np.asarray, nn.meta.unbox(params)["mlm_head"])


def family_of(config: dict, path: pathlib.Path) -> str:
    """The checkpoint family a Hugging Face config.json describes."""
    model_type = config.get("model_type")
    if dnabert2.is_dnabert2(config):
        return "dnabert2"
    if model_type == "omnigenome":
        return "omnigenome"
    if "add_bias_fnn" in config:  # NT v2's configs carry it (and may lack model_type)
        return "nt_v2"
    if model_type == "esm":
        return "esm"
    raise UserError(
        f"{path}: model_type {model_type!r}; gfm_jax imports ESM-2, Nucleotide Transformer v1 and "
        "v2, OmniGenome and DNABERT-2 checkpoints"
    )


def read_checkpoint(src: pathlib.Path) -> tuple[str, Tokenizer, dict, Any]:
    """(family, tokenizer, gfm_jax model overrides, parameters) of a checkpoint directory."""
    path = src / "config.json"
    if not path.is_file():
        raise UserError(f"{src}: no config.json; give a Hugging Face checkpoint directory")
    hf_config = sources.read_json(path)
    family = family_of(hf_config, path)
    try:
        return _read_family(src, hf_config, family, path)
    except KeyError as e:
        raise UserError(f"{path}: no key {e}; is the config complete?") from None
    except ValueError as e:  # a weight's shape does not fit the config
        raise UserError(f"{src}: the weights do not fit config.json ({e})") from None


def _read_family(
    src: pathlib.Path, hf_config: dict, family: str, path: pathlib.Path
) -> tuple[str, Tokenizer, dict, Any]:
    if family == "dnabert2":
        tokenizer = dnabert2.read_tokenizer(src, hf_config)
        params = dnabert2.import_params(sources.read_weights(src), hf_config)
        return family, tokenizer, dnabert2.model_overrides(hf_config), params
    esm.check_config(hf_config, path)
    tokenizer = esm.read_tokenizer(src, hf_config)
    params = esm.import_params(sources.read_weights(src), hf_config, family)
    return family, tokenizer, esm.model_overrides(hf_config, family), params


def import_checkpoint(source: str | pathlib.Path, workdir: str | pathlib.Path) -> dict:
    """Writes `workdir`'s step-0 checkpoint from `source`: a Hugging Face directory or
    `hf:<org>/<name>[@revision]`."""
    workdir = pathlib.Path(workdir)
    if checkpoint.checkpoint_dir(workdir).exists() and any(
        checkpoint.checkpoint_dir(workdir).iterdir()
    ):
        raise UserError(f"{workdir} already holds checkpoints; import into a new workdir")
    src = sources.resolve(str(source))
    family, tokenizer, overrides, params = read_checkpoint(src)

    config = config_lib.pretrain_defaults()
    for key, value in overrides.items():
        config.model[key] = value
    config.data.tokenizer = "checkpoint"
    model_cfg = EncoderConfig.from_config(
        config.model, tokenizer.vocab_size, False, tokenizer.complement_ids(), tokenizer.mask_id
    )
    head_note = "imported"
    if "mlm_head" not in params:
        head_note = NEW_HEAD
        params["mlm_head"] = _new_head(model_cfg)
    _check_shapes(params, model_cfg, src)
    meta = {
        "step": 0,
        "config": json.loads(config_lib.to_json(config)),
        "tokenizer": tokenizer.spec(),
        "data_position": {"next_window_index": 0},
        "mesh": {},
        "version": gfm_jax.__version__,
        "imported_from": str(source),
        "family": family,
        "mlm_head": head_note,
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
        "family": family,
        "tokenizer": tokenizer.name,
        "vocab_size": tokenizer.vocab_size,
        "mlm_head": head_note,
        "parameters": int(sum(np.size(x) for x in jax.tree.leaves(params))),
        "model": overrides,
        "init_from_flags": [*flags, "--config.data.tokenizer=checkpoint"],
    }


def export_checkpoint(
    workdir: str | pathlib.Path, out: str | pathlib.Path, family: str = "auto"
) -> dict:
    """Writes the latest checkpoint of `workdir` as a Hugging Face directory `out`, in the
    layout of `family` (auto: the family it was imported from, else DNABERT-2's for a post-LN
    model and ESM's otherwise)."""
    loaded = pretrained.load(workdir)
    params = jax.tree.map(np.asarray, loaded.params)
    meta = loaded.pretrained.meta
    model = meta["config"]["model"]
    if family == "auto":
        post = model.get("norm_placement") == "post"
        family = meta.get("family") or ("dnabert2" if post else "esm")
    if family not in FAMILIES:
        raise UserError(f"--family={family!r}: choose auto or one of {', '.join(FAMILIES)}")
    out = pathlib.Path(out)
    if family == "dnabert2":
        state, hf_config = dnabert2.export_state(params, model, loaded.tokenizer)
        write_tokenizer = dnabert2.write_tokenizer
    else:
        state, hf_config = esm_export.export_state(params, model, loaded.tokenizer, family)
        write_tokenizer = esm_export.write_tokenizer
    sources.write_checkpoint(out, state, hf_config)
    write_tokenizer(out, loaded.tokenizer)
    return {
        "out": str(out),
        "family": family,
        "step": loaded.pretrained.step,
        "tensors": len(state),
    }
