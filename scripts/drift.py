"""How far fine-tuning results move with the CPU features and cores XLA uses.

    python scripts/drift.py --workdir runs/quickstart [--models pretrained,cnn] [--seeds 0,1,2]

Fine-tunes the quickstart task (configs/tasks/splice.py) from one checkpoint under each setting
below, each in its own process, and prints test accuracy per seed plus the largest move from
the first setting. The settings stand in for other machines: XLA compiles for the CPU it finds,
and the instruction set (FMA or not) and the number of cores it sees change how sums round.
The table in docs/evaluation.md is `--settings "default,1 core,AVX without FMA"`.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
# name -> (extra XLA_FLAGS, CPU cores the process may use; None: all)
SETTINGS = {
    "default": ("", None),
    "1 core": ("", {0}),
    "AVX without FMA": ("--xla_cpu_max_isa=AVX", None),
    # Eigen's matmuls and convolutions on one thread, with all cores / with one core.
    "single-threaded Eigen": ("--xla_cpu_multi_thread_eigen=false", None),
    "single-threaded Eigen on 1 core": ("--xla_cpu_multi_thread_eigen=false", {0}),
}


def finetune(workdir: str, model: str, seed: int, setting: str, out: pathlib.Path) -> dict:
    flags, cores = SETTINGS[setting]
    env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()}
    command = [
        *(sys.executable, "-m", "gfm_jax.evaluate", "finetune", "--workdir", workdir),
        *("--config", "configs/tasks/splice.py", "--model", model, "--seeds", str(seed)),
        *("--out", str(out)),
    ]
    preexec = (lambda: os.sched_setaffinity(0, cores)) if cores else None
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, preexec_fn=preexec
    )
    if done.returncode != 0:
        raise SystemExit(f"{model} seed {seed} under {setting!r} failed:\n{done.stderr[-2000:]}")
    (path,) = out.glob(f"*_{model}_seed{seed}.json")
    result = json.loads(path.read_text())
    return {"accuracy": result["test"]["accuracy"], "epoch": result["best_epoch"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="a pretraining workdir")
    parser.add_argument("--models", default="pretrained,cnn")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--settings", default=",".join(SETTINGS), help="names from SETTINGS")
    args = parser.parse_args()
    workdir = str(pathlib.Path(args.workdir).resolve())  # the runs start in the repository root
    settings = args.settings.split(",")
    if unknown := set(settings) - set(SETTINGS):
        parser.error(f"--settings: unknown {sorted(unknown)}; choose from {list(SETTINGS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    print("| model | seed | " + " | ".join(settings) + " | largest move |")
    print("| --- | --- | " + " | ".join("---" for _ in settings) + " | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            for seed in seeds:
                runs = [
                    finetune(workdir, model, seed, s, pathlib.Path(tmp) / f"{i}")
                    for i, s in enumerate(settings)
                ]
                move = max(abs(r["accuracy"] - runs[0]["accuracy"]) for r in runs)
                cells = [f"{r['accuracy']:.4f} (epoch {r['epoch']})" for r in runs]
                print(f"| {model} | {seed} | " + " | ".join(cells) + f" | {move:.4f} |")


if __name__ == "__main__":
    main()
