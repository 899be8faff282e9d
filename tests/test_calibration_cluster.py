"""Cluster mode: a material change submits exactly one Kubeflow run (to a loopback KFP stand-in)."""

from __future__ import annotations

import shutil

import pytest
import yaml

from pipeline.recalibrate import TriggerError, kubeflow_submitter, watch_once
from tests.calibration_helpers import ENVELOPE, REPO, write_card
from tests.kfp_standin import KfpStandIn
from tests.pipeline_helpers import git, make_toy_repo, toy_params
from thermops.camera.registry import record_calibration


@pytest.fixture
def project(tmp_path):
    """The pipeline tests' toy DVC project, plus a camera registry, a deployed card and the trigger section."""
    real = yaml.safe_load((REPO / "params.yaml").read_text())
    params = toy_params() | {
        "prepare": {"window_m": real["prepare"]["window_m"], "size": real["prepare"]["size"]},
        "trigger": real["trigger"],
    }
    root = make_toy_repo(tmp_path / "toy", params)
    (root / "data" / "calibration").mkdir(parents=True)
    shutil.copy(REPO / "data" / "calibration" / "fence_mid.yaml", root / "data" / "calibration")
    write_card(root, {"fence_mid": "2026-11-01.1"}, ENVELOPE)
    (root / ".gitignore").write_text("models/gated/\n.thermops/\n")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "camera registry")
    return root


def _submitter(root, url):
    return kubeflow_submitter(root, url, experiment="recalibration", token=None)


def test_material_change_submits_one_run_with_camera_and_version(project):
    record_calibration(project / "data" / "calibration", "fence_mid", assignments=[("geometry.pitch_deg", 8.0)])
    git(project, "commit", "-q", "-am", "fence_mid re-aimed")
    head = git(project, "rev-parse", "HEAD")
    with KfpStandIn() as kfp:
        res = watch_once(params_path=project / "params.yaml", mode="cluster", submitter=_submitter(project, kfp.url))
        again = watch_once(params_path=project / "params.yaml", mode="cluster", submitter=_submitter(project, kfp.url))
    assert res.triggered and not again.triggered
    (run,) = kfp.posted("/apis/v2beta1/runs")
    version = res.material[0].new_version
    assert run.body["display_name"] == f"recalibration fence_mid={version}"
    params = run.body["runtime_config"]["parameters"]
    assert params["git_rev"] == head  # the commit that holds the new calibration
    assert params["camera_id"] == "fence_mid" and params["calibration_version"] == version
    assert kfp.experiments and next(iter(kfp.experiments.values()))["display_name"] == "recalibration"
    assert res.action.startswith(f"cluster: kubeflow run {next(iter(kfp.runs))}")


def test_refused_submission_is_not_recorded_and_is_retried(project):
    record_calibration(
        project / "data" / "calibration", "fence_mid", assignments=[("radiometry.gain_counts_per_k", 56.0)]
    )
    git(project, "commit", "-q", "-am", "fence_mid gain")
    with KfpStandIn(fail_runs_with=500) as kfp:
        with pytest.raises(TriggerError, match="stand-in refused the run"):
            watch_once(params_path=project / "params.yaml", mode="cluster", submitter=_submitter(project, kfp.url))
    with KfpStandIn() as kfp:
        assert watch_once(
            params_path=project / "params.yaml", mode="cluster", submitter=_submitter(project, kfp.url)
        ).triggered
        assert len(kfp.posted("/apis/v2beta1/runs")) == 1


def test_camera_and_version_go_to_declared_run_parameters_only():
    from pipeline.recalibrate import _declared_inputs, run_parameters
    from thermops.camera.change import ChangeReport

    spec = "root:\n  inputDefinitions:\n    parameters:\n      camera_id: {parameterType: STRING}\n---\nplatforms: {}\n"
    assert _declared_inputs(spec) == {"camera_id"}
    reports = [ChangeReport("fence_mid", "a", "2026-11-22.1"), ChangeReport("gate_wide", "b", "2026-11-22.2")]
    assert run_parameters(reports) == {
        "camera_id": "fence_mid,gate_wide",
        "calibration_version": "2026-11-22.1,2026-11-22.2",
    }
