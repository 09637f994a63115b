"""Stopping cleanly on SIGTERM / SIGINT: finish the step, save it, exit non-zero.

One process: the handlers only set a flag that the loop reads after each step (nothing unsafe
runs inside a signal handler). Several processes: JAX's coordination service already turns a
SIGTERM on any host into a preemption notice, and `reached_preemption_sync_point(step)` becomes
true on every process at the same step, so all of them save that step together.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

import jax
from jax.experimental import multihost_utils

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
    """Training stopped on a signal after saving `step`; exit with `exit_code` (128 + signal)."""

    def __init__(self, signum: int, step: int, directory: str):
        name = signal.Signals(signum).name
        super().__init__(
            f"stopped by {name} after saving step {step} in {directory}; "
            "run the same command to resume from it"
        )
        self.exit_code = 128 + signum


class StopRequests:
    """Catches SIGTERM and SIGINT while training; `close()` restores the previous handlers."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.multiprocess = jax.process_count() > 1
        self._previous = {}
        if self.multiprocess:
            return  # the coordination service owns SIGTERM; ^C keeps its default behaviour
        if threading.current_thread() is not threading.main_thread():
            return  # Python delivers signals to the main thread only; leave the defaults
        for signum in SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        del frame
        self.signum = signum

    def stop_after(self, step: int) -> int | None:
        """The signal to stop on after `step` (the same answer on every process), or None."""
        if self.multiprocess:
            return signal.SIGTERM if multihost_utils.reached_preemption_sync_point(step) else None
        return self.signum

    def close(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
