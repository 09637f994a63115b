"""Fine-tuned models on disk: save the trained parameters, load them back to predict, and merge
adapters into the base weights.

Layout: `<dir>/ckpt/0/{params, meta}` (the checkpoint module's layout, step 0). `params` holds
only what fine-tuning trained: the head, plus the adapters (LoRA / IA3) or the whole encoder
(full fine-tuning); a frozen or adapted encoder's base weights stay in the pretraining workdir
that `meta` names (`base_workdir`, `base_step`), so an adapter costs its own size on disk.
`merge` folds the adapters into the base weights and writes a standalone checkpoint of the
full-fine-tuning kind, which loads and predicts without the base workdir.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import shutil
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from flax import traverse_util
from jax.experimental import multihost_utils

from gfm_jax import checkpoint, sharding
from gfm_jax import config as config_lib
from gfm_jax.data import fasta
from gfm_jax.data.tokenizers import Tokenizer, get_tokenizer
from gfm_jax.errors import UserError
from gfm_jax.evaluate import embed, pretrained
from gfm_jax.models import adapters
from gfm_jax.models.cnn import CnnClassifier
from gfm_jax.models.heads import SequenceClassifier, TokenClassifier
from gfm_jax.train import state as state_lib


def _names(path: Sequence[Any]) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def trainable_fn(mode: str):
    """`trainable(path) -> bool` for a training mode: full (every parameter), frozen (all but
    the encoder), lora / ia3 (all but the encoder, plus the encoder's adapters)."""

    def trainable(path: Sequence[Any]) -> bool:
        names = _names(path)
        if mode == "full" or names[0] != "encoder":
            return True
        return mode in ("lora", "ia3") and adapters.is_adapter_path(names)

    return trainable


def adapter_of(f_cfg: ml_collections.ConfigDict) -> adapters.Adapter:
    return adapters.Adapter(
        f_cfg.adapter, int(f_cfg.lora_rank), float(f_cfg.lora_alpha), config_lib.lora_targets(f_cfg)
    )


def training_mode(f_cfg: ml_collections.ConfigDict, model_name: str) -> str:
    """full | frozen (head only) | the adapter's name (adapters and head)."""
    if model_name == "cnn":
        return "full"
    if f_cfg.adapter != "none":
        return str(f_cfg.adapter)
    return "frozen" if f_cfg.freeze_backbone else "full"


def stored_mode(model_name: str, mode: str) -> str:
    """What a saved fine-tune keeps: the trained parameters on a pretrained base (whose
    workdir holds the rest), every parameter otherwise (a random encoder is not on disk)."""
    return mode if model_name == "pretrained" else "full"


def merge_trees(a: dict, b: dict) -> dict:
    """The union of two nested dicts' leaves (b wins where both have one)."""
    flat = {**traverse_util.flatten_dict(a), **traverse_util.flatten_dict(b)}
    return traverse_util.unflatten_dict(flat)


def _trained(params: Any, trainable) -> dict:
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({k: v for k, v in flat.items() if trainable(k)})


def trained_sizes(state: Any, trainable) -> dict[str, int]:
    """The number of trained parameters and the optimizer state's bytes."""
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(_trained(state.params, trainable)))
    opt_bytes = sum(int(x.nbytes) for x in jax.tree.leaves(state.opt_state) if hasattr(x, "nbytes"))
    return {"trainable_params": count, "optimizer_state_bytes": opt_bytes}


def meta_of(
    config: ml_collections.ConfigDict, task: Any, model_name: str, workdir: str, pre: Any,
    tokenizer: Tokenizer,
) -> dict:  # fmt: skip
    """What a saved fine-tuned model needs to be rebuilt: the task's labels, the fine-tuning
    config, and the base checkpoint's meta (model shape, tokenizer)."""
    return {
        "kind": "finetuned",
        "model": model_name,
        "task": {"name": task.name, "kind": task.kind, "label_names": list(task.label_names)},
        "config": config.to_dict(),
        "tokenizer": tokenizer.spec(),
        "stored": stored_mode(model_name, training_mode(config.finetune, model_name)),
        "base_workdir": str(pathlib.Path(workdir).absolute()) if pre else None,
        "base_step": pre.step if pre else None,
        "base_meta": pre.meta if pre else None,
    }


def save(directory: str | pathlib.Path, params: Any, meta: dict) -> None:
    """Writes the part of `params` that `meta["stored"]` names, and `meta`, replacing a model
    saved there before (a rerun of the same run). Every process takes part."""
    ckpt_dir = checkpoint.checkpoint_dir(directory)
    if jax.process_index() == 0 and ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"replace {ckpt_dir}")
    ckpt = checkpoint.Checkpointer(directory)
    try:
        ckpt.save_params(0, _trained(params, trainable_fn(meta["stored"])), meta)
    finally:
        ckpt.close()


@dataclasses.dataclass(frozen=True)
class Finetuned:
    """A fine-tuned model ready to predict: its module, full parameters and tokenizer."""

    model: Any
    params: Any
    tokenizer: Tokenizer
    meta: dict
    mesh: Any
    rules: Any

    @property
    def label_names(self) -> list[str]:
        return self.meta["task"]["label_names"]

    @property
    def mode(self) -> str:
        """How it was fine-tuned: full, frozen, lora or ia3."""
        return _mode(self.meta)

    @functools.cached_property
    def _apply(self):
        return jax.jit(lambda p, b: self.model.apply({"params": p}, b["ids"], b["mask"]))

    def predict(self, sequences: Sequence[str], strand: str = "forward", batch_size: int = 64):
        """Model outputs [N, C] (class logits, or [N, 1] regression values) of `sequences`;
        `strand="both"` averages each with its reverse complement's."""
        if strand not in config_lib.STRANDS:
            raise UserError(f"strand={strand!r}: choose forward or both")
        if strand == "both" and self.meta["config"]["task"].get("stranded", True):
            task = self.meta["task"]["name"]
            raise UserError(f"strand='both': the labels of task {task!r} depend on the strand")
        names = [f"sequence {i}" for i in range(len(sequences))]
        config = getattr(self.model, "config", None)
        limit = config.max_positions if getattr(config, "position", "") == "learned" else 0

        def run(texts: Sequence[str]) -> np.ndarray:
            encoded = embed.encode(self.tokenizer, [t.upper() for t in texts], names)

            def outputs(batch: dict, size: int) -> np.ndarray:
                return pretrained.run_batched(self._apply, self, batch, size)

            return embed.bucketed(encoded, outputs, batch_size, self.tokenizer.pad_id, limit)

        out = run(sequences)
        if strand == "both":
            out = (out + run([fasta.reverse_complement(s) for s in sequences])) / 2
        return out

    def predict_labels(self, sequences: Sequence[str], strand: str = "forward") -> list[str]:
        """The most likely class name of each sequence (classification tasks)."""
        if not self.label_names or self.meta["task"]["kind"] != "classification":
            raise UserError("predict_labels is for classification; use predict for this task")
        return [self.label_names[i] for i in self.predict(sequences, strand).argmax(-1)]


def _model(meta: dict, mesh: Any, rules: Any) -> tuple[Any, Tokenizer]:
    """The classifier module of a fine-tuned meta, and its tokenizer."""

    config = config_lib.ConfigDict(meta["config"])
    task = meta["task"]
    per_token = task["kind"] == "token_classification"
    outputs = 1 if task["kind"] == "regression" else len(task["label_names"])
    if meta["model"] == "cnn":
        tokenizer = get_tokenizer("char")
        return CnnClassifier.from_config(
            config.cnn, tokenizer.vocab_size, outputs, per_token
        ), tokenizer
    pre = pretrained.from_meta(meta["base_step"] or 0, meta["base_meta"])
    model_config = dataclasses.replace(pre.model_config, adapter=adapter_of(config.finetune))
    if per_token:
        return TokenClassifier(model_config, outputs, mesh, rules), pre.tokenizer
    return SequenceClassifier(
        model_config, outputs, config.finetune.pooling, mesh, rules
    ), pre.tokenizer


def read_meta(directory: str | pathlib.Path) -> tuple[pathlib.Path, dict]:
    """(the model's directory, its meta) from the directory or from its run JSON."""
    directory = pathlib.Path(directory)
    if directory.suffix == ".json" and directory.is_file():
        saved = json.loads(directory.read_text()).get("checkpoint")
        if not saved:
            raise UserError(f"{directory} names no saved model (it ran with finetune.save=False)")
        directory = pathlib.Path(saved)
    if not checkpoint.checkpoint_dir(directory).is_dir():
        raise UserError(
            f"{directory} holds no fine-tuned model; give the directory `evaluate finetune` "
            "wrote beside its run JSON (the JSON's 'checkpoint'), or one `evaluate merge` wrote"
        )
    _, meta = checkpoint.read_meta(directory)
    if meta.get("kind") != "finetuned":
        raise UserError(
            f"{directory} is not a fine-tuned model (no fine-tuning meta); give a directory "
            "that finetune wrote (the run JSON's 'checkpoint')"
        )
    return directory, meta


def load(
    directory: str | pathlib.Path,
    mesh_shape: tuple = (-1, 1, 1, 1),
    base_workdir: str | None = None,
) -> Finetuned:
    """A saved fine-tuned model (or its run JSON); an adapter or frozen-backbone fine-tune
    reads its base encoder from the workdir it was trained on (or `base_workdir`)."""
    directory, meta = read_meta(directory)
    mesh = sharding.make_mesh(mesh_shape)
    rules = config_lib.DEFAULT_RULES
    model, tokenizer = _model(meta, mesh, rules)
    example = np.zeros((1, 8), np.int32)
    boxed = jax.eval_shape(
        lambda r: model.init(r, example, example > -1)["params"], jax.random.key(0)
    )
    abstract = state_lib.abstract_arrays(boxed, sharding.tree_shardings(boxed, mesh, rules))
    _, params = checkpoint.restore_params(
        directory, _trained(abstract, trainable_fn(meta["stored"]))
    )
    if meta["stored"] != "full":
        base = _base_encoder(meta, base_workdir or meta["base_workdir"], mesh, rules)
        params = merge_trees({"encoder": base}, params)
    return Finetuned(model, params, tokenizer, meta, mesh, rules)


def _base_encoder(meta: dict, workdir: str, mesh: Any, rules: Any) -> Any:
    pre = pretrained.from_meta(meta["base_step"], meta["base_meta"])
    try:
        return pretrained.load_params(workdir, pre, mesh, rules)["encoder"]
    except UserError as e:
        raise UserError(
            f"this fine-tune keeps its head and adapters only; its base encoder ({workdir}, "
            f"step {meta['base_step']}) cannot be read: {e}. Put that step back, or pass "
            "base_workdir= a copy of it"
        ) from None


def _mode(meta: dict) -> str:
    return training_mode(config_lib.ConfigDict(meta["config"]).finetune, meta["model"])


def merge(directory: str | pathlib.Path, out: str | pathlib.Path) -> dict:
    """Folds a LoRA / IA3 fine-tune's adapters into its base encoder and writes a standalone
    fine-tuned checkpoint (full kind: encoder + head, no adapters) to `out`."""
    directory, meta = read_meta(directory)
    mode = _mode(meta)
    if mode not in ("lora", "ia3"):
        raise UserError(f"{directory} was fine-tuned without an adapter ({mode}); nothing to merge")
    if pathlib.Path(out).exists():
        raise UserError(f"--out {out} exists; give a new directory for the merged model")
    loaded = load(directory)
    stacked = loaded.model.config.scan_layers
    adapter = loaded.model.config.adapter
    params = nn.meta.unbox(jax.device_get(loaded.params))
    encoder = adapters.merge(params["encoder"], adapter, stacked)
    merged = {**params, "encoder": encoder}
    meta = dict(loaded.meta)
    config = config_lib.ConfigDict(meta["config"])
    config.finetune.adapter = "none"
    config.finetune.freeze_backbone = False
    meta.update(
        config=config.to_dict(), stored="full", merged_from=str(pathlib.Path(directory).absolute())
    )
    save(out, merged, meta)
    return {"merged": str(out), "from": str(directory), "adapter": mode}
