"""The one exception type a user should see: a bad input, named, with the fix.

Entry points catch `UserError` and print its message on one line (no traceback), so every
`raise UserError(...)` must say what was wrong (the file, key or path) and what to do.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import traceback
from collections.abc import Iterator
from typing import Any


class UserError(Exception):
    """A problem with the user's input (file, config key, workdir), not a bug."""


@contextlib.contextmanager
def exit_on_user_error(program: str) -> Iterator[None]:
    """Turns a `UserError` into `program: error: <message>` on stderr and exit code 2, and
    Ctrl-C (where `stop_on_signals` did not take it) into one line and exit code 130."""
    try:
        yield
    except UserError as e:
        print(f"{program}: error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        _stop(program, signal.SIGINT)


def _stop(program: str, signum: int) -> None:
    print(f"{program}: stopped by {signal.Signals(signum).name}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    # Not an exception: one raised from a signal handler is lost when it lands inside a
    # callback (JAX's garbage-collection hook), and interpreter shutdown with XLA and
    # TensorFlow threads cut off mid-way can crash. Nothing is left to save here: the training
    # loop installs its own handlers, which save a step first.
    os._exit(128 + signum)


def stop_on_signals(program: str) -> None:
    """Process-wide, for entry points: SIGINT (Ctrl-C) or SIGTERM during start-up or
    evaluation stops the process at once with one line and exit code 128 + signal."""

    def stop(signum: int, frame: Any) -> None:
        del frame
        _stop(program, signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)


def quiet_late_callbacks() -> None:
    """Process-wide, for entry points. When a read of a damaged checkpoint fails, Orbax closes
    its asyncio loop while TensorStore still holds reads of the other arrays; each would print
    a traceback ('Event loop is closed', or the same read error again, through the unraisable
    hook or asyncio's logger) after the one-line error that names the step. Only those are
    dropped; every other report prints as usual."""

    def from_a_checkpoint_read(error: BaseException | None, tb: Any) -> bool:
        if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
            return True
        text = "".join(traceback.format_exception(type(error), error, tb)) if error else ""
        return "orbax/checkpoint" in text or "OCDBT" in text or "TensorStore" in text

    def hook(unraisable: Any) -> None:
        if not from_a_checkpoint_read(unraisable.exc_value, unraisable.exc_traceback):
            sys.__unraisablehook__(unraisable)

    def keep(record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (
            "never retrieved" in record.getMessage()
            and from_a_checkpoint_read(error, error.__traceback__ if error else None)
        )

    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(keep)
