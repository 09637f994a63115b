"""The quickstart table: held-out MLM metrics and downstream test metrics of one workdir."""

from __future__ import annotations

import json
import pathlib

from gfm_jax.errors import UserError


def _val_rows(workdir: pathlib.Path) -> list[dict]:
    path = workdir / "metrics.jsonl"
    if not path.is_file():
        raise UserError(
            f"{path} not found; pretrain into {workdir} first (python -m gfm_jax.train)"
        )
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["split"] == "val"]


def quickstart_table(workdir: str | pathlib.Path) -> str:
    """A Markdown table of the pretraining and fine-tuning results found in `workdir`."""
    workdir = pathlib.Path(workdir)
    val = _val_rows(workdir)
    if not val:
        raise UserError(
            f"{workdir}/metrics.jsonl has no held-out evaluation; pretraining did not run"
        )
    first, last = val[0], val[-1]
    lines = [
        "| what | value |",
        "| --- | --- |",
        f"| held-out MLM loss, step {first['step']} (nats) | {first['loss']:.4f} |",
        f"| held-out MLM loss, step {last['step']} (nats) | {last['loss']:.4f} |",
        f"| unigram entropy of the held-out targets (nats) | {last['unigram_entropy']:.4f} |",
        f"| held-out MLM accuracy, step {first['step']} | {first['accuracy']:.4f} |",
        f"| held-out MLM accuracy, step {last['step']} | {last['accuracy']:.4f} |",
    ]
    for path in sorted((workdir / "eval").glob("finetune_*.json")):
        r = json.loads(path.read_text())
        task = pathlib.Path(r["task"]).stem
        label = f"{task} test, {r['init']} encoder (seed {r['seed']}, n={r['sizes']['test']})"
        lines.append(f"| {label}: accuracy | {r['test']['accuracy']:.4f} |")
        lines.append(f"| {label}: MCC | {r['test']['mcc']:.4f} |")
    return "\n".join(lines)
