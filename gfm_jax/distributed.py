"""Multi-process start-up: `jax.distributed.initialize` first thing in every entry point.

How the processes find each other, in order:
1. Explicit: `--coordinator HOST:PORT --num_processes N --process_id I` (or the environment
   variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID), as
   scripts/launch_local.sh passes them.
2. Detected: under SLURM with more than one task (srun, scripts/launch_slurm.sh), on a TPU
   slice whose TPU_WORKER_HOSTNAMES lists several hosts, or with `--auto_distributed`
   (GFM_JAX_DISTRIBUTED=auto, which scripts/launch_tpu_pod.sh sets), JAX reads the cluster's
   own environment: `jax.distributed.initialize()` without arguments.
3. Otherwise one process: nothing to start.

On CPU the processes talk through gloo collectives, and `--cpu_devices` (JAX_NUM_CPU_DEVICES)
gives each process that many CPU devices. `--heartbeat_timeout` bounds how long the survivors of
a dead process wait: the coordination service declares a process dead after that many seconds
without a heartbeat and stops the others with an error, instead of a hang. A restart resumes from
the last checkpoint.

Logging and shared files come from process 0 only (see `is_main`); each process writes only its
own part of a checkpoint (Orbax coordinates that).
"""

from __future__ import annotations

import os

import jax
from absl import flags

from gfm_jax.errors import UserError

DEFAULT_HEARTBEAT_TIMEOUT = 60  # seconds; JAX's own default is 100


def _env_int(name: str, default: int | None = None) -> int | None:
    """An integer environment variable, or a one-line error naming it."""
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise UserError(f"environment variable {name}={text!r} is not an integer") from None


def define_flags(flag_values: flags.FlagValues) -> None:
    """The multi-process flags on `flag_values` (absl); their defaults come from the environment."""
    env = os.environ.get
    fv = flag_values
    num = _env_int
    flags.DEFINE_string(
        "coordinator", env("JAX_COORDINATOR_ADDRESS"), "HOST:PORT of process 0", flag_values=fv
    )
    flags.DEFINE_integer(
        "num_processes", num("JAX_NUM_PROCESSES"), "processes in the run", flag_values=fv
    )
    flags.DEFINE_integer(
        "process_id", num("JAX_PROCESS_ID"), "this process, from 0", flag_values=fv
    )
    flags.DEFINE_integer(
        "cpu_devices",
        num("JAX_NUM_CPU_DEVICES"),
        "CPU devices per process (local multi-device runs without an accelerator)",
        flag_values=fv,
    )
    flags.DEFINE_bool(
        "auto_distributed",
        env("GFM_JAX_DISTRIBUTED") == "auto",
        "let JAX detect the cluster (TPU pod slices, SLURM); GFM_JAX_DISTRIBUTED=auto",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "heartbeat_timeout",
        num("GFM_JAX_HEARTBEAT_TIMEOUT", DEFAULT_HEARTBEAT_TIMEOUT),
        "seconds without a heartbeat before a process counts as dead and the run stops",
        flag_values=fv,
    )


def detected_cluster() -> str | None:
    """'slurm' or 'tpu' when this process is one of several that the cluster started."""
    # SLURM_STEP_ID: started by srun as one of the step's tasks, not merely inside a batch job
    # that has several tasks (a plain `python` line of an sbatch script must not wait for peers).
    slurm_step = "SLURM_JOB_ID" in os.environ and "SLURM_STEP_ID" in os.environ
    if slurm_step and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return "slurm"
    if len(os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1:
        return "tpu"
    return None


def initialize(args: flags.FlagValues) -> None:
    """Starts jax.distributed when several processes are asked for or detected (`define_flags`)."""
    if getattr(args, "cpu_devices", None):
        jax.config.update("jax_num_cpu_devices", int(args.cpu_devices))
    given = [args.coordinator, args.num_processes, args.process_id]
    heartbeat = int(getattr(args, "heartbeat_timeout", DEFAULT_HEARTBEAT_TIMEOUT))
    if all(v is None for v in given):
        if getattr(args, "auto_distributed", False) or detected_cluster() is not None:
            # gloo only matters to CPU devices (a CPU-only cluster); accelerators ignore it.
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
            jax.distributed.initialize(heartbeat_timeout_seconds=heartbeat)
        return
    if any(v is None for v in given):
        raise UserError(
            "multi-process runs need --coordinator, --num_processes and --process_id together "
            "(or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID)"
        )
    if int(args.num_processes) <= 1:
        return
    if not 0 <= int(args.process_id) < int(args.num_processes):
        raise UserError(
            f"--process_id={args.process_id}: must be in [0, {args.num_processes}) "
            f"for --num_processes={args.num_processes}"
        )
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        args.coordinator,
        num_processes=int(args.num_processes),
        process_id=int(args.process_id),
        heartbeat_timeout_seconds=heartbeat,
    )


def is_main() -> bool:
    """True in the process that logs and writes shared files (process 0)."""
    return jax.process_index() == 0
