"""Benchmark suites: many tasks in one public directory layout, run with one config.

A suite config (configs/suites/*.py) is a fine-tuning config plus `suite`: its name, the local
`root` directory (this project never downloads; docs/evaluation.md gives each layout), the
reader (`task.format`) and the task folders relative to the root. `task_configs` gives one
fine-tuning config per task.
"""

from __future__ import annotations

import copy
import pathlib

import ml_collections

from gfm_jax.errors import UserError


def task_configs(config: ml_collections.ConfigDict) -> list[ml_collections.ConfigDict]:
    suite = config.suite
    if not suite.root:
        raise UserError(
            f"suite {suite.name}: set --config.suite.root to the directory holding its tasks "
            "(layout: docs/evaluation.md)"
        )
    root = pathlib.Path(suite.root)
    if not root.is_dir():
        raise UserError(f"suite.root={suite.root!r} is not a directory")
    names = tuple(suite.tasks)
    unknown = sorted(set(suite.only) - set(names))
    if unknown:
        raise UserError(f"suite.only names {unknown}, not tasks of {suite.name}: {list(names)}")
    missing = [t for t in names if not (root / t).is_dir() and (not suite.only or t in suite.only)]
    if missing:
        raise UserError(
            f"suite {suite.name}: {len(missing)} task folders missing under {root}: {missing[:8]}; "
            "set --config.suite.only to run a subset"
        )
    configs = []
    for name in names:
        if suite.only and name not in suite.only:
            continue
        c = copy.deepcopy(config)
        c.task.path = str(root / name)
        c.task.name = name.replace("/", "_")
        configs.append(c)
    return configs


def suite_config(
    name: str, fmt: str, tasks: tuple[str, ...], **task_overrides
) -> ml_collections.ConfigDict:
    """A fine-tuning config with a `suite` block; shared by configs/suites/*.py."""
    from gfm_jax.config import finetune_defaults

    c = finetune_defaults()
    c.unlock()
    c.suite = ml_collections.ConfigDict({"name": name, "root": "", "tasks": tasks, "only": ()})
    c.task.format = fmt
    c.task.test_rows = ()
    for key, value in task_overrides.items():
        c.task[key] = value
    c.lock()
    return c
