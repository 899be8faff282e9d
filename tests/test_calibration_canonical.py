"""DVC and the watcher agree on what changed: the CLI writes one canonical form, `fmt` restores it.

DVC hashes a dependency's bytes; the watcher compares content. A comment-only or key-order edit
is no change to the watcher but a changed dependency to `dvc repro`, until `fmt` rewrites the
file in the canonical form, which gives back the exact bytes DVC recorded.
"""

from __future__ import annotations

import subprocess
import sys

from tests.calibration_helpers import make_dvc_project, subprocess_env


def _dvc_status(root):
    out = subprocess.run(
        [sys.executable, "-m", "dvc", "status"], cwd=root, env=subprocess_env(), capture_output=True, text=True
    )
    return out.stdout + out.stderr


def _recal(root, *args):
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.recalibrate", *args], cwd=root, env=subprocess_env(), capture_output=True,
        text=True,
    )  # fmt: skip
    return proc.returncode, proc.stdout + proc.stderr


def test_comment_and_key_order_edits_rerun_nothing_after_fmt(tmp_path):
    root = make_dvc_project(tmp_path)
    path = root / "data" / "calibration" / "fence_mid.yaml"
    recorded = path.read_bytes()
    assert "Data and pipelines are up to date" in _dvc_status(root)
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    i = next(n for n, line in enumerate(lines) if line.startswith("description:"))
    lines[i], lines[i + 1] = lines[i + 1], lines[i]
    path.write_text("# checked after the storm, nothing moved\n" + "".join(lines))
    # DVC sees a changed dependency (it hashes bytes) ...
    assert "changed deps" in _dvc_status(root) and "data/calibration" in _dvc_status(root)
    # ... the watcher sees the same calibration as the deployed model, and says how to fix the bytes.
    code, out = _recal(root, "watch", "--once", "--deployed-model", "models/deployed")
    assert code == 0 and "fence_mid: deployed" in out and "no retrain triggered" in out
    assert "not in the canonical form" in out and "fence_mid" in out.split("not in the canonical form")[1]
    code, out = _recal(root, "fmt", "--check")
    assert code == 1 and "not canonical: data/calibration/fence_mid.yaml" in out
    code, out = _recal(root, "fmt")
    assert (
        code == 0
        and "rewrote: data/calibration/fence_mid.yaml" in out
        and "unchanged: data/calibration/gate_wide.yaml" in out
    )
    assert path.read_bytes() == recorded
    assert "Data and pipelines are up to date" in _dvc_status(root)


def test_a_confirmation_written_by_the_cli_is_one_content_change_for_both(tmp_path):
    root = make_dvc_project(tmp_path)
    code, out = _recal(root, "record", "fence_mid", "--confirm", "--valid-from", "2026-11-22")
    assert code == 0 and "confirmed fence_mid version 2026-11-22.1" in out
    status = _dvc_status(root)
    assert "changed deps" in status  # a new version is new content: the pipeline re-runs for it
    code, out = _recal(root, "watch", "--once", "--deployed-model", "models/deployed")
    # to the watcher it is a version-only change: immaterial, handled, no retrain
    assert code == 0 and "fence_mid 2026-11-01.1 -> 2026-11-22.1: immaterial" in out and "no retrain triggered" in out
    code, out = _recal(root, "fmt", "--check")
    assert code == 0
