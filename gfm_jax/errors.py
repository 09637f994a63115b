"""The one exception type a user should see: a bad input, named, with the fix.

Entry points catch `UserError` and print its message on one line (no traceback), so every
`raise UserError(...)` must say what was wrong (the file, key or path) and what to do.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator


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
