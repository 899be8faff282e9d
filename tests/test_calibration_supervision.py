"""Retrains as supervised work, with real processes: the watcher CLI, `dvc repro`, a toy pipeline.

Every test runs `python -m pipeline.recalibrate watch --once` as an operator would, in a tiny git +
DVC project (tests/calibration_helpers.py make_dvc_project: train, gate, package in seconds), and
checks the process table (/proc) for what is left: a stopped watcher stops its whole retrain, a
killed one leaves a retrain that the next watcher adopts, a DVC lock held by someone else and a
stop are not failures, and a gate refusal stays visible until a retrain passes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from tests.calibration_helpers import (
    commit_all,
    make_dvc_project,
    process_table_with,
    set_toy,
    subprocess_env,
)
from thermops.camera.registry import record_calibration

MARK = "THERMOPS_TEST_MARK"
pytestmark = pytest.mark.timeout(600)


def _reaim(root, pitch=8.0):
    record_calibration(root / "data" / "calibration", "fence_mid", assignments=[("geometry.pitch_deg", pitch)])
    commit_all(root, f"fence_mid pitch {pitch}")


def _watch_cmd():
    return [sys.executable, "-m", "pipeline.recalibrate", "watch", "--once", "--deployed-model", "models/deployed"]


def _start_watcher(root, mark):
    return subprocess.Popen(
        _watch_cmd(), cwd=root, env=subprocess_env(**{MARK: mark}), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip


def _run_watcher(root, mark="-"):
    proc = subprocess.run(
        _watch_cmd(), cwd=root, env=subprocess_env(**{MARK: mark}), capture_output=True, text=True, timeout=300
    )
    return proc.returncode, proc.stdout + proc.stderr


def _wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _state(root):
    return json.loads((root / ".thermops" / "trigger-state.json").read_text())


def _train_runs(root):
    path = root / "train-runs.txt"
    return path.read_text().splitlines() if path.exists() else []


def _deployed_version(root, cam="fence_mid"):
    return json.loads((root / "models" / "deployed" / "card.json").read_text())["calibrations"][cam]


def _pgid(pid):
    return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[2])


def test_a_stopped_watcher_stops_its_whole_retrain_and_counts_nothing(tmp_path):
    root = make_dvc_project(tmp_path)
    set_toy(root, train_s=120.0)
    _reaim(root)
    mark = uuid.uuid4().hex
    watcher = _start_watcher(root, mark)
    try:
        _wait_for(lambda: (root / "train-started").exists(), 120, "the retrain's training step")
        tree = process_table_with(MARK, mark)
        # watcher, runner, dvc, the stage's shell/python: the retrain is a process group of its own
        retrain = [p for p in tree if p != watcher.pid]
        assert len(retrain) >= 3, tree
        groups = {_pgid(p) for p in retrain}
        assert len(groups) == 1 and groups != {_pgid(watcher.pid)}
        os.kill(watcher.pid, signal.SIGTERM)  # the watcher only, as systemd or Kubernetes would
        out, _ = watcher.communicate(timeout=60)
    finally:
        if watcher.poll() is None:
            watcher.kill()
    assert watcher.returncode == 128 + signal.SIGTERM, out
    assert "terminating the retrain's process group" in out
    assert process_table_with(MARK, mark) == []  # no orphan: nothing of the retrain is left
    state = _state(root)
    assert state["job"] is None
    (pending,) = state["pending"]["fence_mid"].values()
    assert pending["attempts"] == 0 and pending["outcome"] == "interrupted"
    assert state["events"][-1]["kind"] == "interrupted"
    # The next watcher retrains from scratch (DVC's lock is free) and succeeds.
    set_toy(root, train_s=0.0)
    code, out = _run_watcher(root)
    assert code == 0, out
    assert "retrained" in out and len(_train_runs(root)) == 2
    new_version = next(iter(_state(root)["handled"]["fence_mid"]))
    assert _deployed_version(root) == new_version
    assert _state(root)["pending"] == {}


def test_a_killed_watchers_retrain_is_adopted_not_repeated(tmp_path):
    root = make_dvc_project(tmp_path)
    set_toy(root, train_s=12.0)
    _reaim(root)
    mark = uuid.uuid4().hex
    first = _start_watcher(root, mark)
    try:
        _wait_for(lambda: (root / "train-started").exists(), 120, "the retrain's training step")
        first.kill()  # SIGKILL: no handler runs, the retrain keeps going
        first.communicate(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    running = process_table_with(MARK, mark)
    assert running and first.pid not in running  # the retrain outlived its watcher ...
    job = _state(root)["job"]
    assert job["kind"] == "local" and job["pid"] in running  # ... and the state names it
    code, out = _run_watcher(root)  # a restarted watcher, while the retrain still runs
    assert code == 0, out
    assert "adopting the retrain" in out and "not starting another" in out
    assert len(_train_runs(root)) == 1  # one training run, no second `dvc repro`
    assert "is busy" not in out
    state = _state(root)
    assert state["job"] is None and state["pending"] == {}
    version = next(iter(state["handled"]["fence_mid"]))
    assert _deployed_version(root) == version and state["events"][-1]["kind"] == "adopted"
    assert process_table_with(MARK, mark) == []  # it ended under supervision
    status = subprocess.run(
        [sys.executable, "-m", "dvc", "status"], cwd=root, env=subprocess_env(), capture_output=True, text=True
    )
    assert "Data and pipelines are up to date" in status.stdout


def test_a_dvc_lock_held_by_another_repro_is_not_a_failure(tmp_path):
    # The orphan: a `dvc repro` the watcher did not start holds DVC's lock.
    root = make_dvc_project(tmp_path)
    set_toy(root, train_s=15.0)
    _reaim(root)
    mark = uuid.uuid4().hex
    manual = subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro"], cwd=root, env=subprocess_env(**{MARK: mark}),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        _wait_for(lambda: (root / "train-started").exists(), 120, "the manual repro's training step")
        for _ in range(3):  # three passes while it runs: none counts against max_attempts (3)
            code, out = _run_watcher(root)
            assert code == 4, out
            assert "DVC's lock is held by another process (PID" in out and "not counted" in out
            (pending,) = _state(root)["pending"]["fence_mid"].values()
            assert pending["attempts"] == 0 and pending["outcome"] == "lock"
        assert manual.wait(timeout=120) == 0
    finally:
        if manual.poll() is None:
            os.killpg(manual.pid, signal.SIGKILL)
    # The manual repro trained on the new calibration: the next pass sees it deployed and runs nothing.
    code, out = _run_watcher(root)
    assert code == 0, out
    assert "fence_mid: deployed" in out and "no retrain triggered" in out
    assert len(_train_runs(root)) == 1
    assert process_table_with(MARK, mark) == []


def test_a_gate_refusal_stays_visible_and_is_retried_until_a_retrain_passes(tmp_path):
    root = make_dvc_project(tmp_path)
    set_toy(root, refuse=True)
    _reaim(root)
    old = _deployed_version(root)
    for attempt in (1, 2):
        code, out = _run_watcher(root)
        assert code == 3, out  # the pass says so: a gate refusal is pending
        assert f"fence_mid {old} -> " in out and "refused: the gate refused the retrained model" in out
        assert f"attempt {attempt} of 3" in out and "flip rate 0.125 > 0.1" in out
        assert "attention: fence_mid refused" in out
        # The trap of the issue: the gate's output card carries the new calibration, the deployed
        # model does not, and the watcher reads the deployed one.
        gated = json.loads((root / "models" / "gated" / "card.json").read_text())
        assert gated["calibrations"]["fence_mid"] != old and _deployed_version(root) == old
        metrics = (root / ".thermops" / "watcher.prom").read_text()
        assert 'state="refused"' in metrics and "thermops_watcher_pass_exit_code 3" in metrics
        assert 'thermops_watcher_retrain_attempts{camera="fence_mid"} ' + str(attempt) in metrics
    assert len(_train_runs(root)) == 1  # the retries re-ran the gate; DVC kept the trained model
    # The cause is fixed (here: the gate's thresholds): the next retry passes and deploys.
    set_toy(root, refuse=False)
    code, out = _run_watcher(root)
    assert code == 0, out
    assert _deployed_version(root) != old and _state(root)["pending"] == {}
    code, out = _run_watcher(root)
    assert code == 0 and "fence_mid: deployed" in out


def test_a_polling_watcher_stops_cleanly_between_passes(tmp_path):
    from tests.calibration_helpers import make_project

    root = make_project(tmp_path, cameras=("fence_mid",))
    cmd = [
        sys.executable,
        "-m",
        "pipeline.recalibrate",
        "watch",
        "--interval",
        "1",
        "--deployed-model",
        "models/deployed",
    ]
    watcher = subprocess.Popen(
        cmd, cwd=root, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        state = root / ".thermops" / "trigger-state.json"
        _wait_for(
            lambda: state.exists() and (json.loads(state.read_text()).get("last_pass") or {}).get("at"), 60, "a pass"
        )
        first = json.loads(state.read_text())["last_pass"]["at"]
        _wait_for(lambda: json.loads(state.read_text())["last_pass"]["at"] != first, 60, "a second pass")
        watcher.send_signal(signal.SIGTERM)
        out, _ = watcher.communicate(timeout=30)
    finally:
        if watcher.poll() is None:
            watcher.kill()
    assert watcher.returncode == 128 + signal.SIGTERM and "stopped by signal 15" in out
    assert "fence_mid: deployed" in out
