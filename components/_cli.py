"""The one CLI policy of every step (`python -m components.<step> ...`).

- Flags carry paths, all of them required (dvc.yaml and the Kubeflow components pass
  every one); knobs come from params.yaml.
- Exit status, the same for every step:

  | code | meaning |
  |---|---|
  | 0 | done |
  | 1 | the input is wrong (params, data, calibration, model card, a failed validation, a non-finite loss): one `error: ...` line, no traceback |
  | 2 | the command line is wrong (argparse) |
  | 3 | the gate refused the model (`gate.enforce`): `error: gate failed ...` and its reasons |
  | 70 | a bug in thermops: the traceback, then this code |
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_GATE_FAILED = 3
EXIT_BUG = 70  # sysexits.h EX_SOFTWARE

# Errors that mean "your input is wrong", not "thermops is broken". ValueError covers
# ParamsError, CalibrationError, PreparedDataError, ModelCardError, ImportDataError,
# ValidationFailed, PackageError; FloatingPointError is a non-finite training loss.
EXPECTED = (ValueError, FileNotFoundError, NotADirectoryError, FloatingPointError)


class Refused(Exception):
    """A step ran and its verdict is no (the gate): exit with `exit_code`, not as an error."""

    exit_code = EXIT_GATE_FAILED


def parser(doc: str | None, *paths: tuple[str, str]) -> argparse.ArgumentParser:
    """An argument parser with `--params` and the step's required path flags.

    Args:
        doc: the step module's docstring (its first line is the description).
        paths: (flag, help) for each path the step reads or writes, e.g. ("--out", "data/prepared").
    """
    ap = argparse.ArgumentParser(
        description=(doc or "").strip().splitlines()[0] if doc else None,
        epilog="Exit status: 0 done, 1 bad input, 2 bad command line, 3 gate refused, 70 bug.",
    )
    ap.add_argument("--params", type=Path, required=True, help="params.yaml")
    for flag, help_text in paths:
        ap.add_argument(flag, type=Path, required=True, help=help_text)
    return ap


def run_cli(go: Callable[[], str | None]) -> None:
    """Run a step; print its one-line result, or fail with the exit status of the policy above."""
    try:
        msg = go()
    except Refused as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(err.exit_code) from None
    except EXPECTED as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_ERROR) from None
    except Exception:  # noqa: BLE001 - a bug: show where, with its own exit status
        traceback.print_exc()
        raise SystemExit(EXIT_BUG) from None
    if msg:
        print(msg)
