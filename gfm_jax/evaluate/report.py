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


def _finetune_results(workdir: pathlib.Path) -> dict[str, dict]:
    """The newest fine-tuning result per init ("pretrained" / "scratch")."""
    results: dict[str, dict] = {}
    for path in sorted((workdir / "eval").glob("finetune_*.json"), key=lambda p: p.stat().st_mtime):
        r = json.loads(path.read_text())
        results[r["init"]] = r
    return results


def quickstart_table(workdir: str | pathlib.Path) -> str:
    """One Markdown table: the encoder at random init (step 0) beside the pretrained one."""
    workdir = pathlib.Path(workdir)
    val = _val_rows(workdir)
    if not val:
        raise UserError(
            f"{workdir}/metrics.jsonl has no held-out evaluation; pretraining did not run"
        )
    first, last = val[0], val[-1]
    tuned = _finetune_results(workdir)
    task = next((pathlib.Path(r["task"]).stem for r in tuned.values()), "task")

    def cells(init: str) -> str:
        r = tuned.get(init)
        if r is None:
            return "not run | not run"
        return f"{r['test']['accuracy']:.4f} | {r['test']['mcc']:.4f}"

    margin = last["unigram_entropy"] - last["loss"]
    lines = [
        f"| encoder | held-out MLM loss (nats) | held-out MLM accuracy | {task} test accuracy "
        f"| {task} test MCC |",
        "| --- | --- | --- | --- | --- |",
        f"| random init (step {first['step']}) | {first['loss']:.4f} | {first['accuracy']:.4f} "
        f"| {cells('scratch')} |",
        f"| pretrained (step {last['step']}) | {last['loss']:.4f} | {last['accuracy']:.4f} "
        f"| {cells('pretrained')} |",
        "",
        f"Unigram (base-composition) entropy of the held-out masked targets: "
        f"{last['unigram_entropy']:.4f} nats; the pretrained loss is {abs(margin):.4f} nats "
        f"{'below' if margin > 0 else 'ABOVE'} it.",
    ]
    if tuned:
        r = next(iter(tuned.values()))
        lines.append(
            f"{task}: train {r['sizes']['train']} / val {r['sizes']['val']} / test "
            f"{r['sizes']['test']} rows, seed {r['seed']}, best epoch on val; "
            + "; ".join(r["notes"])
        )
    return "\n".join(lines)
