"""The one exception type a user should see: a bad input, named, with the fix.

Entry points catch `UserError` and print its message on one line (no traceback), so every
`raise UserError(...)` must say what was wrong (the file, key or path) and what to do.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import traceback
from collections.abc import Iterator
from typing import Any


class UserError(Exception):
    """A problem with the user's input (file, config key, workdir), not a bug."""


@contextlib.contextmanager
def exit_on_user_error(program: str) -> Iterator[None]:
    """Turns a `UserError` into `program: error: <message>` on stderr and exit code 2."""
    try:
        yield
    except UserError as e:
        print(f"{program}: error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


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
