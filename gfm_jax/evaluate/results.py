"""Evaluation outputs: one JSON per run, and per-group summaries (mean +- sd over seeds).

A run is one (task, mode, model, seed); its JSON holds the metrics and everything that
reproduces them (config, split sizes, notes, checkpoint step). `summarize` groups runs by
(task, mode, model) and writes `summary.json`, `summary.csv`, `summary.md` and `summary.png`
(the selection metric's mean +- sd per model, one panel per task).

    python -m gfm_jax.evaluate aggregate runs/a/eval runs/b/eval --out results/
"""

from __future__ import annotations

import csv
import json
import os
import pathlib
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from gfm_jax.errors import UserError

# Column order of the tables; a metric a task kind lacks is left out.
METRICS = (
    "accuracy",
    "mcc",
    "macro_f1",
    "auroc",
    "spearman",
    "pearson",
    "r2",
    "mse",
    "mae",
    "loss",
    "bits_per_base",
)


def run_file(out_dir: str | pathlib.Path, result: dict[str, Any]) -> pathlib.Path:
    name = f"{result['task']}_{result['mode']}_{result['model']}_seed{result['seed']}.json"
    return pathlib.Path(out_dir) / name


def write_run(out_dir: str | pathlib.Path, result: dict[str, Any]) -> pathlib.Path:
    path = run_file(out_dir, result)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")  # a stop mid-write leaves no half JSON
    partial.write_text(json.dumps(result, indent=1, default=float))
    os.replace(partial, path)
    return path


def load_runs(paths: Iterable[str | pathlib.Path]) -> list[dict[str, Any]]:
    """Every run JSON under the given files or directories (summaries are skipped)."""
    runs = []
    for p in map(pathlib.Path, paths):
        if not p.exists():
            raise UserError(f"{p} not found; give run JSON files or directories holding them")
        # Saved fine-tuned models (`<run>/ckpt/...`) sit beside the JSONs; their files are not runs.
        files = (
            [p] if p.is_file() else [f for f in sorted(p.rglob("*.json")) if "ckpt" not in f.parts]
        )
        for f in files:
            if f.name.startswith("summary"):
                continue
            try:
                r = json.loads(f.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise UserError(f"{f}: not a run JSON ({e}); delete it or rerun that run") from None
            if isinstance(r, dict) and {"mode", "model", "seed", "test"} <= set(r):
                runs.append(r)
    if not runs:
        raise UserError(f"no run JSON files under {[str(p) for p in paths]}")
    return runs


def source(run: dict[str, Any]) -> str:
    """Which pretrained model a run used: its workdir's name ('' for the CNN, which has none)."""
    return "" if run["model"] == "cnn" else pathlib.Path(run.get("workdir", "")).name


def aggregate(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (task, mode, model, source workdir): test metrics, mean and sd over seeds.

    Of two runs with the same seed in one group, the later in `runs` wins (a rerun replaces it).
    """
    groups: dict[tuple, dict[int, dict]] = {}
    for r in runs:
        groups.setdefault((r["task"], r["mode"], r["model"], source(r)), {})[int(r["seed"])] = r
    rows = []
    for (task, mode, model, src), by_seed in sorted(groups.items()):
        seeds = sorted(by_seed)
        first = by_seed[seeds[0]]
        row: dict[str, Any] = {
            "task": task,
            "mode": mode,
            "model": model,
            "source": src,
            "seeds": seeds,
            "n": len(seeds),
            "select_metric": first.get("select_metric", "accuracy"),
            "test_rows": first.get("sizes", {}).get("test"),
            "checkpoint_step": first.get("checkpoint_step"),
        }
        for metric in METRICS:
            values = [by_seed[s]["test"][metric] for s in seeds if metric in by_seed[s]["test"]]
            if values:
                sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
                row[metric] = {"mean": float(np.mean(values)), "sd": sd, "values": values}
        rows.append(row)
    return rows


def _cell(row: dict, metric: str) -> str:
    if metric not in row:
        return ""
    m = row[metric]
    return f"{m['mean']:.4f} ± {m['sd']:.4f}"


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    metrics = [m for m in METRICS if any(m in r for r in rows)]
    lines = [
        "| task | mode | model | from | seeds | " + " | ".join(metrics) + " |",
        "| --- | --- | --- | --- | --- | " + " | ".join("---" for _ in metrics) + " |",
    ]
    for r in rows:
        cells = " | ".join(_cell(r, m) for m in metrics)
        lines.append(
            f"| {r['task']} | {r['mode']} | {r['model']} | {r['source']} | {r['n']} | {cells} |"
        )
    return "\n".join(lines) + "\n\nTest metrics, mean ± sd (sample sd) over the seeds.\n"


def plot(rows: Sequence[dict[str, Any]], path: pathlib.Path) -> None:
    """Bar chart of each task's selection metric, mean +- sd per (mode, model)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for r in rows})
    most = max(sum(r["task"] == t for r in rows) for t in tasks)
    fig, axes = plt.subplots(
        len(tasks), 1, figsize=(6.0, 0.9 + 0.45 * most * len(tasks)), squeeze=False
    )
    for ax, task in zip(axes[:, 0], tasks, strict=True):
        sub = [r for r in rows if r["task"] == task]
        metric = sub[0]["select_metric"]
        sub = [r for r in sub if metric in r]
        labels = [" ".join(x for x in (r["model"], r["mode"], r["source"]) if x) for r in sub]
        means = [r[metric]["mean"] for r in sub]
        sds = [r[metric]["sd"] for r in sub]
        ax.barh(range(len(sub)), means, xerr=sds, capsize=3, color="#4c72b0")
        ax.set_yticks(range(len(sub)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(f"{task}: test {metric}, mean ± sd over seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summarize(runs: Sequence[dict[str, Any]], out_dir: str | pathlib.Path) -> str:
    """Writes summary.{json,csv,md,png} to `out_dir`; returns the Markdown table."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = aggregate(runs)
    (out / "summary.json").write_text(json.dumps(rows, indent=1))
    metrics = [m for m in METRICS if any(m in r for r in rows)]
    with open(out / "summary.csv", "w", newline="") as f:
        w = csv.writer(f)
        stats = [f"{m}_{s}" for m in metrics for s in ("mean", "sd")]
        w.writerow(["task", "mode", "model", "source", "seeds", *stats])
        for r in rows:
            cells = [r[m][s] if m in r else "" for m in metrics for s in ("mean", "sd")]
            w.writerow([r["task"], r["mode"], r["model"], r["source"], r["n"], *cells])
    table = markdown(rows)
    (out / "summary.md").write_text(table)
    plot(rows, out / "summary.png")
    return table
