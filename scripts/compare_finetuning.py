"""Fine-tuning methods, poolings and strands side by side on the built-in tasks.

    python scripts/compare_finetuning.py --workdir runs/quickstart --out runs/compare \
        [--rc_workdir runs/quickstart_rc] [--write docs/evaluation.md]

Runs each (task, method) for seeds 0, 1, 2 through `python -m gfm_jax.evaluate`, one process at
a time, and prints three tables (written between their marker lines with --write):
- methods: full fine-tuning, LoRA, IA3, frozen backbone, linear probe, with the trained
  parameters, the optimizer state's bytes and the median wall time per run;
- pooling: CLS against mean pooling, for fine-tuning and the probe;
- strands: forward-only against strand-averaged (--strand both) on the strand-free species
  task, and (with --rc_workdir) the RC-equivariant encoder.
A finished run's JSON is reused, so an interrupted comparison continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import subprocess
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from benchmarks_md import publish  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
TASKS = {
    "splice": "configs/tasks/splice.py",
    "species": "configs/tasks/species.py",
    "coding": "configs/tasks/coding.py",
}
METHODS = {  # name -> (mode, extra flags)
    "full fine-tuning": ("finetune", []),
    "LoRA (rank 8, all projections)": ("finetune", ["--config.finetune.adapter=lora"]),
    "IA3": ("finetune", ["--config.finetune.adapter=ia3"]),
    "frozen backbone": ("finetune", ["--config.finetune.freeze_backbone=True"]),
    "linear probe": ("probe", []),
}


def run(mode: str, task: str, workdir: str, flags: list[str], out: pathlib.Path, seeds: str):
    """The run JSONs of one (task, method) for every seed, running those not yet written."""
    out.mkdir(parents=True, exist_ok=True)
    done = {json.loads(p.read_text())["seed"] for p in out.glob("*_seed*.json")}
    missing = [s for s in seeds.split(",") if int(s) not in done]
    if missing:
        command = [
            *(sys.executable, "-m", "gfm_jax.evaluate", mode, "--config", TASKS[task]),
            *("--workdir", workdir, "--seeds", ",".join(missing), "--out", str(out), *flags),
            "--config.finetune.save=False",
        ]
        print("+", " ".join(command), flush=True)
        subprocess.run(command, cwd=ROOT, check=True)
    return [json.loads(p.read_text()) for p in sorted(out.glob("*_seed*.json"))]


def _method_dir(name: str) -> str:
    return name.split(" (")[0].replace(" ", "_")


def mean_sd(runs: list[dict], metric: str) -> str:
    values = [r["test"][metric] for r in runs]
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def methods_table(args, tasks: list[str]) -> str:
    lines = [
        "| task | method | trained parameters | optimizer state (bytes) | s per run | "
        "test accuracy | test MCC |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for task in tasks:
        for name, (mode, flags) in METHODS.items():
            out = pathlib.Path(args.out) / task / _method_dir(name)
            runs = run(mode, task, args.workdir, flags, out, args.seeds)
            seconds = statistics.median(r["seconds"] for r in runs)
            opt = (
                "0 (L-BFGS, scikit-learn)"
                if mode == "probe"
                else f"{runs[0]['optimizer_state_bytes']:,}"
            )
            lines.append(
                f"| {task} | {name} | {runs[0]['trainable_params']:,} | {opt} | {seconds:.0f} | "
                f"{mean_sd(runs, 'accuracy')} | {mean_sd(runs, 'mcc')} |"
            )
    return "\n".join(lines)


def pooling_table(args, tasks: list[str]) -> str:
    lines = [
        "| task | method | pooling | test accuracy | test MCC |",
        "| --- | --- | --- | --- | --- |",
    ]
    for task in tasks:
        for mode, method in (("finetune", "full fine-tuning"), ("probe", "linear probe")):
            for pooling in ("cls", "mean"):
                # CLS is the default: those runs are the methods table's.
                name = f"{mode}_pooling_{pooling}" if pooling != "cls" else _method_dir(method)
                out = pathlib.Path(args.out) / task / name
                flags = [f"--config.finetune.pooling={pooling}"]
                runs = run(mode, task, args.workdir, flags, out, args.seeds)
                lines.append(
                    f"| {task} | {method} | {pooling} | {mean_sd(runs, 'accuracy')} | "
                    f"{mean_sd(runs, 'mcc')} |"
                )
    return "\n".join(lines)


def strands_table(args) -> str:
    lines = [
        "| encoder | method | strands | test accuracy | test MCC |",
        "| --- | --- | --- | --- | --- |",
    ]
    encoders = [("plain", args.workdir)] + (
        [("RC-equivariant", args.rc_workdir)] if args.rc_workdir else []
    )
    for encoder, workdir in encoders:
        for mode, method in (("finetune", "full fine-tuning"), ("probe", "linear probe")):
            for strand in ("forward", "both"):
                name = f"{encoder}_{mode}_{strand}"
                if (encoder, strand) == ("plain", "forward"):  # the methods table's runs
                    name = _method_dir(method)
                out = pathlib.Path(args.out) / "species" / name
                runs = run(mode, "species", workdir, ["--strand", strand], out, args.seeds)
                lines.append(
                    f"| {encoder} | {method} | {strand} | {mean_sd(runs, 'accuracy')} | "
                    f"{mean_sd(runs, 'mcc')} |"
                )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="pretrained workdir")
    parser.add_argument("--rc_workdir", default="", help="RC-equivariant pretrained workdir")
    parser.add_argument("--out", required=True, help="directory for the run JSONs")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--tasks", default="splice,species")
    parser.add_argument("--tables", default="methods,pooling,strands")
    parser.add_argument("--write", default=None, help="markdown file to put the tables in")
    args = parser.parse_args()
    tasks = args.tasks.split(",")
    tables = {
        "methods": lambda: methods_table(args, tasks),
        "pooling": lambda: pooling_table(args, tasks),
        "strands": lambda: strands_table(args),
    }
    for name in args.tables.split(","):
        publish(tables[name](), args.write, f"<!-- compare_finetuning {name} -->")


if __name__ == "__main__":
    main()
