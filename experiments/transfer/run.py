"""Does pretraining pay off downstream? The recipe, the CNN tuned alike, and one factor at a time.

    python experiments/transfer/run.py --genome PATH/human_b37_chr20_10000001-63025520.fa.gz \
        --workdir runs/transfer [--write]

1. Pretrains configs/pretrain/transfer.py on the built-in genomes plus `--genome` (the recipe),
   and each pretraining ablation (PRETRAIN_ABLATIONS) for ABLATION_STEPS steps.
2. Tunes the fine-tuning learning rate on splice validation for the pretrained encoder, the same
   encoder from scratch and the CNN alike (LEARNING_RATES, best mean validation accuracy over the
   seeds); every model then uses its own rate on every task.
3. Main table: every built-in task x {pretrained, scratch, CNN} fine-tuned, and linear probes of
   the pretrained and of a random encoder.
4. Ablation table: splice, the recipe with one factor changed.
5. Probe table: linear probes of the pretrained and of random encoders on the embeddings alone
   (layer 0: each base without context), the output, and every layer side by side.
Every run goes through `python -m gfm_jax.evaluate` / `gfm_jax.train`; a finished run is reused.
`--write` puts the tables `--tables` names (and the tuning grid) into this folder's README and
docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import compare_finetuning as compare  # noqa: E402  (run one (task, flags) for every seed)
from benchmarks_md import publish  # noqa: E402

CONFIG = "configs/pretrain/transfer.py"
TASKS = ("splice", "species", "coding")
LEARNING_RATES = (2.5e-4, 5e-4, 1e-3, 2e-3)
ABLATION_STEPS = 500
ABLATION_SEEDS = "0"  # one seed per ablation row (the main table's sds show the seed spread)
# The fine-tuning recipe every model gets: epochs with early stopping on validation, 15% of the
# input tokens masked in every training batch (an augmentation; the CNN gets it too), and
# layer-wise learning-rate decay of the pretrained encoder.
RECIPE = (
    "--config.finetune.epochs=30",
    "--config.finetune.patience=8",
    "--config.finetune.input_mask_rate=0.15",
    "--config.finetune.layer_decay=0.8",  # applies to pretrained weights only
    "--config.finetune.save=False",
)
# Encoder pooling per task, as the CNN's per task config: position-aware for splice's fixed
# junction position, a mean over positions for the composition tasks.
POOLING = {"splice": "flatten", "species": "mean", "coding": "mean"}
PROBE_POOLING = "mean"
# Probe table: name -> probe.layers; pooling as the fine-tuning's (POOLING).
PROBE_LAYERS = {"embeddings (bases alone)": "0", "output": "-1", "every layer": "all"}
TABLES = ("main", "ablation", "probes")
# name -> pretraining overrides, each run for ABLATION_STEPS steps (the "recipe" row too).
PRETRAIN_ABLATIONS = {
    f"recipe, {ABLATION_STEPS} pretraining steps": (),
    "built-in genomes only (no human chr20)": ("--config.data.genomes=('builtin',)",),
    "NT 6-mer tokens": ("--config.data.tokenizer=nt6",),
    "masking 30%": ("--config.data.mask_rate=0.3",),
    "2 layers (of 4)": ("--config.model.num_layers=2",),
}
# name -> fine-tuning overrides on the recipe's encoder (splice).
FINETUNE_ABLATIONS = {
    "pooling: CLS": ("--config.finetune.pooling=cls",),
    "pooling: mean": ("--config.finetune.pooling=mean",),
    "no input masking": ("--config.finetune.input_mask_rate=0.0",),
    "no layer-wise lr decay": ("--config.finetune.layer_decay=1.0",),
    "4 epochs, no early stopping": (
        "--config.finetune.epochs=4",
        "--config.finetune.patience=0",
    ),
}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--genome", required=True, help="extra pretraining FASTA (the chr20 piece)")
    p.add_argument("--workdir", required=True, help="runs go under this directory")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--tables", default=",".join(TABLES), help="which tables to (re)build")
    p.add_argument("--write", action="store_true")
    return p.parse_args()


def pretrain(args: argparse.Namespace, name: str, overrides: tuple[str, ...] = ()) -> str:
    workdir = str(pathlib.Path(args.workdir) / "pretrain" / name)
    genomes = f"--config.data.genomes=('builtin','{args.genome}')"
    command = [sys.executable, "-m", "gfm_jax.train", "--config", CONFIG, "--workdir", workdir]
    print("+", " ".join(command), flush=True)
    subprocess.run([*command, genomes, *overrides], cwd=ROOT, check=True)
    return workdir


def finetune(args, workdir, task, model, lr, extra=(), seeds=None) -> list[dict]:
    """The run JSONs of fine-tuning `model` on `task` with the recipe, for `seeds` (default:
    --seeds)."""
    flags = [*RECIPE, f"--config.optim.learning_rate={lr}", "--model", model]
    if model != "cnn":
        flags.append(f"--config.finetune.pooling={POOLING[task]}")
    tag = "_".join(f.removeprefix("--config.finetune.").replace("=", "") for f in extra)
    out = pathlib.Path(workdir) / "eval" / task / f"{model}_lr{lr:g}{'_' + tag if tag else ''}"
    found = compare.run("finetune", task, workdir, [*flags, *extra], out, seeds or args.seeds)
    wanted = {int(seed) for seed in (seeds or args.seeds).split(",")}
    return [r for r in found if r["seed"] in wanted]


def probe(args, workdir, task, model, pooling=PROBE_POOLING, layers="-1", seeds=None):
    flags = ["--model", model, f"--config.finetune.pooling={pooling}"]
    flags.append(f"--config.probe.layers={layers}")
    tag = "" if (pooling, layers) == (PROBE_POOLING, "-1") else f"_{pooling}_layers{layers}"
    out = pathlib.Path(workdir) / "eval" / task / f"probe_{model}{tag}"
    return compare.run("probe", task, workdir, flags, out, seeds or args.seeds)


def val_mean(runs: list[dict]) -> float:
    return statistics.mean(r["val"]["val_accuracy"] for r in runs)


def tune(args, workdir: str) -> tuple[dict[str, float], str]:
    """Each model's learning rate (best splice validation accuracy of the first seed) and the
    grid's table."""
    lines = ["| model | " + " | ".join(f"lr {lr:g}" for lr in LEARNING_RATES) + " | chosen |"]
    lines.append("| --- " * (len(LEARNING_RATES) + 2) + "|")
    chosen = {}
    for model in ("pretrained", "scratch", "cnn"):
        first = args.seeds.split(",")[0]
        scores = {
            lr: val_mean(finetune(args, workdir, "splice", model, lr, seeds=first))
            for lr in LEARNING_RATES
        }
        chosen[model] = max(LEARNING_RATES, key=lambda lr: scores[lr])
        cells = " | ".join(f"{scores[lr]:.4f}" for lr in LEARNING_RATES)
        lines.append(f"| {model} | {cells} | {chosen[model]:g} |")
    return chosen, "\n".join(lines)


def accuracy(runs: list[dict]) -> tuple[float, float]:
    values = [r["test"]["accuracy"] for r in runs]
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def cell(runs: list[dict]) -> str:
    mean, sd = accuracy(runs)
    return f"{mean:.4f} ± {sd:.4f}"


def main_table(args, workdir: str, lr: dict[str, float]) -> str:
    lines = [
        "| task | pretrained, fine-tuned | from scratch | CNN | gap (sds) | pretrained probe "
        "| random-encoder probe |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for task in TASKS:
        runs = {
            m: finetune(args, workdir, task, m, lr[m]) for m in ("pretrained", "scratch", "cnn")
        }
        (p, p_sd), (s, s_sd) = accuracy(runs["pretrained"]), accuracy(runs["scratch"])
        gap = f"{p - s:+.4f} ({(p - s) / max(p_sd, s_sd, 1e-9):.1f})"
        probes = [cell(probe(args, workdir, task, m)) for m in ("pretrained", "scratch")]
        lines.append(
            f"| {task} | {cell(runs['pretrained'])} | {cell(runs['scratch'])} | "
            f"{cell(runs['cnn'])} | {gap} | {' | '.join(probes)} |"
        )
    return "\n".join(lines)


def ablation_table(args, workdir: str, lr: float) -> str:
    lines = ["| change | splice test accuracy |", "| --- | --- |"]
    seeds = ABLATION_SEEDS
    recipe = finetune(args, workdir, "splice", "pretrained", lr, seeds=seeds)
    lines.append(f"| none (the recipe) | {cell(recipe)} |")
    for name, flags in FINETUNE_ABLATIONS.items():
        runs = finetune(args, workdir, "splice", "pretrained", lr, flags, seeds)
        lines.append(f"| fine-tuning: {name} | {cell(runs)} |")
    for index, (name, overrides) in enumerate(PRETRAIN_ABLATIONS.items()):
        steps = f"--config.train.num_steps={ABLATION_STEPS}"
        short = pretrain(args, f"ablation_{index}", (steps, *overrides))
        runs = finetune(args, short, "splice", "pretrained", lr, seeds=seeds)
        lines.append(f"| pretraining: {name} | {cell(runs)} |")
    return "\n".join(lines)


def probe_table(args, workdir: str) -> str:
    """Test accuracy of linear probes by layer: the pretrained encoder (deterministic: the first
    seed) against random encoders (every seed)."""
    lines = ["| task | pooling | layers | pretrained probe | random-encoder probe |"]
    lines.append("| --- | --- | --- | --- | --- |")
    first = args.seeds.split(",")[0]
    for task in TASKS:
        for name, layers in PROBE_LAYERS.items():
            pre = probe(args, workdir, task, "pretrained", POOLING[task], layers, first)
            rnd = probe(args, workdir, task, "scratch", POOLING[task], layers)
            lines.append(f"| {task} | {POOLING[task]} | {name} | {cell(pre)} | {cell(rnd)} |")
    return "\n".join(lines)


def main() -> None:
    args = parse()
    tables = set(args.tables.split(","))
    if not tables <= set(TABLES):
        raise SystemExit(f"--tables={args.tables}: choose from {','.join(TABLES)}")
    workdir = pretrain(args, "recipe")
    paths = [str(pathlib.Path(__file__).parent / "README.md"), str(ROOT / "docs/evaluation.md")]
    paths = paths if args.write else [None]
    lr, grid = tune(args, workdir) if tables & {"main", "ablation"} else ({}, "")
    if "main" in tables:
        table = main_table(args, workdir, lr)
        for path in paths:
            publish(grid, path, "<!-- transfer tuning -->")
            publish(table, path, "<!-- transfer main -->")
    if "ablation" in tables:
        ablation = ablation_table(args, workdir, lr["pretrained"])
        for path in paths:
            publish(ablation, path, "<!-- transfer ablation -->")
    if "probes" in tables:
        probes = probe_table(args, workdir)
        for path in paths:
            publish(probes, path, "<!-- transfer probes -->")


if __name__ == "__main__":
    main()
