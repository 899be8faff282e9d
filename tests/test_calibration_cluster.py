"""Cluster mode: exactly one Kubeflow run per change, also when the watcher dies mid-submission.

The server is the loopback KFP REST stand-in (tests/kfp_standin.py: NOT a Kubeflow server), driven
by the real `kfp.Client` through `pipeline.submit`; it can be slowed down so that a watcher is
killed while its POST is in flight. The intent (a deterministic run name) is recorded before the
POST, and every pass looks the run up by that name before it submits anything.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

from pipeline.recalibrate import main, run_name_for, watch_once
from tests.calibration_helpers import REPO, deployed_dir, subprocess_env, write_deployed
from tests.kfp_standin import KfpStandIn
from tests.pipeline_helpers import git, make_toy_repo, toy_params
from thermops.camera.registry import record_calibration

RUNS = "/apis/v2beta1/runs"


@pytest.fixture
def project(tmp_path):
    """The pipeline tests' toy DVC project, plus a camera registry, a deployed model and the trigger section."""
    real = yaml.safe_load((REPO / "params.yaml").read_text())
    params = toy_params() | {
        "prepare": {"window_m": real["prepare"]["window_m"], "size": real["prepare"]["size"]},
        "trigger": {**real["trigger"], "retry_backoff_s": 0.0},
    }
    root = make_toy_repo(tmp_path / "toy", params)
    (root / "data" / "calibration").mkdir(parents=True)
    shutil.copy(REPO / "data" / "calibration" / "fence_mid.yaml", root / "data" / "calibration")
    write_deployed(root, {"fence_mid": "2026-11-01.1"})
    (root / ".gitignore").write_text("models/deployed/\n.thermops/\n")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "camera registry")
    return root


def _reaim(root, field="geometry.pitch_deg", value=8.0):
    _, new = record_calibration(root / "data" / "calibration", "fence_mid", assignments=[(field, value)])
    git(root, "commit", "-q", "-am", "fence_mid re-aimed")
    return new


def _set_trigger(root, **changes):
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["trigger"].update(changes)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(root, "commit", "-q", "-am", "trigger params")


def _pass(root, url):
    return watch_once(
        params_path=root / "params.yaml",
        mode="cluster",
        kfp_host=url,
        experiment="recalibration",
        deployed_model=deployed_dir(root),
    )


def _state(root):
    return json.loads((root / ".thermops" / "trigger-state.json").read_text())


def _watcher(root, url, **popen):
    cmd = [sys.executable, "-m", "pipeline.recalibrate", "watch", "--once", "--mode", "cluster", "--kfp-host", url]
    cmd += ["--experiment", "recalibration", "--deployed-model", "models/deployed"]
    env = subprocess_env()
    env.pop("KFP_HOST", None)
    return subprocess.Popen(
        cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen
    )


def _wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_material_change_submits_one_run_and_follows_it_to_its_end(project):
    new = _reaim(project)
    head = git(project, "rev-parse", "HEAD")
    with KfpStandIn() as kfp:
        res = _pass(project, kfp.url)
        assert res.triggered and res.state_of("fence_mid").state == "retraining" and res.exit_code == 0
        again = _pass(project, kfp.url)  # running: looked up, nothing submitted
        assert not again.triggered and again.state_of("fence_mid").state == "retraining"
        assert "is PENDING" in again.state_of("fence_mid").message
        kfp.set_state("SUCCEEDED")
        done = _pass(project, kfp.url)
    (run,) = kfp.posted(RUNS)
    cameras = {"fence_mid": {"version": new.version, "fingerprint": new.fingerprint()}}
    assert run.body["display_name"] == run_name_for(cameras, 1)
    assert run.body["display_name"].startswith(f"recalibration fence_mid={new.version} attempt 1 [")
    params = run.body["runtime_config"]["parameters"]
    assert params["git_rev"] == head  # the commit that holds the new calibration
    assert params["camera_id"] == "fence_mid" and params["calibration_version"] == new.version
    assert res.action.startswith(f"cluster: kubeflow run {next(iter(kfp.runs))}")
    # Succeeded: handled; the deployed model (nothing deploys it here) still has the old version, visibly.
    assert done.state_of("fence_mid").state == "awaiting_promotion" and done.exit_code == 0
    assert _state(project)["job"] is None and _state(project)["pending"] == {}


def test_a_refused_submission_is_retried_uncounted_and_looked_up_first(project):
    _reaim(project, "radiometry.gain_counts_per_k", 56.0)
    with KfpStandIn(fail_runs_with=500) as kfp:
        res = _pass(project, kfp.url)
    state = res.state_of("fence_mid")
    assert state.state == "blocked" and "stand-in refused the run" in state.message
    assert state.attempts == 0 and res.exit_code == 4  # not counted: the retrain never ran
    assert _state(project)["job"]["answered"] is True
    with KfpStandIn() as kfp:
        assert _pass(project, kfp.url).triggered
        assert len(kfp.posted(RUNS)) == 1
        get_runs = [r for r in kfp.requests if r.method == "GET" and r.path == RUNS]
        assert get_runs and kfp.requests.index(get_runs[0]) < kfp.requests.index(kfp.posted(RUNS)[0])


def test_a_failed_run_counts_and_the_retry_is_a_new_run(project):
    _reaim(project)
    with KfpStandIn() as kfp:
        _pass(project, kfp.url)
        kfp.set_state("FAILED", "gate: flip rate 0.125 > 0.1")
        res = _pass(project, kfp.url)  # the failure is counted; the retry (no backoff here) is submitted
        names = [r.body["display_name"] for r in kfp.posted(RUNS)]
    assert len(names) == 2 and " attempt 1 [" in names[0] and " attempt 2 [" in names[1]
    pending = _state(project)["pending"]["fence_mid"]
    (rec,) = pending.values()
    assert rec["attempts"] == 1 and res.state_of("fence_mid").state == "retraining"


def test_a_watcher_killed_during_the_post_gives_one_run(project):
    _reaim(project)
    with KfpStandIn(run_delay_s=30.0) as kfp:
        first = _watcher(project, kfp.url)
        try:
            _wait_for(lambda: kfp.posted(RUNS), 180, "the watcher's POST of the run")
            first.send_signal(signal.SIGKILL)  # dies after the POST reached the server, before the answer
            first.communicate(timeout=30)
        finally:
            if first.poll() is None:
                first.kill()
        job = _state(project)["job"]
        assert job["kind"] == "cluster" and job["answered"] is False and "run_id" not in job  # the intent only
        kfp.run_delay_s = 0.0
        second = _watcher(project, kfp.url)
        out, _ = second.communicate(timeout=180)
        assert second.returncode == 0, out
    assert "following it, not submitting" in out
    assert len(kfp.posted(RUNS)) == 1 and len(kfp.runs) == 1  # one run
    assert _state(project)["job"]["run_id"] == next(iter(kfp.runs))


def test_a_watcher_killed_before_its_post_submits_once_on_restart(project):
    _reaim(project)
    _set_trigger(project, submit_grace_s=0.0)
    with KfpStandIn(healthz_delay_s=60.0) as kfp:
        first = _watcher(project, kfp.url)
        try:
            _wait_for(lambda: any(r.path.endswith("/healthz") for r in kfp.requests), 180, "the health check")
            first.send_signal(signal.SIGKILL)  # the intent is recorded, nothing was posted
            first.communicate(timeout=30)
        finally:
            if first.poll() is None:
                first.kill()
        assert kfp.posted(RUNS) == [] and _state(project)["job"]["answered"] is False
        kfp.healthz_delay_s = 0.0
        second = _watcher(project, kfp.url)
        out, _ = second.communicate(timeout=180)
        assert second.returncode == 0, out
    assert "is not on the server: submitting it" in out
    (run,) = kfp.posted(RUNS)
    assert run.body["display_name"] == _state(project)["job"]["run_name"] and len(kfp.runs) == 1


def test_an_intent_in_flight_is_not_resubmitted_within_the_grace_period(project):
    # A slow server that creates the run only when it answers: a restarted watcher must not
    # take "not found" for "never sent" while the first POST may still land.
    _reaim(project)
    with KfpStandIn(run_delay_s=20.0, create_after_delay=True) as kfp:
        first = _watcher(project, kfp.url)
        try:
            _wait_for(lambda: kfp.posted(RUNS), 180, "the watcher's POST of the run")
            first.send_signal(signal.SIGKILL)
            first.communicate(timeout=30)
        finally:
            if first.poll() is None:
                first.kill()
        res = _pass(project, kfp.url)  # trigger.submit_grace_s = 120: the intent is still in flight
        assert not res.triggered and len(kfp.posted(RUNS)) == 1
        _wait_for(lambda: kfp.runs, 60, "the slow server to create the run")
        res = _pass(project, kfp.url)
        assert res.state_of("fence_mid").state == "retraining"
    assert len(kfp.posted(RUNS)) == 1 and len(kfp.runs) == 1
    assert _state(project)["job"]["run_id"] == next(iter(kfp.runs))


def test_cluster_mode_without_a_host_is_a_configuration_error_not_a_failure(project, capsys, monkeypatch):
    _reaim(project)
    monkeypatch.delenv("KFP_HOST", raising=False)
    argv = ["--calibrations", str(project / "data" / "calibration"), "watch", "--once", "--mode", "cluster"]
    argv += ["--params", str(project / "params.yaml"), "--deployed-model", str(deployed_dir(project))]
    for _ in range(4):  # more than max_attempts: nothing is poisoned
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 1 and "cluster mode needs the Kubeflow API" in capsys.readouterr().err
    assert not (project / ".thermops" / "trigger-state.json").exists()
    with KfpStandIn() as kfp:  # configured: the change is retrained
        assert _pass(project, kfp.url).triggered and len(kfp.posted(RUNS)) == 1


def test_camera_and_version_go_to_declared_run_parameters_only():
    from pipeline.recalibrate import _declared_inputs, run_parameters

    spec = "root:\n  inputDefinitions:\n    parameters:\n      camera_id: {parameterType: STRING}\n---\nplatforms: {}\n"
    assert _declared_inputs(spec) == {"camera_id"}
    assert run_parameters({"fence_mid": "2026-11-22.1", "gate_wide": "2026-11-22.2"}) == {
        "camera_id": "fence_mid,gate_wide",
        "calibration_version": "2026-11-22.1,2026-11-22.2",
    }


def test_run_names_are_deterministic_unique_and_fit():
    cams = {f"camera_{i:02d}": {"version": "2026-11-22.1", "fingerprint": f"f{i}"} for i in range(12)}
    name = run_name_for(cams, 1)
    assert len(name) <= 100 and name == run_name_for(dict(reversed(list(cams.items()))), 1)
    assert name != run_name_for(cams, 2)
    other = {**cams, "camera_11": {"version": "2026-11-22.1", "fingerprint": "changed"}}
    assert run_name_for(other, 1) != name and run_name_for(other, 1)[:60] == name[:60]  # the key tells them apart
    assert os.path.commonprefix([name, run_name_for(other, 1)]).startswith("recalibration camera_00=")
