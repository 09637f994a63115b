"""Run a sweep of pretraining configs, then gather every run's held-out metrics into one table.

    python scripts/sweep.py experiments/tokenizers/sweep.py --workdir runs/sweep_tokenizers
    python scripts/sweep.py experiments/tokenizers/sweep.py --workdir runs/sweep --print \
        --launcher "bash scripts/launch_slurm.sh --nodes 2 --"
    python scripts/sweep.py experiments/tokenizers/sweep.py --workdir runs/sweep --gather-only

A sweep file defines `runs()`: a list of {"name", "config", "overrides"} with dotted overrides
("train.num_steps=300"). Each run trains into WORKDIR/<name> (a finished run resumes at its last
step and stops at once, so rerunning a sweep only does what is missing). `--print` writes the
commands instead of running them, behind `--launcher` if given, for a cluster. The gathered
table (`sweep.csv`, `sweep.md`) has each run's last held-out evaluation. With `--eval-fasta`,
every run is also scored by `gfm_jax.evaluate perplexity` on the same FASTA, the same bases
for every tokenizer. `sweep.png` plots held-out bits per base against training step.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import pathlib
import shlex
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_runs(path: str) -> list[dict]:
    spec = importlib.util.spec_from_file_location("sweep_file", path)
    if spec is None or spec.loader is None or not pathlib.Path(path).is_file():
        sys.exit(f"sweep: {path} not found; give a file defining runs()")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    runs = module.runs()
    names = [r["name"] for r in runs]
    if len(set(names)) != len(names):
        sys.exit(f"sweep: {path}: run names repeat: {names}")
    return runs


def train_command(run: dict, workdir: pathlib.Path, python: str) -> list[str]:
    overrides = [f"--config.{o}" for o in run["overrides"]]
    return [
        python,
        "-m",
        "gfm_jax.train",
        "--config",
        run["config"],
        "--workdir",
        str(workdir / run["name"]),
        *overrides,
    ]


def perplexity_command(run: dict, workdir: pathlib.Path, fasta: str, python: str) -> list[str]:
    out = workdir / run["name"] / "eval" / "sweep_perplexity.json"
    return [
        python,
        "-m",
        "gfm_jax.evaluate",
        "perplexity",
        "--workdir",
        str(workdir / run["name"]),
        "--fasta",
        fasta,
        "--out",
        str(out),
    ]


def gather(runs: list[dict], workdir: pathlib.Path) -> list[dict]:
    rows = []
    for run in runs:
        metrics = workdir / run["name"] / "metrics.jsonl"
        if not metrics.is_file():
            sys.exit(f"sweep: {metrics} is missing; run the sweep (without --gather-only) first")
        val = [r for r in map(json.loads, metrics.read_text().splitlines()) if r["split"] == "val"]
        if not val:
            sys.exit(f"sweep: {metrics} has no held-out evaluation; did {run['name']} train?")
        last = val[-1]
        row = {
            "name": run["name"],
            "step": last["step"],
            "val_loss": last["loss"],
            "val_accuracy": last["accuracy"],
            "val_bits_per_base": last["bits_per_base"],
            "unigram_entropy": last.get("unigram_entropy"),
            "curve": [(r["step"], r["bits_per_base"]) for r in val],
        }
        ppl = workdir / run["name"] / "eval" / "sweep_perplexity.json"
        if ppl.is_file():
            p = json.loads(ppl.read_text())
            row.update(
                eval_bits_per_base=p["bits_per_base"],
                eval_accuracy=p["accuracy"],
                eval_windows=p["windows"],
            )
        rows.append(row)
    return rows


def write_tables(rows: list[dict], workdir: pathlib.Path) -> str:
    columns = [
        c
        for c in (
            "name",
            "step",
            "val_loss",
            "val_accuracy",
            "val_bits_per_base",
            "unigram_entropy",
            "eval_bits_per_base",
            "eval_accuracy",
            "eval_windows",
        )
        if any(c in r for r in rows)
    ]
    with open(workdir / "sweep.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)

    def cell(v) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v if v is not None else "")

    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    table = "\n".join(lines) + "\n"
    (workdir / "sweep.md").write_text(table)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for r in rows:
        steps, bits = zip(*r["curve"], strict=True)
        ax.plot(steps, bits, marker="o", label=r["name"])
    ax.set_xlabel("training step")
    ax.set_ylabel("held-out bits per base")
    ax.legend()
    fig.tight_layout()
    fig.savefig(workdir / "sweep.png", dpi=120)
    plt.close(fig)
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sweep", help="a sweep file defining runs()")
    parser.add_argument("--workdir", required=True, help="each run trains into WORKDIR/<name>")
    parser.add_argument("--print", action="store_true", help="print the commands, run nothing")
    parser.add_argument(
        "--launcher", default="", help="prefix for printed commands (a launch script)"
    )
    parser.add_argument("--gather-only", action="store_true", help="only gather finished runs")
    parser.add_argument("--eval-fasta", default="", help="score every run on this FASTA too")
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args(argv)
    runs = load_runs(args.sweep)
    # Absolute paths: the runs start in the repository root, wherever this script is called from.
    workdir = pathlib.Path(args.workdir).resolve()
    if args.eval_fasta and not args.eval_fasta.startswith("builtin:"):
        args.eval_fasta = str(pathlib.Path(args.eval_fasta).resolve())
    commands = []
    for run in runs:
        commands.append(train_command(run, workdir, args.python))
        if args.eval_fasta:
            commands.append(perplexity_command(run, workdir, args.eval_fasta, args.python))
    if args.print:
        prefix = shlex.split(args.launcher)
        for cmd in commands:
            print(shlex.join([*prefix, *cmd]))
        return
    if not args.gather_only:
        workdir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for cmd in commands:
            print("sweep: " + shlex.join(cmd), flush=True)
            if subprocess.run(cmd, cwd=ROOT, env=env).returncode != 0:
                sys.exit(f"sweep: failed: {shlex.join(cmd)}")
    print(write_tables(gather(runs, workdir), workdir))
    print(f"wrote {workdir / 'sweep.csv'}, {workdir / 'sweep.md'}, {workdir / 'sweep.png'}")


if __name__ == "__main__":
    main()
