"""The calibration watcher's decisions: material changes retrain exactly once, immaterial ones are
logged, every camera ends a pass in a state, one bad file is one camera's problem.

The retrain here is a real process (tests/calibration_helpers.py FAKE_RETRAIN) started through
the watcher's supervised runner; test_calibration_supervision.py runs real `dvc repro`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging

import pytest
import yaml

from pipeline.recalibrate import main, watch_once
from tests.calibration_helpers import REPO, Retrain, deployed_dir, make_project, write_deployed
from thermops.camera.registry import record_calibration

DAY = dt.date(2026, 11, 22)


def _record(root, cam, **sets):
    _, new = record_calibration(root / "data" / "calibration", cam, valid_from=DAY, assignments=list(sets.items()))
    return new


def _watch(root, **kw):
    return watch_once(params_path=root / "params.yaml", deployed_model=deployed_dir(root), **kw)


def _state(root):
    path = root / ".thermops" / "trigger-state.json"
    return json.loads(path.read_text()) if path.exists() else None


def _states(res):
    return {s.camera: s.state for s in res.states}


def _cli(root, *args):
    common = ["--params", str(root / "params.yaml")]
    if args[0] in ("watch", "diff"):
        common += ["--deployed-model", str(deployed_dir(root))]
    return ["--calibrations", str(root / "data" / "calibration"), *args[:1], *common, *args[1:]]


def test_reaim_beyond_envelope_triggers_exactly_one_retrain(tmp_path):
    root = make_project(tmp_path)
    new = _record(root, "fence_mid", **{"geometry.pitch_deg": 8.0})  # 5 -> 8 degrees
    retrain = Retrain(root)
    res = _watch(root)
    assert res.triggered and len(retrain.calls) == 1 and res.exit_code == 0
    (rep,) = res.material
    assert rep.camera_id == "fence_mid" and rep.new_version == new.version == "2026-11-22.1"
    assert rep.figures["geometric"]["max_px"] > 40  # 903 px focal length x tan(3 deg) ~ 47 px
    assert any("envelope.geometric.max_corner_px" in r for r in rep.material_reasons)
    assert _states(res) == {"fence_mid": "retrained", "gate_wide": "deployed", "perimeter_long": "deployed"}
    state = _state(root)
    assert state["handled"]["fence_mid"]["2026-11-22.1"]["material"] is True and state["job"] is None
    # A second pass, and a restarted watcher, find the change handled: no second retrain. The
    # deployed model (this test deploys nothing) still has the old version, and says so.
    for _ in range(2):
        again = _watch(root)
        assert not again.triggered and again.state_of("fence_mid").state == "awaiting_promotion"
        assert "still has 2026-11-01.1" in again.state_of("fence_mid").message and again.exit_code == 0
    assert len(retrain.calls) == 1
    assert _state(root)["handled"] == state["handled"]
    # Once the retrained model is deployed, the camera is simply deployed.
    write_deployed(root, {"fence_mid": "2026-11-22.1", "gate_wide": "2026-11-01.1", "perimeter_long": "2026-11-01.1"})
    assert _watch(root).state_of("fence_mid").state == "deployed" and len(retrain.calls) == 1


def test_change_inside_envelope_triggers_nothing_and_says_why_in_camera_pixels(tmp_path, caplog):
    root = make_project(tmp_path)
    _record(root, "fence_mid", **{"geometry.pitch_deg": 5.05})
    retrain = Retrain(root)
    with caplog.at_level(logging.INFO, logger="thermops.trigger"):
        res = _watch(root)
    assert not res.triggered and retrain.calls == []
    (rep,) = res.immaterial
    assert 0.5 < rep.figures["geometric"]["max_px"] < 1.0  # 903 px x tan(0.05 deg) ~ 0.79 px
    summary = rep.summary()
    # The measured displacement in camera pixels beside the envelope's allowance in camera pixels.
    assert "no retrain needed" in summary and "camera px" in summary
    worst = rep.figures["geometric"]
    assert f"{worst['worst_px']:.3g} camera px at" in summary
    assert f"envelope's 2 model px = {2 * worst['worst_cam_px_per_model_px']:.3g} camera px there" in summary
    assert _state(root)["handled"]["fence_mid"]["2026-11-22.1"]["material"] is False
    assert res.state_of("fence_mid").state == "immaterial" and res.exit_code == 0
    assert _watch(root).state_of("fence_mid").state == "immaterial"  # and it stays so


def test_description_only_change_triggers_nothing(tmp_path, caplog):
    root = make_project(tmp_path)
    _record(root, "gate_wide", description="lens cleaned, same mounting")
    retrain = Retrain(root)
    with caplog.at_level(logging.INFO, logger="thermops.trigger"):
        res = _watch(root)
    assert retrain.calls == [] and res.immaterial[0].figures["geometric"]["max_px"] == 0.0
    assert "changed fields: description, valid_from, version" in caplog.text


def test_radiometric_gain_change_beyond_threshold_triggers(tmp_path):
    root = make_project(tmp_path)
    _record(root, "perimeter_long", **{"radiometry.gain_counts_per_k": 60.5})  # +10 %
    retrain = Retrain(root)
    res = _watch(root)
    assert len(retrain.calls) == 1
    rad = res.material[0].figures["radiometric"]
    assert rad["gain_change"] == pytest.approx(0.1) and rad["max_temp_error_k"] == pytest.approx(6.0)


def test_two_changed_cameras_give_one_retrain(tmp_path):
    root = make_project(tmp_path)
    _record(root, "fence_mid", **{"geometry.pitch_deg": 8.0})
    _record(root, "gate_wide", **{"radiometry.offset_counts": 5200.0})  # +4.4 K offset
    retrain = Retrain(root)
    res = _watch(root)
    assert len(retrain.calls) == 1 and {r.camera_id for r in res.material} == {"fence_mid", "gate_wide"}


def test_a_malformed_file_is_its_cameras_problem_only_and_is_reported_every_pass(tmp_path, capsys, caplog):
    root = make_project(tmp_path)
    retrain = Retrain(root)
    _record(root, "fence_mid", **{"geometry.pitch_deg": 5.05})  # immaterial: still evaluated
    _record(root, "perimeter_long", **{"radiometry.gain_counts_per_k": 60.5})  # material: still retrained
    bad = root / "data" / "calibration" / "gate_wide.yaml"
    bad.write_text(bad.read_text().replace("pitch_deg: 12.0", "pitch_deg: 95.0").replace("2026-11-01.1", "x.2"))
    # gate_wide is not used by the pipeline here, so the retrain of perimeter_long goes ahead.
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["cameras"] = ["fence_mid", "perimeter_long"]
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for _ in range(2):
        res = _watch(root)
        assert res.state_of("gate_wide").state == "malformed" and "geometry.pitch_deg" in res.problems["gate_wide"]
        assert res.state_of("fence_mid").state == "immaterial"
        assert res.exit_code == 4  # the pass says a camera needs an operator, every pass
        metrics = (root / ".thermops" / "watcher.prom").read_text()
        assert 'thermops_watcher_camera_state{camera="gate_wide",state="malformed",version=""} 1' in metrics
        assert "thermops_watcher_attention 1" in metrics and "thermops_watcher_pass_exit_code 4" in metrics
    assert len(retrain.calls) == 1 and _state(root)["handled"]["perimeter_long"]["2026-11-22.1"]["material"]
    # The CLI: every camera reported, the bad one on an `attention:` line, exit status 4, no traceback.
    with caplog.at_level(logging.INFO, logger="thermops.trigger"), pytest.raises(SystemExit) as exc:
        main(_cli(root, "watch", "--once"))
    assert exc.value.code == 4
    captured = capsys.readouterr()
    assert "attention: gate_wide malformed" in captured.out and "Traceback" not in captured.err
    assert "perimeter_long 2026-11-01.1 -> 2026-11-22.1: awaiting_promotion" in caplog.text
    assert "fence_mid 2026-11-01.1 -> 2026-11-22.1: immaterial" in caplog.text


def test_a_malformed_file_of_a_camera_the_pipeline_reads_defers_the_retrain_uncounted(tmp_path):
    root = make_project(tmp_path)  # cameras: all three synthetic ones, so gate_wide is read by the pipeline
    retrain = Retrain(root)
    _record(root, "fence_mid", **{"geometry.pitch_deg": 8.0})
    bad = root / "data" / "calibration" / "gate_wide.yaml"
    good = bad.read_text()
    bad.write_text("camera_id: [")
    res = _watch(root)
    assert retrain.calls == [] and res.state_of("fence_mid").state == "blocked"
    assert "gate_wide" in res.state_of("fence_mid").message and res.state_of("fence_mid").attempts == 0
    bad.write_text(good)  # fixed: the deferred retrain runs on the next pass
    res = _watch(root)
    assert len(retrain.calls) == 1 and res.state_of("fence_mid").state == "retrained"


def test_edit_in_place_without_new_version_is_that_cameras_problem(tmp_path):
    root = make_project(tmp_path)
    path = root / "data" / "calibration" / "fence_mid.yaml"
    path.write_text(path.read_text().replace("pitch_deg: 5.0", "pitch_deg: 8.0"))
    retrain = Retrain(root)
    res = _watch(root)
    assert retrain.calls == [] and res.state_of("fence_mid").state == "malformed"
    assert "keeps its version" in res.problems["fence_mid"] and res.state_of("gate_wide").state == "deployed"


def test_failed_retrain_is_retried_then_handled_once(tmp_path):
    root = make_project(tmp_path)
    _record(root, "fence_mid", **{"geometry.pitch_deg": 8.0})
    retrain = Retrain(root, status=2, output="ERROR: failed to reproduce 'prepare': something broke")
    res = _watch(root)
    assert res.state_of("fence_mid").state == "failed" and res.exit_code == 4
    assert (
        "exit status 2" in res.state_of("fence_mid").message and "something broke" in res.state_of("fence_mid").message
    )
    assert "fence_mid" not in _state(root)["handled"]
    assert _state(root)["pending"]["fence_mid"]["2026-11-22.1"]["attempts"] == 1
    retrain.set(status=0)
    assert _watch(root).triggered and _watch(root).triggered is False
    assert len(retrain.calls) == 2
    assert _state(root)["pending"] == {}


def test_a_retrain_that_keeps_failing_is_given_up_after_max_attempts_and_reset_retries_it(tmp_path, capsys):
    root = make_project(tmp_path)  # trigger.max_attempts: 3
    _record(root, "fence_mid", **{"geometry.pitch_deg": 8.0})
    retrain = Retrain(root, status=1)
    for n in (1, 2, 3):
        assert _watch(root).state_of("fence_mid").attempts == n
    res = _watch(root)
    assert len(retrain.calls) == 3 and not res.triggered and res.gave_up == ["fence_mid"]
    gave_up = res.state_of("fence_mid")
    assert gave_up.state == "gave_up" and "reset fence_mid" in gave_up.message and res.exit_code == 4
    # `status` shows it, `reset` clears it: the next pass tries again.
    main(_cli(root, "status"))
    out = capsys.readouterr().out
    assert "fence_mid 2026-11-01.1 -> 2026-11-22.1: gave_up" in out and "attempts 3" in out
    main(_cli(root, "reset", "fence_mid"))
    assert "reset: fence_mid 2026-11-22.1" in capsys.readouterr().out
    retrain.set(status=0)
    assert _watch(root).triggered and len(retrain.calls) == 4
    # A new calibration is a new change: tried again without a reset too.
    retrain.set(status=1)
    for _ in range(3):
        _watch(root)
    _record(root, "fence_mid", **{"geometry.pitch_deg": 8.5})
    retrain.set(status=0)
    assert _watch(root).triggered


def test_retries_wait_for_the_backoff(tmp_path):
    root = make_project(tmp_path, trigger={"retry_backoff_s": 3600.0})
    _record(root, "fence_mid", **{"geometry.pitch_deg": 8.0})
    retrain = Retrain(root, status=1)
    first = _watch(root)
    assert len(retrain.calls) == 1 and first.state_of("fence_mid").state == "failed"
    nxt = dt.datetime.fromisoformat(_state(root)["pending"]["fence_mid"]["2026-11-22.1"]["next_try_at"])
    assert 3590 < (nxt - dt.datetime.now(dt.UTC)).total_seconds() <= 3600
    second = _watch(root)  # within the backoff: not retried, still reported
    assert len(retrain.calls) == 1 and second.state_of("fence_mid").state == "failed" and second.exit_code == 4


def test_unchanged_and_new_camera_says_it_is_new_and_which_envelope_applies(tmp_path):
    root = make_project(tmp_path, cameras=("fence_mid",))
    retrain = Retrain(root)
    res = _watch(root)
    assert res.unchanged == ["fence_mid"] and retrain.calls == []
    (root / "data" / "calibration" / "gate_wide.yaml").write_text(
        (REPO / "data/calibration/gate_wide.yaml").read_text()
    )
    res = _watch(root)
    (rep,) = res.material
    assert len(retrain.calls) == 1 and rep.new_camera
    summary = rep.summary()
    assert (
        summary.startswith("gate_wide (new camera, version 2026-11-01.1): MATERIAL (new camera")
        and "None" not in summary
    )
    # The envelope, in this camera's own pixels over its working range.
    assert "2 model px = " in summary and "camera px over its" in summary and "gain change 0.05" in summary


def test_deployed_version_missing_from_history_is_material(tmp_path):
    root = make_project(tmp_path, cameras=("fence_mid",))
    write_deployed(root, {"fence_mid": "2025-01-01.1"})  # a version neither git nor the snapshot has
    retrain = Retrain(root)
    res = _watch(root)
    assert (
        len(retrain.calls) == 1 and "neither in the model's snapshot nor in git" in res.material[0].material_reasons[0]
    )


def test_no_deployed_model_means_nothing_to_do(tmp_path, caplog):
    root = make_project(tmp_path)
    _record(root, "fence_mid", **{"geometry.pitch_deg": 8.0})
    retrain = Retrain(root)
    with caplog.at_level(logging.INFO, logger="thermops.trigger"):
        res = watch_once(params_path=root / "params.yaml")  # no --deployed-model, no models/bento.json
    assert not res.triggered and retrain.calls == [] and "no deployed model" in caplog.text


def test_a_model_the_gate_refused_is_never_taken_as_deployed(tmp_path, capsys):
    root = make_project(tmp_path)
    write_deployed(root, {"fence_mid": "2026-11-01.1"}, passed=False)
    with pytest.raises(SystemExit) as exc:
        main(_cli(root, "watch", "--once"))
    assert exc.value.code == 1 and "the gate did not pass this model" in capsys.readouterr().err


def test_envelope_is_converted_at_each_points_range(tmp_path):
    # pitch +0.05 deg on fence_mid moves the ROI 0.8 camera px, ~1.1 model px at 160 m
    # (a 4 m window is 22.6 px there): outside a 1-model-pixel envelope, inside 2.
    root = make_project(tmp_path, envelope={"geometric": {"max_corner_px": 1.0}})
    _record(root, "fence_mid", **{"geometry.pitch_deg": 5.05})
    retrain = Retrain(root)
    res = _watch(root)
    assert len(retrain.calls) == 1
    reason = res.material[0].material_reasons[0]
    geo = res.material[0].figures["geometric"]
    assert "model px = " in reason and " m > envelope.geometric.max_corner_px 1 model px" in reason
    # the measured displacement in camera pixels, and the envelope in camera pixels at that point
    assert f"= {geo['worst_px']:.3g} camera px at {geo['worst_depth_m']:.3g} m" in reason
    assert f"1 model px = {geo['worst_cam_px_per_model_px']:.3g} camera px there" in reason


def test_cameras_outside_the_pipelines_sources_do_not_trigger(tmp_path):
    # The registry also holds the real sets' cameras (display8); while data.sources is
    # [synthetic] the pipeline never trains on them, so registering one is no reason to retrain.
    root = make_project(tmp_path, cameras=("fence_mid",))
    (root / "data" / "calibration" / "hit-uav.yaml").write_text((REPO / "data/calibration/hit-uav.yaml").read_text())
    retrain = Retrain(root)
    res = _watch(root)
    assert retrain.calls == [] and res.material == [] and res.unused == ["hit-uav"] and _state(root)["handled"] == {}
    assert res.state_of("hit-uav").state == "unused"
    # The same camera becomes material once a source that uses it is switched on.
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"]["sources"] = ["synthetic", "hit-uav"]
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    res = _watch(root)
    assert len(retrain.calls) == 1 and [r.camera_id for r in res.material] == ["hit-uav"]


def test_diff_cli_reports_figures_against_the_deployed_version(tmp_path, capsys):
    root = make_project(tmp_path, cameras=("fence_mid",))
    _record(root, "fence_mid", **{"geometry.pitch_deg": 8.0})
    main(_cli(root, "diff", "fence_mid", "--json"))
    rep = json.loads(capsys.readouterr().out)
    assert rep["material"] and rep["old_version"] == "2026-11-01.1" and rep["new_version"] == "2026-11-22.1"
    assert rep["figures"]["geometric"]["max_px"] > 40 and rep["figures"]["changed_fields"] == [
        "geometry.pitch_deg",
        "valid_from",
        "version",
    ]
    with pytest.raises(SystemExit):
        main(_cli(root, "diff", "fence_mid", "--against", "1999.1"))
    assert "version '1999.1' not found" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["watch", "--once", "--poll"], "not allowed with argument"),
        (["watch", "--once", "--interval", "5"], "not allowed with argument"),
        (["watch", "--interval", "5", "--poll"], "not allowed with argument"),
        (["watch", "--interval", "0"], "more than 0 seconds"),
        (["watch", "--once", "--mode", "local", "--kfp-host", "http://127.0.0.1:1"], "only apply to --mode cluster"),
    ],
)
def test_watch_rejects_contradictory_flags(tmp_path, capsys, argv, message):
    root = make_project(tmp_path, cameras=("fence_mid",))
    with pytest.raises(SystemExit) as exc:
        main(_cli(root, *argv))
    assert exc.value.code in (1, 2) and message in capsys.readouterr().err
    assert _state(root) is None  # nothing ran


def test_polling_logs_errors_and_keeps_going(tmp_path, monkeypatch, caplog):
    from pipeline import recalibrate as cli

    root = make_project(tmp_path)
    retrain = Retrain(root)
    params = root / "params.yaml"
    good = params.read_text()
    params.write_text("trigger: [")  # the pass cannot run: logged, polling goes on
    passes = []
    real_sleep = cli.time.sleep

    def sleep(seconds):
        if seconds != 7.0:  # the wait for the retrain, not the polling interval
            return real_sleep(seconds)
        passes.append(seconds)
        if len(passes) == 1:  # fixed between passes, and a material change recorded
            params.write_text(good)
            _record(root, "fence_mid", **{"geometry.pitch_deg": 8.0})
        if len(passes) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(cli.time, "sleep", sleep)
    with caplog.at_level(logging.INFO, logger="thermops.trigger"), pytest.raises(KeyboardInterrupt):
        cli.watch(interval_s=7.0, params_path=params, deployed_model=deployed_dir(root))
    assert passes == [7.0, 7.0, 7.0] and len(retrain.calls) == 1  # three passes, one retrain
    assert "error: " in caplog.text and "awaiting_promotion" in caplog.text


def test_a_state_file_of_the_previous_format_is_read_with_its_history(tmp_path):
    root = make_project(tmp_path)
    new = _record(root, "fence_mid", **{"geometry.pitch_deg": 8.0})
    old_state = {
        "format": "thermops-trigger-state/1",
        "handled": {"gate_wide": {"2026-10-01.1": {"fingerprint": "x", "material": False, "action": "none"}}},
        "failed": {"fence_mid": {new.version: {"attempts": 2, "last_error": "`dvc repro` exited with status 1"}}},
    }
    (root / ".thermops").mkdir()
    (root / ".thermops" / "trigger-state.json").write_text(json.dumps(old_state))
    retrain = Retrain(root, status=1)
    res = _watch(root)  # the third and last attempt
    assert len(retrain.calls) == 1 and res.state_of("fence_mid").attempts == 3
    state = _state(root)
    assert (
        state["format"] == "thermops-trigger-state/2"
        and state["handled"]["gate_wide"] == old_state["handled"]["gate_wide"]
    )
    assert _watch(root).state_of("fence_mid").state == "gave_up" and len(retrain.calls) == 1
