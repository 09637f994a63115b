"""Multi-process start-up: `jax.distributed.initialize` first thing in every entry point.

Single-process runs need nothing. For several processes give the coordinator, the process
count and this process's id by flags or by the environment variables JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES and JAX_PROCESS_ID. On CPU the processes talk through gloo collectives.
"""

from __future__ import annotations

import argparse
import os

import jax

from gfm_jax.errors import UserError


def add_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("multi-process")
    group.add_argument("--coordinator", default=os.environ.get("JAX_COORDINATOR_ADDRESS"))
    group.add_argument("--num_processes", type=int, default=os.environ.get("JAX_NUM_PROCESSES"))
    group.add_argument("--process_id", type=int, default=os.environ.get("JAX_PROCESS_ID"))


def initialize(args: argparse.Namespace) -> None:
    """Starts jax.distributed when several processes are asked for; otherwise does nothing."""
    given = [args.coordinator, args.num_processes, args.process_id]
    if all(v is None for v in given):
        return
    if any(v is None for v in given):
        raise UserError(
            "multi-process runs need --coordinator, --num_processes and --process_id together "
            "(or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID)"
        )
    if int(args.num_processes) <= 1:
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        args.coordinator, num_processes=int(args.num_processes), process_id=int(args.process_id)
    )
