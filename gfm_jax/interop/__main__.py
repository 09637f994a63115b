"""Import / export public checkpoints: ESM-2, Nucleotide Transformer v1 and v2, OmniGenome,
DNABERT-2 (see docs/interop.md).

    python -m gfm_jax.interop import hf:InstaDeepAI/nucleotide-transformer-v2-50m-multi-species \
        --workdir runs/nt_v2_50m
    python -m gfm_jax.interop import HF_DIR --workdir runs/imported
    python -m gfm_jax.interop export --workdir runs/tiny --out hf_tiny [--family esm]

The source is a Hugging Face directory or `hf:<org>/<name>[@revision]` (downloaded, or read from
the Hugging Face cache offline). `import` writes an Orbax checkpoint (step 0, params + meta) that
every `gfm_jax.evaluate` mode reads with `--workdir`, and that `gfm_jax.train` starts from with
`--config.train.init_from` (it prints the flags a training config needs). `export` writes
config.json, model.safetensors and the tokenizer files in the family's layout.
"""

from __future__ import annotations

if __name__ == "__main__":  # first: Ctrl-C while the libraries below import is one line too
    from gfm_jax.errors import stop_on_signals

    stop_on_signals("gfm_jax.interop")
    from gfm_jax.platforms import skip_absent_tpu

    skip_absent_tpu()  # before jax imports

import json
import sys
from collections.abc import Sequence

from absl import flags

from gfm_jax import command_line
from gfm_jax.errors import UserError, exit_on_user_error, quiet_late_callbacks

PROG = "gfm_jax.interop"
MODES = ("import", "export")


def _define_flags(mode: str, fv: flags.FlagValues, command: list[str]) -> None:
    flags.DEFINE_string("workdir", None, "the gfm_jax workdir", flag_values=fv, required=True)
    if mode == "export":
        flags.DEFINE_string("out", None, "Hugging Face directory", flag_values=fv, required=True)
        flags.DEFINE_string(
            "family",
            "auto",
            "layout: esm | nt_v2 | omnigenome | dnabert2; auto: the imported one, else DNABERT-2 "
            "for post-LN models and ESM otherwise",
            flag_values=fv,
        )


def _parse(argv: Sequence[str]) -> tuple[str, flags.FlagValues, list[str]]:
    """(mode, its parsed flags, positional arguments) of a command line without the program."""
    mode, fv, rest = command_line.parse_mode(PROG, MODES, argv, _define_flags, __doc__)
    if mode == "import" and len(rest) != 1:
        raise UserError(
            "import takes one source: a directory with config.json, weights and vocab.txt (or "
            f"tokenizer.json), or hf:<org>/<name>[@revision]; got {rest}"
        )
    if mode == "export" and rest:
        raise UserError(f"unexpected arguments {rest}; see {PROG} export --help")
    return mode, fv, rest


def main(argv: Sequence[str] | None = None) -> None:
    """Runs `argv` (default: this process's command line, without the program name)."""
    with exit_on_user_error(PROG):
        mode, args, rest = _parse(sys.argv[1:] if argv is None else argv)
        try:
            import safetensors  # noqa: F401
        except ImportError:
            raise UserError(
                "gfm_jax.interop needs the interop extra: pip install -e '.[interop]'"
            ) from None
        from gfm_jax.data.pipeline import hide_gpus_from_tensorflow
        from gfm_jax.interop import workdir

        hide_gpus_from_tensorflow()
        if mode == "import":
            result = workdir.import_checkpoint(rest[0], args.workdir)
            print(json.dumps(result, indent=1))
            print(
                "train from it with: --config.train.init_from="
                + args.workdir
                + " "
                + " ".join(result["init_from_flags"])
            )
        else:
            result = workdir.export_checkpoint(args.workdir, args.out, args.family)
            print(json.dumps(result, indent=1))


if __name__ == "__main__":
    # Process-wide, for the program only (tests call main() in their own process).
    quiet_late_callbacks()
    main()
