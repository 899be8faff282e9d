"""The one error policy of every step's CLI: expected errors are one line, exit 1."""

from __future__ import annotations

import sys
from collections.abc import Callable

# Errors that mean "your input is wrong", not "thermops is broken": reported as one
# line without a traceback. Anything else propagates with its traceback.
_EXPECTED = (ValueError, FileNotFoundError, KeyError)


def run_cli(go: Callable[[], str | None]) -> None:
    """Run a step; print its one-line result, or `error: ...` and exit 1 on bad input."""
    try:
        msg = go()
    except _EXPECTED as err:
        text = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {text}", file=sys.stderr)
        raise SystemExit(1) from None
    if msg:
        print(msg)
