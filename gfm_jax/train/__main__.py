"""python -m gfm_jax.train --config configs/pretrain/tiny.py --workdir DIR [--config.k=v ...]"""

from __future__ import annotations

import argparse
import sys

from gfm_jax import config as config_lib
from gfm_jax import distributed, host_memory
from gfm_jax.errors import exit_on_user_error


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    overrides, rest = config_lib.split_config_overrides(argv)
    parser = argparse.ArgumentParser(prog="gfm_jax.train", description=__doc__)
    parser.add_argument(
        "--config", required=True, help="config file, e.g. configs/pretrain/tiny.py"
    )
    parser.add_argument("--workdir", required=True, help="checkpoints and metrics go here")
    distributed.add_flags(parser)
    args = parser.parse_args(rest)
    with exit_on_user_error("gfm_jax.train"):
        distributed.initialize(args)
        host_memory.retain_freed_memory()  # before XLA allocates: see host_memory.py
        config = config_lib.load_config(args.config, overrides)
        from gfm_jax.train.loop import train  # after distributed start-up: imports jax users
        from gfm_jax.train.preemption import Preempted

        try:
            train(config, args.workdir)
        except Preempted as e:
            print(f"gfm_jax.train: {e}", file=sys.stderr, flush=True)
            raise SystemExit(e.exit_code) from None


if __name__ == "__main__":
    main()
