"""Every step follows one CLI policy (components/_cli.py): required path flags, one-line
errors with exit 1, exit 3 for a refused gate, exit 70 with a traceback for a bug."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components import _cli

ROOT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
STEPS = sorted(p.stem for p in (ROOT / "components").glob("*.py") if not p.stem.startswith("_"))


def _go(fn):
    with pytest.raises(SystemExit) as exc:
        _cli.run_cli(fn)
    return exc.value.code


def test_expected_errors_are_one_line_and_exit_1(capsys):
    def bad():
        raise ValueError("prepare.size: expected an integer, got 'x'")

    assert _go(bad) == _cli.EXIT_ERROR == 1
    err = capsys.readouterr().err
    assert err == "error: prepare.size: expected an integer, got 'x'\n"


def test_a_refused_gate_exits_3(capsys):
    def refused():
        raise _cli.Refused("gate failed with 2 reason(s)")

    assert _go(refused) == _cli.EXIT_GATE_FAILED == 3
    assert capsys.readouterr().err.startswith("error: gate failed")


def test_a_bug_shows_its_traceback_and_exits_70(capsys):
    def bug():
        return {}["no such key"]

    assert _go(bug) == _cli.EXIT_BUG == 70
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError" in err


def test_a_result_is_printed(capsys):
    _cli.run_cli(lambda: "prepared 3 tubelets")
    assert capsys.readouterr().out == "prepared 3 tubelets\n"


def _flags(cmd: str) -> list[str]:
    return re.findall(r"(--[a-z-]+)", cmd)


@pytest.mark.parametrize("step", STEPS)
def test_every_path_flag_is_required(step):
    """A step run without its paths says which are missing (argparse, exit 2): no hidden defaults."""
    proc = subprocess.run(
        [sys.executable, "-m", f"components.{step}"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == _cli.EXIT_USAGE, proc.stderr
    missing = re.search(r"the following arguments are required: (.*)", proc.stderr).group(1)
    stage = next(s.get("do", s) for s in STAGES.values() if f"components.{step} " in s.get("do", s)["cmd"])
    assert sorted(missing.split(", ")) == sorted(_flags(stage["cmd"])), "dvc.yaml must pass exactly the step's flags"
