"""Evaluation entry points. Every mode restores parameters only (never optimizer state).

    python -m gfm_jax.evaluate finetune   --config configs/tasks/splice.py --workdir DIR \
        [--model pretrained|scratch|cnn] [--seeds 0,1,2] [--config.k=v ...]
    python -m gfm_jax.evaluate probe      --config configs/tasks/splice.py --workdir DIR \
        [--model pretrained|scratch] [--seeds 0,1,2]
    python -m gfm_jax.evaluate suite      --config configs/suites/gue.py --workdir DIR \
        --config.suite.root=/data/GUE [--models pretrained,cnn] [--mode finetune|probe]
    python -m gfm_jax.evaluate embed      --workdir DIR --input seqs.fa|seqs.csv --out emb.npy
    python -m gfm_jax.evaluate vep        --workdir DIR --vcf v.vcf.gz --fasta ref.fa.gz \
        --out scores.tsv
    python -m gfm_jax.evaluate perplexity --workdir DIR --fasta held_out.fa.gz [--out p.json]
    python -m gfm_jax.evaluate aggregate  RUN_DIR_OR_JSON ... --out DIR
    python -m gfm_jax.evaluate report     --workdir DIR

finetune / probe / suite write one JSON per run to DIR/eval/<task>/ (or --out) and a summary
over every run there: summary.{json,csv,md,png}, test metrics as mean +- sd over the seeds.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from gfm_jax import config as config_lib
from gfm_jax import distributed, host_memory
from gfm_jax.errors import UserError, exit_on_user_error

MODELS = {"finetune": ("pretrained", "scratch", "cnn"), "probe": ("pretrained", "scratch")}


def _seeds(text: str | None, default: tuple) -> list[int]:
    if text is None:
        return [int(s) for s in default]
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(
            f"--seeds={text!r}: give integers separated by commas, e.g. 0,1,2"
        ) from None
    if not seeds:
        raise UserError("--seeds is empty; give e.g. 0,1,2")
    return seeds


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gfm_jax.evaluate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    modes = parser.add_subparsers(dest="mode", required=True)
    for name, models, help_text in (
        ("finetune", MODELS["finetune"], "fine-tune and test a head on a task"),
        ("probe", MODELS["probe"], "linear probe on frozen embeddings"),
    ):
        p = modes.add_parser(name, help=help_text)
        p.add_argument("--config", required=True, help="task config, e.g. configs/tasks/splice.py")
        p.add_argument(
            "--workdir", required=True, help="pretraining workdir (its latest checkpoint)"
        )
        p.add_argument("--model", default="pretrained", choices=models)
        p.add_argument("--init", dest="model", choices=models, help=argparse.SUPPRESS)  # old name
        p.add_argument(
            "--seeds", default=None, help="comma-separated seeds (default: the config's)"
        )
        p.add_argument(
            "--out", default=None, help="directory for the run JSONs (default WORKDIR/eval/TASK)"
        )
        distributed.add_flags(p)
    s = modes.add_parser("suite", help="every task of a benchmark suite config, several models")
    s.add_argument("--config", required=True, help="suite config, e.g. configs/suites/gue.py")
    s.add_argument("--workdir", required=True)
    s.add_argument(
        "--models", default="pretrained,cnn", help="comma-separated: pretrained,scratch,cnn"
    )
    s.add_argument("--mode", dest="suite_mode", default="finetune", choices=("finetune", "probe"))
    s.add_argument("--seeds", default=None)
    s.add_argument("--out", default=None, help="default WORKDIR/eval/SUITE")
    e = modes.add_parser("embed", help="embeddings of FASTA windows or CSV sequences to .npy")
    e.add_argument("--workdir", required=True)
    e.add_argument(
        "--input", required=True, help="FASTA (.fa/.fa.gz) or CSV with a sequence column"
    )
    e.add_argument("--out", required=True, help="output .npy (an index .tsv is written beside it)")
    e.add_argument("--pooling", default="mean", choices=("mean", "cls"))
    e.add_argument("--window", type=int, default=0, help="FASTA window in bases (0: pretraining's)")
    e.add_argument("--column", default="sequence", help="CSV sequence column")
    v = modes.add_parser("vep", help="zero-shot variant-effect scores of a VCF")
    v.add_argument("--workdir", required=True)
    v.add_argument("--vcf", required=True)
    v.add_argument("--fasta", required=True, help="the reference the VCF was called against")
    v.add_argument("--out", required=True, help="output TSV (skipped variants: OUT.skipped.tsv)")
    v.add_argument("--window", type=int, default=0, help="bases of context (0: pretraining's)")
    pp = modes.add_parser("perplexity", help="held-out MLM loss / accuracy / bits per base")
    pp.add_argument("--workdir", required=True)
    pp.add_argument("--fasta", required=True, nargs="+")
    pp.add_argument("--out", default=None, help="JSON (default WORKDIR/eval/perplexity.json)")
    a = modes.add_parser("aggregate", help="one table over run JSONs from any number of runs")
    a.add_argument("runs", nargs="+", help="run JSON files or directories holding them")
    a.add_argument("--out", required=True, help="directory for summary.{json,csv,md,png}")
    rp = modes.add_parser("report", help="print the quickstart table of a workdir")
    rp.add_argument("--workdir", required=True)
    rp.add_argument("--task", default="splice", help="the fine-tuning task in the table")
    return parser


def _run_task(
    mode: str, config, workdir: str, model: str, seeds: list[int], out: pathlib.Path
) -> None:
    from gfm_jax.evaluate import results

    if mode == "finetune":
        from gfm_jax.evaluate.finetune import finetune as run
    else:
        from gfm_jax.evaluate.probe import probe as run
    import jax

    for seed in seeds:
        result = run(config, workdir, model, seed)
        if jax.process_index() == 0:  # every process holds the same result; one writes it
            print(f"wrote {results.write_run(out, result)}", flush=True)


def _task_dir(workdir: str, config) -> pathlib.Path:
    name = config.task.name or pathlib.Path(config.task.path.removeprefix("builtin:")).stem
    return pathlib.Path(workdir) / "eval" / name


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    overrides, rest = config_lib.split_config_overrides(argv)
    args = _parser().parse_args(rest)

    with exit_on_user_error("gfm_jax.evaluate"):
        from gfm_jax.evaluate import results

        if args.mode == "report":
            from gfm_jax.evaluate.report import quickstart_table

            print(quickstart_table(args.workdir, args.task))
            return
        if args.mode == "aggregate":
            print(results.summarize(results.load_runs(args.runs), args.out))
            return
        if args.mode in ("finetune", "probe"):
            distributed.initialize(args)
        host_memory.retain_freed_memory()  # before XLA allocates: see host_memory.py
        if args.mode in ("finetune", "probe"):
            config = config_lib.load_config(args.config, overrides)
            out = pathlib.Path(args.out) if args.out else _task_dir(args.workdir, config)
            _run_task(
                args.mode, config, args.workdir, args.model, _seeds(args.seeds, config.seeds), out
            )
            import jax

            if jax.process_index() == 0:
                print(results.summarize(results.load_runs([out]), out))
        elif args.mode == "suite":
            from gfm_jax.evaluate import suites

            config = config_lib.load_config(args.config, overrides)
            models = [m.strip() for m in args.models.split(",") if m.strip()]
            allowed = MODELS[args.suite_mode]
            if not models or set(models) - set(allowed):
                raise UserError(f"--models={args.models!r}: {args.suite_mode} takes {allowed}")
            out = pathlib.Path(args.out or pathlib.Path(args.workdir) / "eval" / config.suite.name)
            for task_config in suites.task_configs(config):
                for model in models:
                    _run_task(
                        args.suite_mode, task_config, args.workdir, model,
                        _seeds(args.seeds, config.seeds), out / task_config.task.name,
                    )  # fmt: skip
            print(results.summarize(results.load_runs([out]), out))
        elif args.mode == "embed":
            from gfm_jax.evaluate import embed

            print(
                json.dumps(
                    embed.run(
                        args.workdir, args.input, args.out, args.pooling, args.window, args.column
                    )
                )
            )
        elif args.mode == "vep":
            from gfm_jax.evaluate import vep

            print(json.dumps(vep.run(args.workdir, args.vcf, args.fasta, args.out, args.window)))
        elif args.mode == "perplexity":
            from gfm_jax.evaluate import perplexity

            result = perplexity.run(args.workdir, args.fasta)
            out = pathlib.Path(args.out or pathlib.Path(args.workdir) / "eval" / "perplexity.json")
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=1))
            print(
                json.dumps({k: result[k] for k in ("loss", "accuracy", "bits_per_base", "windows")})
            )
            print(f"wrote {out}")


if __name__ == "__main__":
    main()
