"""The quickstart table: held-out MLM metrics and downstream test metrics of one workdir."""

from __future__ import annotations

import json
import pathlib

from gfm_jax.errors import UserError
from gfm_jax.evaluate import results


def _val_rows(workdir: pathlib.Path) -> list[dict]:
    path = workdir / "metrics.jsonl"
    if not path.is_file():
        raise UserError(
            f"{path} not found; pretrain into {workdir} first (python -m gfm_jax.train)"
        )
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["split"] == "val"]


def _finetune_rows(workdir: pathlib.Path, task: str) -> dict[str, dict]:
    """Fine-tuning summaries of `task` (mean +- sd over seeds) per model, from eval/<task>/."""
    if not (workdir / "eval" / task).is_dir():
        return {}
    try:
        runs = results.load_runs([workdir / "eval" / task])
    except UserError:
        return {}
    rows = results.aggregate([r for r in runs if r["mode"] == "finetune" and r["task"] == task])
    return {r["model"]: r for r in rows}


def quickstart_table(workdir: str | pathlib.Path, task: str = "splice") -> str:
    """One Markdown table: the encoder at random init (step 0) beside the pretrained one."""
    workdir = pathlib.Path(workdir)
    val = _val_rows(workdir)
    if not val:
        raise UserError(
            f"{workdir}/metrics.jsonl has no held-out evaluation; pretraining did not run"
        )
    first, last = val[0], val[-1]
    tuned = _finetune_rows(workdir, task)

    def cells(model: str) -> str:
        r = tuned.get(model)
        if r is None:
            return "not run | not run"
        acc, mcc = r["accuracy"], r["mcc"]
        return f"{acc['mean']:.4f} ± {acc['sd']:.4f} | {mcc['mean']:.4f} ± {mcc['sd']:.4f}"

    margin = last["unigram_entropy"] - last["loss"]
    lines = [
        f"| model | held-out MLM loss (nats) | held-out MLM accuracy | {task} test accuracy "
        f"| {task} test MCC |",
        "| --- | --- | --- | --- | --- |",
        f"| encoder, random init (step {first['step']}) | {first['loss']:.4f} "
        f"| {first['accuracy']:.4f} | {cells('scratch')} |",
        f"| encoder, pretrained (step {last['step']}) | {last['loss']:.4f} "
        f"| {last['accuracy']:.4f} | {cells('pretrained')} |",
        f"| CNN baseline (no pretraining) | | | {cells('cnn')} |",
        "",
        f"Unigram (base-composition) entropy of the held-out masked targets: "
        f"{last['unigram_entropy']:.4f} nats; the pretrained loss is {abs(margin):.4f} nats "
        f"{'below' if margin > 0 else 'ABOVE'} it.",
    ]
    if tuned:
        r = next(iter(tuned.values()))
        lines.append(
            f"{task}: mean ± sd over seeds {r['seeds']}, {r['test_rows']} test rows, "
            "best epoch on the validation rows; summary and per-seed JSON in "
            f"{workdir / 'eval' / task}/"
        )
    return "\n".join(lines)
