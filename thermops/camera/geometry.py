"""Pinhole camera above a flat ground plane, built from a calibration.

World frame: X to the right of the camera's heading, Y forward along the heading,
Z up, origin on the ground below the camera. Camera frame (OpenCV): x right,
y down, z along the optical axis. Distortion is Brown-Conrady (k1, k2, p1, p2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from thermops.camera.calibration import Calibration, CalibrationError, Geometry


def _rot_x(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=np.float64)


def _rot_z(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=np.float64)


# World (X right, Y forward, Z up) to camera (x right, y down, z forward) for a level camera.
_LEVEL = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=np.float64)


@dataclass(frozen=True)
class PinholeCamera:
    """A calibrated camera: projects world points to pixels and pixels to the ground."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    k1: float
    k2: float
    p1: float
    p2: float
    mount_height_m: float
    pitch_deg: float
    roll_deg: float = 0.0
    yaw_deg: float = 0.0
    min_range_m: float = 10.0
    max_range_m: float = 200.0

    @classmethod
    def from_geometry(cls, g: Geometry) -> PinholeCamera:
        if not g.known:
            raise CalibrationError("camera geometry is unknown (geometry.known: false); no metric projection")
        return cls(
            width=g.image_width,
            height=g.image_height,
            fx=g.fx,
            fy=g.fy,
            cx=g.cx,
            cy=g.cy,
            k1=g.distortion.k1,
            k2=g.distortion.k2,
            p1=g.distortion.p1,
            p2=g.distortion.p2,
            mount_height_m=g.height_m,
            pitch_deg=g.pitch_deg,
            roll_deg=g.roll_deg,
            yaw_deg=g.yaw_deg,
            min_range_m=g.min_range_m,
            max_range_m=g.max_range_m,
        )

    @classmethod
    def from_calibration(cls, cal: Calibration) -> PinholeCamera:
        return cls.from_geometry(cal.geometry)

    # -- pose -------------------------------------------------------------------------
    @property
    def rotation(self) -> np.ndarray:
        """R such that p_cam = R @ (p_world - C)."""
        r_roll = _rot_z(math.radians(self.roll_deg))
        r_pitch = _rot_x(math.radians(self.pitch_deg))
        r_yaw = _rot_z(math.radians(self.yaw_deg))  # heading rotates the world about Z
        return r_roll @ r_pitch @ _LEVEL @ r_yaw

    @property
    def center(self) -> np.ndarray:
        return np.array([0.0, 0.0, self.mount_height_m])

    @property
    def K(self) -> np.ndarray:
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1]], dtype=np.float64)

    # -- projection -------------------------------------------------------------------
    def _distort(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r2 = x * x + y * y
        radial = 1 + self.k1 * r2 + self.k2 * r2 * r2
        xd = x * radial + 2 * self.p1 * x * y + self.p2 * (r2 + 2 * x * x)
        yd = y * radial + self.p1 * (r2 + 2 * y * y) + 2 * self.p2 * x * y
        return xd, yd

    def _undistort(self, xd: np.ndarray, yd: np.ndarray, iters: int = 20) -> tuple[np.ndarray, np.ndarray]:
        x, y = xd.copy(), yd.copy()
        for _ in range(iters):  # fixed-point iteration, as OpenCV's undistortPoints
            r2 = x * x + y * y
            radial = 1 + self.k1 * r2 + self.k2 * r2 * r2
            dx = 2 * self.p1 * x * y + self.p2 * (r2 + 2 * x * x)
            dy = self.p1 * (r2 + 2 * y * y) + 2 * self.p2 * x * y
            x = (xd - dx) / radial
            y = (yd - dy) / radial
        return x, y

    def world_to_camera(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) world points to (N, 3) camera coordinates."""
        p = np.atleast_2d(np.asarray(points, dtype=np.float64))
        return (p - self.center) @ self.rotation.T

    def project(self, points: np.ndarray, distort: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3) world points to ((N, 2) pixels, (N,) depth along the optical axis)."""
        pc = self.world_to_camera(points)
        z = pc[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            x, y = pc[:, 0] / z, pc[:, 1] / z
        if distort:
            x, y = self._distort(x, y)
        uv = np.stack([self.fx * x + self.cx, self.fy * y + self.cy], axis=1)
        return uv, z

    def pixel_rays(self, uv: np.ndarray) -> np.ndarray:
        """(N, 2) pixels to (N, 3) unit ray directions in the world frame."""
        uv = np.atleast_2d(np.asarray(uv, dtype=np.float64))
        x, y = self._undistort((uv[:, 0] - self.cx) / self.fx, (uv[:, 1] - self.cy) / self.fy)
        d = np.stack([x, y, np.ones_like(x)], axis=1) @ self.rotation  # R^T d_cam, row-wise
        return d / np.linalg.norm(d, axis=1, keepdims=True)

    def pixel_to_ground(self, uv: np.ndarray) -> np.ndarray:
        """(N, 2) pixels to (N, 2) ground points (X, Y); NaN above the horizon."""
        d = self.pixel_rays(uv)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(d[:, 2] < -1e-9, -self.mount_height_m / d[:, 2], np.nan)
        return (self.center[None, :2] + t[:, None] * d[:, :2]).astype(np.float64)

    def ground_range(self, ground_xy: np.ndarray) -> np.ndarray:
        """Horizontal distance (m) from the foot of the pole to ground points (N, 2)."""
        g = np.atleast_2d(np.asarray(ground_xy, dtype=np.float64))
        return np.hypot(g[:, 0], g[:, 1])

    def ground_point_at_range(self, range_m: float, lateral_m: float = 0.0) -> np.ndarray:
        """Ground point at a forward range along the heading, offset laterally (world XY)."""
        yaw = math.radians(self.yaw_deg)
        fwd = np.array([math.sin(yaw), math.cos(yaw)])
        right = np.array([math.cos(yaw), -math.sin(yaw)])
        return range_m * fwd + lateral_m * right

    def apparent_height_px(self, ground_xy: np.ndarray, height_m: float) -> float:
        """Pixel height of an upright object of `height_m` standing at a ground point."""
        x, y = np.asarray(ground_xy, dtype=np.float64)
        uv, _ = self.project(np.array([[x, y, 0.0], [x, y, height_m]]))
        return float(np.hypot(*(uv[0] - uv[1])))

    def metric_extent_px(self, ground_xy: np.ndarray, extent_m: float, height_m: float = 0.0) -> float:
        """Pixels spanned by `extent_m` (fronto-parallel) at a ground point and height."""
        x, y = np.asarray(ground_xy, dtype=np.float64)
        _, z = self.project(np.array([[x, y, height_m]]))
        return float(0.5 * (self.fx + self.fy) * extent_m / max(z[0], 1e-6))

    def ground_homography(self) -> np.ndarray:
        """3x3 H mapping ground (X, Y, 1) to undistorted pixels (u, v, 1), up to scale."""
        r = self.rotation
        t = -r @ self.center
        h = self.K @ np.column_stack([r[:, 0], r[:, 1], t])
        return h / h[2, 2]

    def horizon_v(self, u: float | None = None) -> float:
        """Image row of the horizon at column `u` (the centre by default), undistorted."""
        u = self.cx if u is None else u
        # A far point along the heading sits on the horizon.
        far = self.ground_point_at_range(1e7)
        uv, _ = self.project(np.array([[far[0], far[1], 0.0]]), distort=False)
        return float(uv[0, 1])

    def roi_ground_grid(self, n: int = 21) -> np.ndarray:
        """(n*n, 2) ground points covering the working region inside the field of view."""
        half = 0.5 * math.atan(self.width / (2 * self.fx)) * 2
        ranges = np.geomspace(self.min_range_m, self.max_range_m, n)
        frac = np.linspace(-0.8, 0.8, n)
        pts = [self.ground_point_at_range(r, f * r * math.tan(half)) for r in ranges for f in frac]
        return np.array(pts)
