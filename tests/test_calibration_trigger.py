"""The calibration watcher: material changes retrain exactly once, immaterial ones are logged."""

from __future__ import annotations

import datetime as dt
import json
import logging

import pytest
import yaml

from pipeline.recalibrate import TriggerError, main, watch_once
from tests.calibration_helpers import REPO, CountingRunner, make_project, write_card
from thermops.camera.calibration import CalibrationError
from thermops.camera.registry import record_calibration

DAY = dt.date(2026, 11, 22)


def _record(root, cam, **sets):
    _, new = record_calibration(root / "data" / "calibration", cam, valid_from=DAY, assignments=list(sets.items()))
    return new


def _watch(root, runner, **kw):
    return watch_once(params_path=root / "params.yaml", runner=runner, **kw)


def _state(root):
    path = root / ".thermops" / "trigger-state.json"
    return json.loads(path.read_text()) if path.exists() else None


def test_reaim_beyond_envelope_triggers_exactly_one_retrain(tmp_path):
    root = make_project(tmp_path)
    new = _record(root, "fence_mid", **{"geometry.pitch_deg": 8.0})  # 5 -> 8 degrees
    runner = CountingRunner()
    res = _watch(root, runner)
    assert res.triggered and len(runner.calls) == 1
    cmd, cwd = runner.calls[0]
    assert cmd[-3:] == ["-m", "dvc", "repro"] and cwd == root
    (rep,) = res.material
    assert rep.camera_id == "fence_mid" and rep.new_version == new.version == "2026-11-22.1"
    assert rep.figures["geometric"]["max_px"] > 40  # 903 px focal length x tan(3 deg) ~ 47 px
    assert any("envelope.geometric.max_corner_px" in r for r in rep.material_reasons)
    state = _state(root)
    assert state["handled"]["fence_mid"]["2026-11-22.1"]["material"] is True
    # A second pass, and a restarted watcher, find the change handled: no second retrain.
    assert not _watch(root, runner).triggered
    assert not _watch(root, runner).triggered
    assert len(runner.calls) == 1
    assert _state(root) == state


def test_change_inside_envelope_triggers_nothing_and_says_why(tmp_path, caplog):
    root = make_project(tmp_path)
    _record(root, "fence_mid", **{"geometry.pitch_deg": 5.05})
    runner = CountingRunner()
    with caplog.at_level(logging.INFO, logger="thermops.trigger"):
        res = _watch(root, runner)
    assert not res.triggered and runner.calls == []
    (rep,) = res.immaterial
    assert 0.5 < rep.figures["geometric"]["max_px"] < 1.0  # 903 px x tan(0.05 deg) ~ 0.79 px
    assert "no retrain needed" in caplog.text and "fence_mid" in caplog.text
    assert _state(root)["handled"]["fence_mid"]["2026-11-22.1"]["material"] is False


def test_description_only_change_triggers_nothing(tmp_path, caplog):
    root = make_project(tmp_path)
    _record(root, "gate_wide", description="lens cleaned, same mounting")
    runner = CountingRunner()
    with caplog.at_level(logging.INFO, logger="thermops.trigger"):
        res = _watch(root, runner)
    assert runner.calls == [] and res.immaterial[0].figures["geometric"]["max_px"] == 0.0
    assert "changed fields: description, valid_from, version" in caplog.text


def test_radiometric_gain_change_beyond_threshold_triggers(tmp_path):
    root = make_project(tmp_path)
    _record(root, "perimeter_long", **{"radiometry.gain_counts_per_k": 60.5})  # +10 %
    runner = CountingRunner()
    res = _watch(root, runner)
    assert len(runner.calls) == 1
    rad = res.material[0].figures["radiometric"]
    assert rad["gain_change"] == pytest.approx(0.1) and rad["max_temp_error_k"] == pytest.approx(6.0)


def test_two_changed_cameras_give_one_retrain(tmp_path):
    root = make_project(tmp_path)
    _record(root, "fence_mid", **{"geometry.pitch_deg": 8.0})
    _record(root, "gate_wide", **{"radiometry.offset_counts": 5200.0})  # +4.4 K offset
    runner = CountingRunner()
    res = _watch(root, runner)
    assert len(runner.calls) == 1 and {r.camera_id for r in res.material} == {"fence_mid", "gate_wide"}


def test_malformed_file_is_rejected_without_trigger_or_state_change(tmp_path, capsys):
    root = make_project(tmp_path)
    runner = CountingRunner()
    _record(root, "gate_wide", description="a first, handled change")
    _watch(root, runner)
    before = (root / ".thermops" / "trigger-state.json").read_bytes()
    path = root / "data" / "calibration" / "fence_mid.yaml"
    path.write_text(path.read_text().replace("pitch_deg: 5.0", "pitch_deg: 95.0").replace("2026-11-01.1", "x.2"))
    with pytest.raises(CalibrationError, match=r"fence_mid\.yaml.*geometry\.pitch_deg"):
        _watch(root, runner)
    assert runner.calls == []
    assert (root / ".thermops" / "trigger-state.json").read_bytes() == before
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "--calibrations",
                str(root / "data" / "calibration"),
                "watch",
                "--once",
                "--params",
                str(root / "params.yaml"),
                "--card",
                str(root / "models/gated/card.json"),
            ]
        )
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "pitch_deg" in err[-1] and "Traceback" not in "\n".join(err)
    assert (root / ".thermops" / "trigger-state.json").read_bytes() == before


def test_edit_in_place_without_new_version_is_an_error(tmp_path):
    root = make_project(tmp_path)
    path = root / "data" / "calibration" / "fence_mid.yaml"
    path.write_text(path.read_text().replace("pitch_deg: 5.0", "pitch_deg: 8.0"))
    runner = CountingRunner()
    with pytest.raises(CalibrationError, match="keeps its version"):
        _watch(root, runner)
    assert runner.calls == [] and _state(root) is None


def test_failed_retrain_is_retried_then_handled_once(tmp_path):
    root = make_project(tmp_path)
    _record(root, "fence_mid", **{"geometry.pitch_deg": 8.0})
    failing = CountingRunner(status=2)
    with pytest.raises(TriggerError, match="status 2"):
        _watch(root, failing)
    assert "fence_mid" not in _state(root)["handled"]
    assert _state(root)["failed"]["fence_mid"]["2026-11-22.1"]["attempts"] == 1
    ok = CountingRunner()
    assert _watch(root, ok).triggered and _watch(root, ok).triggered is False
    assert len(failing.calls) == 1 and len(ok.calls) == 1
    assert _state(root)["failed"] == {}


def test_a_retrain_that_keeps_failing_is_given_up_after_max_attempts(tmp_path, caplog):
    root = make_project(tmp_path)  # trigger.max_attempts: 3
    _record(root, "fence_mid", **{"geometry.pitch_deg": 8.0})
    failing = CountingRunner(status=1)
    for _ in range(3):
        with pytest.raises(TriggerError):
            _watch(root, failing)
    with caplog.at_level(logging.ERROR, logger="thermops.trigger"):
        res = _watch(root, failing)
    assert len(failing.calls) == 3 and not res.triggered and res.gave_up == ["fence_mid"]
    assert "failed 3 times; not retried" in caplog.text
    # A new calibration is a new change: tried again.
    _record(root, "fence_mid", **{"geometry.pitch_deg": 8.5})
    assert _watch(root, CountingRunner()).triggered


def test_unchanged_and_new_camera(tmp_path):
    root = make_project(tmp_path, cameras=("fence_mid",))
    runner = CountingRunner()
    res = _watch(root, runner)
    assert res.unchanged == ["fence_mid"] and runner.calls == []
    (root / "data" / "calibration" / "gate_wide.yaml").write_text(
        (REPO / "data/calibration/gate_wide.yaml").read_text()
    )
    res = _watch(root, runner)
    assert len(runner.calls) == 1 and res.material[0].material_reasons == [
        "camera not in the deployed model's calibrations"
    ]


def test_deployed_version_missing_from_history_is_material(tmp_path):
    root = make_project(tmp_path, cameras=("fence_mid",))
    write_card(root, {"fence_mid": "2025-01-01.1"})  # a version git never saw
    runner = CountingRunner()
    res = _watch(root, runner)
    assert len(runner.calls) == 1 and "neither in git history" in res.material[0].material_reasons[0]


def test_no_deployed_model_means_nothing_to_do(tmp_path, caplog):
    root = make_project(tmp_path)
    (root / "models" / "gated" / "card.json").unlink()
    _record(root, "fence_mid", **{"geometry.pitch_deg": 8.0})
    runner = CountingRunner()
    with caplog.at_level(logging.INFO, logger="thermops.trigger"):
        assert not _watch(root, runner).triggered
    assert runner.calls == [] and "no deployed model" in caplog.text


def test_envelope_is_converted_at_each_points_range(tmp_path):
    # pitch +0.05 deg on fence_mid moves the ROI 0.8 camera px, ~1.1 model px at 160 m
    # (a 4 m window is 22.6 px there): outside a 1-model-pixel envelope, inside 2.
    root = make_project(tmp_path, envelope={"geometric": {"max_corner_px": 1.0}})
    _record(root, "fence_mid", **{"geometry.pitch_deg": 5.05})
    runner = CountingRunner()
    res = _watch(root, runner)
    assert len(runner.calls) == 1
    reason = res.material[0].material_reasons[0]
    assert "model px > envelope.geometric.max_corner_px 1 model px" in reason and "camera px" in reason


def test_cameras_outside_the_pipelines_sources_do_not_trigger(tmp_path):
    # The registry also holds the real sets' cameras (display8); while data.sources is
    # [synthetic] the pipeline never trains on them, so registering one is no reason to retrain.
    root = make_project(tmp_path, cameras=("fence_mid",))
    (root / "data" / "calibration" / "hit-uav.yaml").write_text((REPO / "data/calibration/hit-uav.yaml").read_text())
    runner = CountingRunner()
    res = _watch(root, runner)
    assert runner.calls == [] and res.material == [] and res.unused == ["hit-uav"] and _state(root)["handled"] == {}
    # The same camera becomes material once a source that uses it is switched on.
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"]["sources"] = ["synthetic", "hit-uav"]
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    res = _watch(root, runner)
    assert len(runner.calls) == 1 and [r.camera_id for r in res.material] == ["hit-uav"]


def test_diff_cli_reports_figures_against_the_deployed_version(tmp_path, capsys):
    root = make_project(tmp_path, cameras=("fence_mid",))
    _record(root, "fence_mid", **{"geometry.pitch_deg": 8.0})
    common = ["--params", str(root / "params.yaml"), "--card", str(root / "models/gated/card.json")]
    main(["--calibrations", str(root / "data" / "calibration"), "diff", "fence_mid", "--json", *common])
    rep = json.loads(capsys.readouterr().out)
    assert rep["material"] and rep["old_version"] == "2026-11-01.1" and rep["new_version"] == "2026-11-22.1"
    assert rep["figures"]["geometric"]["max_px"] > 40 and rep["figures"]["changed_fields"] == [
        "geometry.pitch_deg",
        "valid_from",
        "version",
    ]
    with pytest.raises(SystemExit):
        main(
            ["--calibrations", str(root / "data" / "calibration"), "diff", "fence_mid", "--against", "1999.1", *common]
        )
    assert "version '1999.1' not found" in capsys.readouterr().err


def test_polling_logs_errors_and_keeps_going(tmp_path, monkeypatch, caplog):
    from pipeline import recalibrate as cli

    root = make_project(tmp_path)
    path = root / "data" / "calibration" / "fence_mid.yaml"
    good = path.read_text()
    path.write_text("camera_id: [")  # malformed: the first pass fails, polling goes on
    runner = CountingRunner()
    passes = []

    def sleep(seconds):
        passes.append(seconds)
        if len(passes) == 1:  # fixed between passes: the second pass sees a material change
            path.write_text(good.replace("pitch_deg: 5.0", "pitch_deg: 8.0").replace("2026-11-01.1", "2026-11-22.1"))
        if len(passes) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(cli.time, "sleep", sleep)
    with caplog.at_level(logging.INFO, logger="thermops.trigger"), pytest.raises(KeyboardInterrupt):
        cli.watch(interval_s=7.0, params_path=root / "params.yaml", runner=runner)
    assert passes == [7.0, 7.0, 7.0] and len(runner.calls) == 1  # three passes, one retrain
    assert "not valid YAML" in caplog.text and "already handled" in caplog.text
