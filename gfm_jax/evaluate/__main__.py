"""Evaluation entry points; each restores parameters only.

python -m gfm_jax.evaluate finetune --config configs/tasks/splice.py --workdir DIR
    [--init pretrained|scratch] [--seed N] [--out FILE.json] [--config.k=v ...]
python -m gfm_jax.evaluate report --workdir DIR
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from gfm_jax import config as config_lib
from gfm_jax import distributed, host_memory
from gfm_jax.errors import exit_on_user_error


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    overrides, rest = config_lib.split_config_overrides(argv)
    parser = argparse.ArgumentParser(
        prog="gfm_jax.evaluate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    modes = parser.add_subparsers(dest="mode", required=True)
    ft = modes.add_parser("finetune", help="fine-tune and test a sequence classifier on a CSV task")
    ft.add_argument("--config", required=True, help="task config, e.g. configs/tasks/splice.py")
    ft.add_argument("--workdir", required=True, help="pretraining workdir (its latest checkpoint)")
    ft.add_argument("--init", default="pretrained", choices=("pretrained", "scratch"))
    ft.add_argument("--seed", type=int, default=None, help="overrides the config's seed")
    ft.add_argument("--out", default=None, help="JSON results (default: WORKDIR/eval/...)")
    distributed.add_flags(ft)
    rp = modes.add_parser("report", help="print the pretraining + fine-tuning table of a workdir")
    rp.add_argument("--workdir", required=True)
    args = parser.parse_args(rest)

    with exit_on_user_error("gfm_jax.evaluate"):
        if args.mode == "report":
            from gfm_jax.evaluate.report import quickstart_table

            print(quickstart_table(args.workdir))
            return
        distributed.initialize(args)
        host_memory.retain_freed_memory()  # before XLA allocates: see host_memory.py
        config = config_lib.load_config(args.config, overrides)
        from gfm_jax.evaluate.finetune import finetune

        result = finetune(config, args.workdir, init=args.init, seed=args.seed)
        out = (
            pathlib.Path(args.out)
            if args.out
            else (
                pathlib.Path(args.workdir)
                / "eval"
                / f"finetune_{pathlib.Path(args.config).stem}_{args.init}_seed{result['seed']}.json"
            )
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
