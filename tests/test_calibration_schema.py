"""The calibration schema: valid files load, malformed ones name the field."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from thermops.camera.calibration import (
    CalibrationError,
    load_calibration,
    load_calibrations,
    parse_calibration,
    write_calibration,
)


def _good(calibration_dir):
    cals = load_calibrations(calibration_dir)
    radiometric = [c for c in cals.values() if c.radiometry.mode == "linear" and c.geometry.known]
    assert radiometric, "the repository ships radiometric synthetic cameras"
    return radiometric[0].model_dump(mode="json")


@pytest.fixture()
def calibration_dir(repo_root):
    return repo_root / "data" / "calibration"


def test_every_shipped_calibration_loads(calibration_dir):
    cals = load_calibrations(calibration_dir)
    assert len([c for c in cals.values() if c.source == "synthetic"]) >= 3
    for cid, cal in cals.items():
        assert cal.camera_id == cid
        assert cal.version


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("geometry", "fx"), -5.0, "geometry.fx"),
        (("geometry", "image_width"), "wide", "geometry.image_width"),
        (("radiometry", "mode"), "kelvin-ish", "radiometry.mode"),
        (("radiometry", "netd_mk"), None, "netd_mk"),
        (("version",), "", "version"),
        (("geometry", "pitch_deg"), 120.0, "geometry.pitch_deg"),
        (("agc", "mode"), "auto", "agc.mode"),
    ],
)
def test_malformed_field_is_named(calibration_dir, path, value, field):
    data = _good(calibration_dir)
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(CalibrationError, match=field.replace(".", r"\.")):
        parse_calibration(data, "test.yaml")


def test_unknown_key_is_rejected(calibration_dir):
    data = _good(calibration_dir)
    data["geometry"]["focal_mm"] = 25
    with pytest.raises(CalibrationError, match=r"geometry\.focal_mm"):
        parse_calibration(data)


def test_known_geometry_must_be_complete(calibration_dir):
    data = _good(calibration_dir)
    del data["geometry"]["height_m"]
    with pytest.raises(CalibrationError, match="height_m missing"):
        parse_calibration(data)


def test_display8_needs_no_temperatures_but_states_agc():
    data = {
        "camera_id": "uav",
        "version": "1",
        "valid_from": "2026-01-01",
        "geometry": {"known": False, "image_width": 640, "image_height": 512},
        "radiometry": {"mode": "display8", "bit_depth": 8},
        "agc": {"mode": "unknown"},
    }
    cal = parse_calibration(data)
    assert cal.units == "display8"
    with pytest.raises(CalibrationError, match="no temperature model"):
        cal.radiometry.counts_to_celsius([100])
    data["agc"] = {"mode": "none"}
    with pytest.raises(CalibrationError, match="agc.mode"):
        parse_calibration(data)


def test_file_name_must_match_camera_id(calibration_dir, tmp_path):
    data = _good(calibration_dir)
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(CalibrationError, match="does not match the file name"):
        load_calibration(tmp_path / "other.yaml")


def test_not_yaml_and_missing_file(tmp_path):
    (tmp_path / "cam.yaml").write_text("geometry: [unclosed")
    with pytest.raises(CalibrationError, match="not valid YAML"):
        load_calibration(tmp_path / "cam.yaml")
    with pytest.raises(CalibrationError, match="not found"):
        load_calibration(tmp_path / "missing.yaml")


def test_write_roundtrip_and_counts_conversion(calibration_dir, tmp_path):
    cal = parse_calibration(_good(calibration_dir))
    path = write_calibration(cal, tmp_path)
    again = load_calibration(path)
    assert again == cal and again.fingerprint() == cal.fingerprint()
    t = np.array([-20.0, 0.0, 36.5, 80.0])
    np.testing.assert_allclose(cal.radiometry.counts_to_celsius(cal.radiometry.celsius_to_counts(t)), t, atol=1e-9)


def test_planck_model_inverts_and_is_monotonic():
    data = {
        "camera_id": "planck",
        "version": "1",
        "valid_from": "2026-01-01",
        "geometry": {"known": False, "image_width": 64, "image_height": 64},
        "radiometry": {
            "mode": "planck",
            "bit_depth": 16,
            "planck_r": 366545.0,
            "planck_b": 1428.0,
            "planck_f": 1.0,
            "planck_o": -342.0,
            "netd_mk": 40.0,
        },
    }
    rad = parse_calibration(data).radiometry
    t = np.linspace(-30, 120, 16)
    counts = rad.celsius_to_counts(t)
    assert np.all(np.diff(counts) > 0)
    np.testing.assert_allclose(rad.counts_to_celsius(counts), t, atol=1e-6)
    assert rad.gain_at(80.0) > rad.gain_at(0.0)  # Planck: responsivity grows with temperature
