"""Pinhole camera geometry: projection, ground back-projection, homography, metric windows."""

from __future__ import annotations

import numpy as np
import pytest

from thermops.camera.calibration import load_calibrations
from thermops.camera.geometry import PinholeCamera


@pytest.fixture(scope="module")
def cameras(repo_root):
    cals = load_calibrations(repo_root / "data" / "calibration")
    return {cid: PinholeCamera.from_calibration(c) for cid, c in cals.items() if c.geometry.known}


def test_ground_roundtrip(cameras):
    for cam in cameras.values():
        pts = cam.roi_ground_grid(7)
        uv, depth = cam.project(np.c_[pts, np.zeros(len(pts))])
        assert np.all(depth > 0)
        np.testing.assert_allclose(cam.pixel_to_ground(uv), pts, rtol=1e-6, atol=1e-3)


def test_objects_shrink_with_distance_as_pinhole(cameras):
    for cam in cameras.values():
        near, far = cam.min_range_m, cam.max_range_m
        h_near = cam.apparent_height_px(cam.ground_point_at_range(near), 1.8)
        h_far = cam.apparent_height_px(cam.ground_point_at_range(far), 1.8)
        assert h_near > h_far > 0
        # Far away the height is close to f * H / range (small-angle pinhole law).
        assert h_far == pytest.approx(cam.fy * 1.8 / far, rel=0.1)


def test_homography_matches_projection_without_distortion(cameras):
    for cam in cameras.values():
        pts = cam.roi_ground_grid(5)
        uv, _ = cam.project(np.c_[pts, np.zeros(len(pts))], distort=False)
        h = cam.ground_homography() @ np.c_[pts, np.ones(len(pts))].T
        np.testing.assert_allclose((h[:2] / h[2]).T, uv, rtol=1e-6, atol=1e-6)


def test_pixels_above_horizon_have_no_ground_point(cameras):
    for cam in cameras.values():
        v = cam.horizon_v() - 5
        assert np.all(np.isnan(cam.pixel_to_ground(np.array([[cam.cx, v]]))))


def test_metric_window_covers_same_extent_at_any_range(cameras):
    cam = next(iter(cameras.values()))
    for r in (cam.min_range_m, cam.max_range_m):
        g = cam.ground_point_at_range(r)
        px = cam.metric_extent_px(g, 4.0)
        person = cam.apparent_height_px(g, 1.8)
        # The 4 m window is always about 2.2 person heights, whatever the range.
        assert px / person == pytest.approx(4.0 / 1.8, rel=0.15)
