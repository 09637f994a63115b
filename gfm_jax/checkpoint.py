"""Orbax checkpoints: the only module that imports Orbax.

Layout: `<workdir>/ckpt/<step>/{params, opt_state, meta}`. `params` is its own item, so
evaluation restores the parameters alone (onto any mesh, by passing abstract arrays that carry
the target sharding) without reading the optimizer state. `meta` is JSON: the full config, the
tokenizer, the data position and the package version.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp

from gfm_jax.errors import UserError

ITEMS = ("params", "opt_state", "meta")


def checkpoint_dir(workdir: str | pathlib.Path) -> pathlib.Path:
    return pathlib.Path(workdir).absolute() / "ckpt"


class Checkpointer:
    """Async saves every so many steps, keeping the last `keep`."""

    def __init__(self, workdir: str | pathlib.Path, keep: int = 3, create: bool = True):
        self.directory = checkpoint_dir(workdir)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, params: Any, opt_state: Any, meta: dict) -> None:
        """Starts an async save; returns once the arrays are copied off the training buffers."""
        self.manager.save(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(params),
                opt_state=ocp.args.StandardSave(opt_state),
                meta=ocp.args.JsonSave(meta),
            ),
            force=True,
        )

    def restore(self, step: int, abstract_params: Any, abstract_opt_state: Any):
        """Restores (params, opt_state, meta) of `step` into the abstract arrays' shardings."""
        out = self.manager.restore(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardRestore(abstract_params),
                opt_state=ocp.args.StandardRestore(abstract_opt_state),
                meta=ocp.args.JsonRestore(),
            ),
        )
        return out.params, out.opt_state, out.meta

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def _require_step(workdir: str | pathlib.Path, step: int | None) -> tuple[Checkpointer, int]:
    directory = checkpoint_dir(workdir)
    if not directory.is_dir():
        raise UserError(
            f"no checkpoint in {workdir}: {directory} does not exist; train first with "
            f"python -m gfm_jax.train --config configs/pretrain/tiny.py --workdir {workdir}"
        )
    ckpt = Checkpointer(workdir, create=False)
    steps = ckpt.manager.all_steps()
    if not steps:
        raise UserError(
            f"no checkpoint in {workdir}: {directory} holds no finished step; train first "
            f"(python -m gfm_jax.train ... --workdir {workdir}) or point --workdir elsewhere"
        )
    if step is None:
        step = max(steps)
    elif step not in steps:
        raise UserError(
            f"no checkpoint of step {step} in {directory}; it has steps {sorted(steps)}"
        )
    return ckpt, step


def read_meta(workdir: str | pathlib.Path, step: int | None = None) -> tuple[int, dict]:
    """The step and `meta` item of a checkpoint (latest by default)."""
    ckpt, step = _require_step(workdir, step)
    meta = ckpt.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    ckpt.close()
    return step, meta


def restore_params(
    workdir: str | pathlib.Path, abstract_params: Any, step: int | None = None
) -> tuple[int, Any]:
    """Restores only the `params` item (no optimizer state is read) into the given shardings."""
    ckpt, step = _require_step(workdir, step)
    try:
        out = ckpt.manager.restore(
            step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract_params))
        )
    except (ValueError, KeyError, FileNotFoundError) as e:
        raise UserError(
            f"checkpoint step {step} in {checkpoint_dir(workdir)} cannot be restored ({e}); "
            "it may be corrupt or from another model"
        ) from None
    finally:
        ckpt.close()
    return step, jax.tree.map(lambda x: x, out.params)
