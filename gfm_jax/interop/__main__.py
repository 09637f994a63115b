"""Import / export Hugging Face ESM and Nucleotide Transformer checkpoints.

    python -m gfm_jax.interop import HF_DIR --workdir runs/nt_imported
    python -m gfm_jax.interop export --workdir runs/tiny --out hf_tiny

`import` writes an Orbax checkpoint (step 0, params + meta) that every `gfm_jax.evaluate` mode
reads with `--workdir`, and that `gfm_jax.train` starts from with `--config.train.init_from`
(it prints the model overrides a training config needs). `export` writes config.json,
model.safetensors and the ESM tokenizer files, loadable with transformers' EsmForMaskedLM (NT v2's
SwiGLU needs NT's own modelling code).
"""

from __future__ import annotations

import argparse
import json
import sys

from gfm_jax.errors import UserError, exit_on_user_error


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="gfm_jax.interop",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    modes = parser.add_subparsers(dest="mode", required=True)
    imp = modes.add_parser("import", help="Hugging Face directory -> gfm_jax workdir")
    imp.add_argument(
        "src", help="directory with config.json, model.safetensors (or .bin), vocab.txt"
    )
    imp.add_argument("--workdir", required=True)
    exp = modes.add_parser("export", help="gfm_jax workdir -> Hugging Face directory")
    exp.add_argument("--workdir", required=True)
    exp.add_argument("--out", required=True)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    with exit_on_user_error("gfm_jax.interop"):
        try:
            import safetensors  # noqa: F401
        except ImportError:
            raise UserError(
                "gfm_jax.interop needs the interop extra: pip install -e '.[interop]'"
            ) from None
        from gfm_jax.interop import workdir

        if args.mode == "import":
            result = workdir.import_checkpoint(args.src, args.workdir)
            print(json.dumps(result, indent=1))
            print(
                "train from it with: --config.train.init_from="
                + args.workdir
                + " "
                + " ".join(result["init_from_flags"])
            )
        else:
            print(json.dumps(workdir.export_checkpoint(args.workdir, args.out), indent=1))


if __name__ == "__main__":
    main()
