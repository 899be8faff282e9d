"""Change detection: geometric displacement over the ROI, radiometric error, categorical changes."""

from __future__ import annotations

import numpy as np
import pytest
from params_helpers import from_params

from thermops.camera.calibration import Calibration, load_calibration
from thermops.camera.change import Envelope, TriggerParams, compare, geometric_figures, radiometric_figures
from thermops.camera.geometry import PinholeCamera

TRIGGER = from_params(TriggerParams, "trigger", p95_px=2.0)


def _cal(name: str) -> Calibration:
    return load_calibration(f"data/calibration/{name}.yaml")


def _edit(cal: Calibration, **sets) -> Calibration:
    d = cal.model_dump()
    d["version"] = cal.version + "x"
    for key, value in sets.items():
        node = d
        *parents, leaf = key.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return Calibration.model_validate(d)


def _compare(old, new, envelope=None):
    envelope = Envelope() if envelope is None else envelope
    return compare(old, new, trigger=TRIGGER, envelope=envelope, window_m=4.0, input_size=32)


def test_ground_displacement_matches_the_homography_without_distortion():
    old = _edit(_cal("gate_wide"), geometry__distortion__k1=0.0)
    new = _edit(old, geometry__pitch_deg=12.4, geometry__yaw_deg=0.3)
    cam_o, cam_n = PinholeCamera.from_calibration(old), PinholeCamera.from_calibration(new)
    g = cam_o.roi_ground_grid(21)
    homog = np.column_stack([g, np.ones(len(g))])

    def via_h(cam):
        p = homog @ cam.ground_homography().T
        return p[:, :2] / p[:, 2:]

    uv_o = via_h(cam_o)
    inside = (uv_o[:, 0] >= 0) & (uv_o[:, 0] <= 319) & (uv_o[:, 1] >= 0) & (uv_o[:, 1] <= 255)
    expected = np.linalg.norm(via_h(cam_n) - uv_o, axis=1)[inside]
    fig = geometric_figures(old, new, window_m=4.0, input_size=32)
    assert fig["roi_points"] == inside.sum()
    assert fig["max_px"] == pytest.approx(expected.max(), rel=1e-9)
    assert fig["p95_px"] == pytest.approx(np.percentile(expected, 95), rel=1e-9)


def test_scale_change_follows_the_focal_length():
    old = _cal("perimeter_long")
    new = _edit(old, geometry__fx=old.geometry.fx * 1.08, geometry__fy=old.geometry.fy * 1.08)
    fig = geometric_figures(old, new, window_m=4.0, input_size=32)
    assert fig["max_scale_change"] == pytest.approx(0.08, rel=1e-6)
    assert any("scale change" in r for r in _compare(old, new).material_reasons)


def test_distortion_change_alone_is_seen():
    old = _cal("gate_wide")
    rep = _compare(old, _edit(old, geometry__distortion__k1=-0.2))
    assert rep.material and rep.figures["geometric"]["max_px"] > TRIGGER.max_corner_px


def test_model_pixels_are_camera_pixels_scaled_by_the_window_at_each_range():
    old = _cal("fence_mid")
    fig = geometric_figures(old, _edit(old, geometry__pitch_deg=5.05), window_m=4.0, input_size=32)
    cam = PinholeCamera.from_calibration(old)
    # At the far edge (160 m) a 4 m window spans ~903 * 4 / 160 = 22.6 camera px = 32 model px.
    far = cam.metric_extent_px(cam.ground_point_at_range(160.0), 4.0) / 32
    assert fig["cam_px_per_model_px_min"] == pytest.approx(far, rel=0.02)
    assert fig["max_model_px"] > fig["max_px"]  # far points: a model pixel is < 1 camera pixel


def test_planck_radiometry_error_against_a_linear_fit():
    old = _edit(
        _cal("fence_mid"),
        radiometry__mode="planck",
        radiometry__gain_counts_per_k=None,
        radiometry__offset_counts=None,
        radiometry__planck_r=400000.0,
        radiometry__planck_b=1430.0,
        radiometry__planck_f=1.0,
        radiometry__planck_o=-7000.0,
    )
    same = radiometric_figures(old, old, (-20.0, 60.0))
    assert same["max_temp_error_k"] < 1e-6 and same["gain_change"] < 1e-9
    shifted = _edit(old, radiometry__planck_o=-6900.0)
    rad = radiometric_figures(old, shifted, (-20.0, 60.0))
    assert rad["max_temp_error_k"] > TRIGGER.max_temp_error_k and rad["offset_k"] > 0.5
    assert _compare(old, shifted).material


def test_uniform_offset_against_the_envelope():
    old = _cal("gate_wide")
    new = _edit(old, radiometry__offset_counts=old.radiometry.offset_counts + 45.0)  # +1 K at 45 counts/K
    loose = from_params(TriggerParams, "trigger", p95_px=2.0, max_temp_error_k=5.0)
    rep = compare(old, new, trigger=loose, envelope=Envelope(max_offset_k=0.5), window_m=4.0, input_size=32)
    assert rep.figures["radiometric"]["offset_k"] == pytest.approx(1.0)
    assert rep.material_reasons == ["offset 1 K > envelope.radiometric.max_offset_k 0.5 K"]
    # The gate's envelope says a uniform offset is normalized away: only params' error bound applies.
    invariant = Envelope(max_offset_k=0.5, uniform_offset_invariant=True)
    assert not compare(old, new, trigger=loose, envelope=invariant, window_m=4.0, input_size=32).material
    assert compare(old, new, trigger=TRIGGER, envelope=invariant, window_m=4.0, input_size=32).material_reasons == [
        "temperature error over -20..60 degC 1 K > trigger.max_temp_error_k 0.5 K"
    ]


def test_envelope_from_a_gate_card():
    card = {
        "input": {"size": 32},
        "envelope": {
            "geometric": {"max_corner_px": 1.5, "max_scale_change": 0.08, "input_size_px": 24},
            "radiometric": {"max_gain_change": 0.1, "max_offset_k": 2.0, "uniform_offset_invariant": True},
        },
    }
    env = Envelope.from_card(card)
    assert env == Envelope(1.5, 0.08, 0.1, 2.0, 24, True)
    assert Envelope.from_card({"input": {"size": 32}}) == Envelope(input_size=32)


@pytest.mark.parametrize(
    "sets, reason",
    [
        ({"geometry__image_width": 640, "geometry__cx": 319.5}, "resolution changed 384x288 -> 640x288"),
        ({"radiometry__bit_depth": 16}, "radiometry.bit_depth changed 14 -> 16"),
        ({"nuc__table_id": "fence_mid-factory-b"}, "nuc.table_id changed"),
        ({"agc__mode": "histeq"}, "agc.mode changed linear -> histeq"),
    ],
)
def test_categorical_changes_are_material(sets, reason):
    old = _cal("fence_mid")
    rep = _compare(old, _edit(old, **sets))
    assert any(reason in r for r in rep.material_reasons), rep.material_reasons


def test_routine_ffc_and_description_are_immaterial():
    old = _cal("fence_mid")
    rep = _compare(old, _edit(old, nuc__ffc_date="2026-11-20", description="FFC redone"))
    assert not rep.material and "nuc.ffc_date" in rep.summary() and "no retrain needed" in rep.summary()


def test_display8_cameras_compare_by_size_and_agc():
    old = _cal("hit-uav")
    assert not _compare(old, _edit(old, description="same camera")).material
    assert _compare(old, _edit(old, agc__clip_percent=3.0)).material_reasons == [
        "agc settings changed on a display8 camera"
    ]
    assert "resolution changed" in _compare(old, _edit(old, geometry__image_height=480)).material_reasons[0]
    to_linear = _edit(_cal("fence_mid"), radiometry__mode="display8", radiometry__bit_depth=8)
    assert "tubelet units change" in _compare(_cal("fence_mid"), to_linear).material_reasons[0]
