"""python -m gfm_jax.train --config configs/pretrain/tiny.py --workdir DIR [--config.k=v ...]

`--config=FILE.py[:ARG]` loads FILE's get_config(ARG); each `--config.a.b=v` then sets one key,
parsed to the type of the value it replaces (e.g. --config.train.num_steps=10,
--config.data.genomes="('a.fa','b.fa.gz')").
"""

from __future__ import annotations

if __name__ == "__main__":  # first: Ctrl-C while the libraries below import is one line too
    from gfm_jax.errors import stop_on_signals

    stop_on_signals("gfm_jax.train")
    from gfm_jax.platforms import skip_absent_tpu

    skip_absent_tpu()  # before jax imports

import sys
from collections.abc import Sequence

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from gfm_jax import command_line, distributed, host_memory
from gfm_jax import config as config_lib
from gfm_jax.errors import UserError, exit_on_user_error, quiet_late_callbacks

PROG = "gfm_jax.train"
FLAGS = flags.FLAGS


def _define_flags(argv: list[str] | None) -> None:
    """`argv`: the command line to parse (None: sys.argv), where config_flags finds overrides."""
    config_flags.DEFINE_config_file(
        "config", None, "config file, e.g. configs/pretrain/tiny.py[:smoke]", sys_argv=argv
    )
    flags.mark_flag_as_required("config")
    flags.DEFINE_string("workdir", None, "checkpoints and metrics go here", required=True)
    distributed.define_flags(FLAGS)
    flags.adopt_module_key_flags(distributed)  # --help lists them


def _parse(argv: Sequence[str]) -> list[str]:
    with exit_on_user_error(PROG):
        return command_line.parse_flags(FLAGS, argv)


def _run(argv: Sequence[str]) -> None:
    with exit_on_user_error(PROG):
        if len(argv) > 1:
            raise UserError(f"unexpected arguments {argv[1:]}; see --help")
        if not FLAGS["verbosity"].present:  # absl.app raises it to INFO: keep library logs quiet
            absl_logging.set_verbosity(absl_logging.WARNING)
        config_lib.check_pretrain(FLAGS.config)  # before TensorFlow and the model code load
        distributed.initialize(FLAGS)
        host_memory.retain_freed_memory()  # before XLA allocates: see host_memory.py
        from gfm_jax.data.pipeline import hide_gpus_from_tensorflow

        hide_gpus_from_tensorflow()
        from gfm_jax.train.loop import train  # after distributed start-up: imports jax users
        from gfm_jax.train.preemption import Preempted

        try:
            train(FLAGS.config, FLAGS.workdir)
        except Preempted as e:
            print(f"{PROG}: {e}", file=sys.stderr, flush=True)
            raise SystemExit(e.exit_code) from None


def main(argv: Sequence[str] | None = None) -> None:
    """Runs `argv` (default: this process's command line, without the program name)."""
    full = None if argv is None else [PROG, *argv]
    with exit_on_user_error(PROG):  # flag defaults read the environment
        _define_flags(full)
    app.run(_run, argv=full, flags_parser=_parse)


if __name__ == "__main__":
    # Process-wide, for the program only (tests call main() in their own process).
    quiet_late_callbacks()
    main()
