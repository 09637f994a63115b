"""Orbax checkpoints: the only module that imports Orbax.

Layout: `<workdir>/ckpt/<step>/{params, opt_state, meta}`. `params` is its own item, so
evaluation restores the parameters alone (onto any mesh, by passing abstract arrays that carry
the target sharding) without reading the optimizer state. `meta` is JSON: the full config, the
tokenizer, the data position, the mesh and the package version.

Saves are asynchronous and atomic: Orbax writes a step into a temporary directory and renames
it when complete, so a process killed mid-save leaves the previous steps intact and the partial
one is never listed. Retention keeps the last `keep` steps plus the best by a held-out metric.
A step that cannot be read (truncated or corrupted files) raises `CorruptCheckpoint` naming it.
"""

from __future__ import annotations

import pathlib
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint.checkpoint_managers import preservation_policy

from gfm_jax.errors import UserError

ITEMS = ("params", "opt_state", "meta")
# What Orbax / TensorStore raise for a step whose files are missing, truncated or garbled:
# many types, down to a bare Exception for a damaged array file; any of them means the step
# cannot be read (an interrupt is not an Exception, so it still stops the run).
READ_ERRORS = (Exception,)


class CorruptCheckpoint(UserError):
    """A checkpoint step exists but cannot be read."""

    def __init__(
        self, directory: pathlib.Path, step: int, cause: Exception, earlier: int | None = None
    ):
        text = str(cause).split(" See full TensorStore details")[0]
        reason = text.splitlines()[0][:200] if text else type(cause).__name__
        where = directory / str(step)
        fix = (
            f"delete {where} to use step {earlier} (training can instead resume from step "
            f"{earlier} with --config.train.fallback_on_corrupt=True)"
            if earlier is not None
            else f"no earlier step is kept: delete {where} and train again"
        )
        super().__init__(
            f"checkpoint step {step} in {directory} cannot be restored ({reason}); it is "
            f"corrupt, truncated or from another model; {fix}"
        )
        self.step = step


def checkpoint_dir(workdir: str | pathlib.Path) -> pathlib.Path:
    return pathlib.Path(workdir).absolute() / "ckpt"


class Checkpointer:
    """Async saves; keeps the last `keep` steps, plus the best `keep_best` by `best_metric` (a
    held-out metric passed to `save`; `best_mode` "min" for losses, "max" for accuracies)."""

    def __init__(
        self,
        workdir: str | pathlib.Path,
        keep: int = 3,
        create: bool = True,
        best_metric: str = "",
        best_mode: str = "min",
        keep_best: int = 1,
    ):
        self.directory = checkpoint_dir(workdir)
        policies = [preservation_policy.LatestN(n=keep)]
        if best_metric:
            if best_mode not in ("min", "max"):
                raise UserError(f"train.best_mode={best_mode!r}: choose 'min' or 'max'")
            policies.append(
                preservation_policy.BestN(
                    get_metric_fn=lambda metrics: metrics[best_metric],
                    reverse=best_mode == "min",  # BestN keeps the end of the sorted list
                    n=keep_best,
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(
            create=create,
            preservation_policy=preservation_policy.AnyPreservationPolicy(policies),
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def set_aside(self, step: int) -> pathlib.Path:
        """Renames an unreadable step to `<step>.corrupt` (kept for inspection, no longer a
        step), so training can resume from an earlier one and later save this step anew."""
        source = self.directory / str(step)
        target = self.directory / f"{step}.corrupt"
        if jax.process_index() == 0:
            if target.exists():
                shutil.rmtree(target)
            source.rename(target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"set aside checkpoint {step}")
        self.manager.reload()
        return target

    def save(
        self, step: int, params: Any, opt_state: Any, meta: dict, metrics: dict | None = None
    ) -> None:
        """Starts an async save; returns once the arrays are copied off the training buffers.

        `metrics` (held-out values at this step) rank the step for `best_metric` retention."""
        self.manager.save(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(params),
                opt_state=ocp.args.StandardSave(opt_state),
                meta=ocp.args.JsonSave(meta),
            ),
            metrics=metrics,
            force=True,
        )

    def save_params(self, step: int, params: Any, meta: dict) -> None:
        """Saves `params` and `meta` only (no optimizer state: a fine-tuned or imported model)
        and waits until they are written."""
        self.manager.save(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(params), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )
        self.manager.wait_until_finished()

    def _read(self, step: int, **items: Any) -> Any:
        """Restores the named items of `step`; an unreadable step raises CorruptCheckpoint."""
        try:
            return self.manager.restore(step, args=ocp.args.Composite(**items))
        except READ_ERRORS as e:
            earlier = [s for s in self.manager.all_steps() if s < step]
            raise CorruptCheckpoint(self.directory, step, e, max(earlier, default=None)) from None

    def restore(self, step: int, abstract_params: Any, abstract_opt_state: Any):
        """Restores (params, opt_state, meta) of `step` into the abstract arrays' shardings."""
        out = self._read(
            step,
            params=ocp.args.StandardRestore(abstract_params),
            opt_state=ocp.args.StandardRestore(abstract_opt_state),
            meta=ocp.args.JsonRestore(),
        )
        return out.params, out.opt_state, out.meta

    def read_meta(self, step: int) -> dict:
        """The `meta` item of `step` alone."""
        return self._read(step, meta=ocp.args.JsonRestore()).meta

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
    try:
        return step, ckpt.read_meta(step)
    finally:
        ckpt.close()


def restore_params(
    workdir: str | pathlib.Path, abstract_params: Any, step: int | None = None
) -> tuple[int, Any]:
    """Restores only the `params` item (no optimizer state is read) into the given shardings."""
    ckpt, step = _require_step(workdir, step)
    try:
        out = ckpt._read(step, params=ocp.args.StandardRestore(abstract_params))
    finally:
        ckpt.close()
    return step, jax.tree.map(lambda x: x, out.params)
