"""Held-out loss against context length, for a model pretrained with a sequence-length warm-up.

    python experiments/long_context/run.py --genome PATH/human_b37_chr20_10000001-63025520.fa.gz \
        --workdir runs/long_context [--write]

Pretrains configs/pretrain/long_context.py on `--genome` (warm-up 256 -> 1,024 -> 2,048 bases),
then scores masked-LM loss (bits per base) on `--eval-fasta`, a genome not in the corpus, with
windows of 128 bases to 16 kb: as pretrained, and past the pretraining length also with NTK
RoPE scaling (factor = window / 2,048). `--write` puts the table into this folder's README and
the figure into docs/img/long_context.png. A finished pretraining run is reused.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIG = "configs/pretrain/long_context.py"
PRETRAIN_BASES = 2048
MARKER = "<!-- long_context table -->"


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--genome", required=True, help="pretraining FASTA (the chr20 piece)")
    p.add_argument("--workdir", required=True)
    p.add_argument("--eval-fasta", default="builtin:human_hg19_chr17_1-40000.fa.gz")
    p.add_argument("--windows", default="128,256,512,1024,2048,4096,8192,16384")
    p.add_argument("--write", action="store_true")
    p.add_argument("overrides", nargs="*", help="extra --config.k=v for the pretraining run")
    return p.parse_args()


def run(*args: str) -> str:
    r = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True)
    if r.returncode:
        sys.exit(r.stderr[-2000:])
    return r.stdout


def score(args: argparse.Namespace, window: int, scaling: str) -> dict:
    out = pathlib.Path(args.workdir) / "eval" / f"perplexity_{window}_{scaling}.json"
    extra = []
    if scaling != "none":
        extra = ["--rope_scaling", scaling, "--rope_factor", str(window / PRETRAIN_BASES)]
    run("-m", "gfm_jax.evaluate", "perplexity", "--workdir", args.workdir, "--fasta",
        args.eval_fasta, "--window", str(window), "--out", str(out), *extra)  # fmt: skip
    return json.loads(out.read_text())


def figure(rows: list[dict], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for scaling, style in (("none", "o-"), ("ntk", "s--")):
        points = [(r["window"], r["bits_per_base"]) for r in rows if r["scaling"] == scaling]
        ax.plot(*zip(*points, strict=True), style, label=f"RoPE scaling: {scaling}")
    ax.axvline(PRETRAIN_BASES, color="grey", lw=0.8, ls=":", label="pretraining window")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context (bases per window)")
    ax.set_ylabel("held-out masked-LM bits per base")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    args = parse()
    run("-m", "gfm_jax.train", "--config", CONFIG, "--workdir", args.workdir,
        f"--config.data.genomes=('{args.genome}',)", *args.overrides)  # fmt: skip
    rows = []
    for window in [int(w) for w in args.windows.split(",")]:
        for scaling in ("none", "ntk") if window > PRETRAIN_BASES else ("none",):
            result = score(args, window, scaling)
            keys = ("loss", "accuracy", "bits_per_base", "windows")
            rows.append({"window": window, "scaling": scaling, **{k: result[k] for k in keys}})
            print(json.dumps(rows[-1]), flush=True)
    if rows and not any(r["scaling"] == "ntk" for r in rows):
        rows.append({**rows[-1], "scaling": "ntk"})  # one point, so both lines draw
    table = "\n".join(
        ["| window (bases) | RoPE scaling | windows scored | loss | accuracy | bits per base |",
         "| ---: | --- | ---: | ---: | ---: | ---: |"]
        + [f"| {r['window']:,} | {r['scaling']} | {r['windows']} | {r['loss']:.4f} | "
           f"{r['accuracy']:.4f} | {r['bits_per_base']:.4f} |" for r in rows]
    )  # fmt: skip
    print(table)
    if args.write:
        readme = pathlib.Path(__file__).with_name("README.md")
        before, _, rest = readme.read_text().partition(MARKER)
        _, _, after = rest.partition(MARKER)
        readme.write_text(f"{before}{MARKER}\n{table}\n{MARKER}{after}")
        figure(rows, ROOT / "docs" / "img" / "long_context.png")


if __name__ == "__main__":
    main()
