r"""Evaluation entry points. Every mode restores parameters only (never optimizer state).

    python -m gfm_jax.evaluate finetune   --config configs/tasks/splice.py --workdir DIR \
        [--model pretrained|scratch|cnn] [--seeds 0,1,2] [--strand both] [--config.k=v ...]
    python -m gfm_jax.evaluate probe      --config configs/tasks/splice.py --workdir DIR \
        [--model pretrained|scratch] [--seeds 0,1,2] [--strand both]
    python -m gfm_jax.evaluate suite      --config configs/suites/gue.py --workdir DIR \
        --config.suite.root=/data/GUE [--models pretrained,cnn] [--mode finetune|probe]
    python -m gfm_jax.evaluate embed      --workdir DIR --input seqs.fa|seqs.csv --out emb.npy
    python -m gfm_jax.evaluate vep        --workdir DIR --vcf v.vcf.gz --fasta ref.fa.gz \
        --out scores.tsv
    python -m gfm_jax.evaluate perplexity --workdir DIR --fasta held_out.fa.gz [--out p.json]
    python -m gfm_jax.evaluate merge      --finetuned RUN_CHECKPOINT_DIR --out DIR
    python -m gfm_jax.evaluate aggregate  RUN_DIR_OR_JSON ... --out DIR
    python -m gfm_jax.evaluate report     --workdir DIR

finetune also keeps each run's trained parameters (finetune.save) in a directory named as its
JSON; `merge` folds a LoRA / IA3 run's adapters into the base weights (evaluate/finetuned.py).
finetune / probe / suite write one JSON per run to DIR/eval/<task>/ (or --out) and a summary
over every run there: summary.{json,csv,md,png}, test metrics as mean +- sd over the seeds.
"""

from __future__ import annotations

if __name__ == "__main__":  # first: Ctrl-C while the libraries below import is one line too
    from gfm_jax.errors import stop_on_signals

    stop_on_signals("gfm_jax.evaluate")
    from gfm_jax.platforms import skip_absent_tpu

    skip_absent_tpu()  # before jax imports

import json
import pathlib
import sys
from collections.abc import Sequence

from absl import flags
from ml_collections import config_flags

from gfm_jax import command_line, distributed, host_memory
from gfm_jax import config as config_lib
from gfm_jax.errors import UserError, exit_on_user_error, quiet_late_callbacks
from gfm_jax.models.attention import ROPE_SCALINGS

PROG = "gfm_jax.evaluate"
MODELS = {"finetune": ("pretrained", "scratch", "cnn"), "probe": ("pretrained", "scratch")}
MODES = (
    "finetune", "probe", "suite", "embed", "vep", "perplexity", "merge", "aggregate", "report",
)  # fmt: skip


def _seeds(text: str | None, default: tuple) -> list[int]:
    if text is None:
        if not default:
            raise UserError("config key 'seeds' is empty; give e.g. --seeds 0,1,2")
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


def _define_task_flags(mode: str, fv: flags.FlagValues, argv: list[str]) -> None:
    """finetune / probe / suite: a config file and its overrides, the workdir, seeds, out."""
    example = "configs/suites/gue.py" if mode == "suite" else "configs/tasks/splice.py"
    config_flags.DEFINE_config_file(
        "config", None, f"{mode} config, e.g. {example}", flag_values=fv, sys_argv=argv
    )
    flags.mark_flag_as_required("config", flag_values=fv)
    workdir_help = "pretraining workdir (its latest checkpoint)"
    flags.DEFINE_string("workdir", None, workdir_help, flag_values=fv, required=True)
    seeds_help = "comma-separated seeds (default: the config's)"
    flags.DEFINE_string("seeds", None, seeds_help, flag_values=fv)
    out_help = "directory for the run JSONs (default WORKDIR/eval/TASK or SUITE)"
    flags.DEFINE_string("out", None, out_help, flag_values=fv)
    if mode == "suite":
        flags.DEFINE_string(
            "models", "pretrained,cnn", "comma-separated: pretrained,scratch,cnn", flag_values=fv
        )
        flags.DEFINE_enum("mode", "finetune", ("finetune", "probe"), "per task", flag_values=fv)
        return
    strand_help = "both: average each prediction with the reverse complement's (finetune.strand)"
    flags.DEFINE_enum("strand", None, config_lib.STRANDS, strand_help, flag_values=fv)
    flags.DEFINE_enum("model", "pretrained", MODELS[mode], "the encoder", flag_values=fv)
    flags.DEFINE_alias("init", "model", flag_values=fv)  # the old name of --model
    distributed.define_flags(fv)


def _define_flags(mode: str, fv: flags.FlagValues, argv: list[str]) -> None:
    """The flags of `mode` on `fv`; `argv` is the command line they will parse."""
    if mode in ("finetune", "probe", "suite"):
        _define_task_flags(mode, fv, argv)
        return

    def string(name: str, help_string: str, default: str | None = None) -> None:
        flags.DEFINE_string(name, default, help_string, flag_values=fv, required=default is None)

    if mode not in ("aggregate", "merge"):
        string("workdir", "pretraining workdir (its latest checkpoint)")
    if mode in ("embed", "vep", "perplexity"):
        string("mesh", "mesh.shape over the local devices, e.g. 1,1,1,8 (sequence 8: long "
               "windows sharded)", "-1,1,1,1")  # fmt: skip
        flags.DEFINE_enum("rope_scaling", None, ROPE_SCALINGS, "context extension (default: "
                          "the checkpoint's)", flag_values=fv)  # fmt: skip
        flags.DEFINE_float("rope_factor", None, "windows this many x the pretraining length",
                           flag_values=fv)  # fmt: skip
    if mode == "embed":
        string("input", "FASTA (.fa/.fa.gz) or CSV with a sequence column")
        string("out", "output .npy (an index .tsv is written beside it)")
        pooling = ("cls", "mean", "max", "none")
        flags.DEFINE_enum("pooling", "cls", pooling, "over the tokens", flag_values=fv)
        string("layers", "layers: -1 the output, 0 the embeddings, e.g. -1,-4, or all", "-1")
        flags.DEFINE_enum("strand", "forward", config_lib.STRANDS, "both: average with the "
                          "reverse complement's embedding", flag_values=fv)  # fmt: skip
        flags.DEFINE_integer(
            "window", 0, "FASTA window in bases (0: pretraining's)", flag_values=fv
        )
        string("column", "CSV sequence column", "sequence")
    elif mode == "vep":
        string("vcf", "variants (.vcf or .vcf.gz)")
        string("fasta", "the reference the VCF was called against")
        string("out", "output TSV (skipped variants: OUT.skipped.tsv)")
        flags.DEFINE_integer("window", 0, "bases of context (0: pretraining's)", flag_values=fv)
    elif mode == "perplexity":
        fasta_help = "held-out FASTA files (--fasta a.fa b.fa, or the flag repeated)"
        flags.DEFINE_multi_string("fasta", None, fasta_help, flag_values=fv, required=True)
        string("out", "JSON (default WORKDIR/eval/perplexity.json)", "")
        flags.DEFINE_integer("window", 0, "bases per window (0: pretraining's)", flag_values=fv)
    elif mode == "merge":
        string("finetuned", "a LoRA / IA3 fine-tune's directory (its run JSON's 'checkpoint')")
        string("out", "directory for the merged, standalone fine-tuned model")
    elif mode == "aggregate":
        string("out", "directory for summary.{json,csv,md,png} (after the run JSONs or dirs)")
    elif mode == "report":
        string("task", "the fine-tuning task in the table", "splice")


def _parse(argv: Sequence[str]) -> tuple[str, flags.FlagValues, list[str]]:
    """(mode, its parsed flags, positional arguments) of a command line without the program."""
    mode, fv, rest = command_line.parse_mode(PROG, MODES, argv, _define_flags, __doc__)
    # aggregate's runs are positional, and so are perplexity's FASTA files after the first
    # (`--fasta a.fa b.fa`, as well as `--fasta a.fa --fasta b.fa`).
    if mode == "aggregate" and not rest:
        raise UserError("aggregate needs run JSON files or directories holding them")
    if mode not in ("aggregate", "perplexity") and rest:
        raise UserError(f"unexpected arguments {rest}; see {PROG} {mode} --help")
    return mode, fv, rest


def _run_task(
    mode: str, config, workdir: str, model: str, seeds: list[int], out: pathlib.Path,
    save: bool = True,
) -> None:  # fmt: skip
    """`save`: keep each fine-tune's trained parameters beside its JSON (not for suites: a
    copy of the encoder per task and seed)."""
    from gfm_jax.evaluate import results

    if mode == "finetune":
        from gfm_jax.evaluate.finetune import finetune as run
    else:
        from gfm_jax.evaluate.probe import probe as run
    import jax

    for seed in seeds:
        result = run(config, workdir, model, seed, *([out] if mode == "finetune" and save else []))
        if jax.process_index() == 0:  # every process holds the same result; one writes it
            print(f"wrote {results.write_run(out, result)}", flush=True)


def _task_dir(workdir: str, config) -> pathlib.Path:
    name = config.task.name or pathlib.Path(config.task.path.removeprefix("builtin:")).stem
    return pathlib.Path(workdir) / "eval" / name


def _run_tasks(mode: str, args: flags.FlagValues) -> None:
    """finetune / probe on one task config, or every task of a suite config."""
    from gfm_jax.evaluate import results

    config = args.config
    if mode in ("finetune", "probe"):
        out = pathlib.Path(args.out) if args.out else _task_dir(args.workdir, config)
        _run_task(mode, config, args.workdir, args.model, _seeds(args.seeds, config.seeds), out)
        import jax

        if jax.process_index() == 0:
            print(results.summarize(results.load_runs([out]), out))
        return
    from gfm_jax.evaluate import suites

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    allowed = MODELS[args.mode]
    if not models or set(models) - set(allowed):
        raise UserError(f"--models={args.models!r}: {args.mode} takes {allowed}")
    out = pathlib.Path(args.out or pathlib.Path(args.workdir) / "eval" / config.suite.name)
    for task_config in suites.task_configs(config):
        for model in models:
            _run_task(
                args.mode, task_config, args.workdir, model,
                _seeds(args.seeds, config.seeds), out / task_config.task.name, save=False,
            )  # fmt: skip
    print(results.summarize(results.load_runs([out]), out))


def _load_options(args: flags.FlagValues) -> dict:
    """embed / vep / perplexity: the mesh and the run-time model keys (pretrained.load)."""
    try:
        shape = tuple(int(x) for x in args.mesh.strip("()").split(",") if x.strip())
    except ValueError:
        raise UserError(f"--mesh={args.mesh!r}: give sizes such as 1,1,1,8") from None
    overrides = {"rope_scaling": args.rope_scaling, "rope_factor": args.rope_factor}
    return {
        "mesh_shape": shape,
        "model_overrides": {k: v for k, v in overrides.items() if v is not None},
    }


def _run_tool(mode: str, args: flags.FlagValues, rest: list[str]) -> None:
    """embed / vep / perplexity: one process on the local devices."""
    if mode == "embed":
        from gfm_jax.evaluate import embed

        result = embed.run(
            args.workdir, args.input, args.out, args.pooling, args.window, args.column,
            args.layers, args.strand, **_load_options(args),
        )  # fmt: skip
        print(json.dumps(result))
    elif mode == "vep":
        from gfm_jax.evaluate import vep

        result = vep.run(
            args.workdir, args.vcf, args.fasta, args.out, args.window, **_load_options(args)
        )
        print(json.dumps(result))
    elif mode == "merge":
        from gfm_jax.evaluate import finetuned

        print(json.dumps(finetuned.merge(args.finetuned, args.out)))
    elif mode == "perplexity":
        from gfm_jax.evaluate import perplexity

        fasta = [*args.fasta, *rest]
        result = perplexity.run(args.workdir, fasta, window=args.window, **_load_options(args))
        out = pathlib.Path(args.out or pathlib.Path(args.workdir) / "eval" / "perplexity.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
        print(json.dumps({k: result[k] for k in ("loss", "accuracy", "bits_per_base", "windows")}))
        print(f"wrote {out}")


def main(argv: Sequence[str] | None = None) -> None:
    """Runs `argv` (default: this process's command line, without the program name)."""
    with exit_on_user_error(PROG):
        mode, args, rest = _parse(sys.argv[1:] if argv is None else argv)
        from gfm_jax.evaluate import results

        if mode == "report":
            from gfm_jax.evaluate.report import quickstart_table

            print(quickstart_table(args.workdir, args.task))
            return
        if mode == "aggregate":
            print(results.summarize(results.load_runs(rest), args.out))
            return
        if mode in ("finetune", "probe") and args.strand:
            args.config.finetune.strand = args.strand
        if mode in ("finetune", "probe", "suite"):  # before TensorFlow and the model code load
            config_lib.check_finetune(args.config)
            _seeds(args.seeds, args.config.seeds)
        if mode == "suite":
            config_lib.check_kind(args.config, "suite", "a suite", "--config=configs/suites/gue.py")
        if mode in ("finetune", "probe"):
            distributed.initialize(args)
        host_memory.retain_freed_memory()  # before XLA allocates: see host_memory.py
        from gfm_jax.data.pipeline import hide_gpus_from_tensorflow

        hide_gpus_from_tensorflow()
        if mode in ("finetune", "probe", "suite"):
            _run_tasks(mode, args)
        else:
            _run_tool(mode, args, rest)


if __name__ == "__main__":
    # Process-wide, for the program only (tests call main() in their own process).
    quiet_late_callbacks()
    main()
