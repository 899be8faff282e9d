"""A request's window geometry -> the geometry features a classifier takes beside the pixels.

A classifier trained with `input.geometry` (its card's input spec) also takes, for each
tubelet, `thermops.model.preprocess.geometry_features(window_m, window_px, spec)`. A
request says where its tubelet was cut:

- `window_px`: the window's side in camera pixels before it was resampled to the tubelet
  (what `prepare` records as `window_px`); required by such a model, since both
  `pixel_scale` and the window's metres need it; at most the camera's larger image side
  (`prepare` never cuts a larger window).
- `ground_px`: [u, v], the object's ground contact point in camera pixels (optional). Where
  the camera's geometry is known it becomes metres exactly as `prepare` measures a window:
  `PinholeCamera.from_calibration`, `pixel_to_ground`, `metric_extent_px(ground, 1.0)`,
  window_m = window_px / pixels-per-metre. It must lie in the image (0 <= u <= width,
  0 <= v <= height) and below the horizon (a ray that meets the ground).

Without `ground_px`, or on a camera whose geometry is unknown (`geometry.known` false, such
as a registered display8 camera), the geometry is unknown: metric_scale 0 and known 0, as
training marks such rows. A model without geometry features ignores both fields.

Everything here is a few scalars, checked before the tubelet is decoded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from thermops.camera.calibration import Calibration
from thermops.camera.geometry import PinholeCamera
from thermops.model.preprocess import InputSpec, geometry_features
from thermops.serve.errors import GeometryError


@dataclass(frozen=True)
class Window:
    """The geometry a request's tubelet was cut with, and the model's features of it.

    Attributes:
        window_px: the window's side in camera pixels.
        window_m: metres it covers at the object's range; None where the geometry is unknown.
        features: (G,) float32 geometry features in the spec's order.
        names: the features' names (`InputSpec.geometry`).
    """

    window_px: float
    window_m: float | None
    features: np.ndarray
    names: tuple[str, ...]

    @property
    def known(self) -> bool:
        return self.window_m is not None

    def describe(self) -> dict[str, Any]:
        """What the answer reports: the window, its metres, whether known, and the features."""
        return {
            "window_px": self.window_px,
            "window_m": self.window_m,
            "known": self.known,
            "features": {n: float(v) for n, v in zip(self.names, self.features)},
        }


def _finite(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise GeometryError(f"{name} must be a finite number, got {value!r}"[:200], field=name)
    return float(value)


def ground_px_per_m(cal: Calibration, ground_px: tuple[float, float]) -> float:
    """Pixels per metre at the ground contact point `ground_px` = (u, v) of a camera of known
    geometry (the functions `prepare` measures windows with). Refuses a point outside the
    image or one whose ray never meets the ground (at or above the horizon)."""
    g = cal.geometry
    u, v = _finite(ground_px[0], "ground_px"), _finite(ground_px[1], "ground_px")
    if not (0.0 <= u <= g.image_width and 0.0 <= v <= g.image_height):
        raise GeometryError(
            f"ground_px [{u:g}, {v:g}] is outside the {g.image_width} x {g.image_height} image of camera "
            f"{cal.camera_id!r} (0 <= u <= {g.image_width}, 0 <= v <= {g.image_height})",
            field="ground_px",
        )
    cam = PinholeCamera.from_calibration(cal)
    ground = cam.pixel_to_ground(np.array([[u, v]]))[0]
    if not np.all(np.isfinite(ground)):
        raise GeometryError(
            f"ground_px [{u:g}, {v:g}] is at or above the horizon of camera {cal.camera_id!r}: its ray never "
            "meets the ground, so it is no ground contact point (send the object's foot, below the horizon)",
            field="ground_px",
        )
    px_per_m = cam.metric_extent_px(ground, 1.0)
    if not (math.isfinite(px_per_m) and px_per_m > 0):
        raise GeometryError(f"ground_px [{u:g}, {v:g}] gives no metric scale", field="ground_px")
    return px_per_m


def request_window(spec: InputSpec, cal: Calibration, window_px: float | None, ground_px: Any | None) -> Window | None:
    """The request's window for a model that takes geometry features; None for one that does not
    (its fields, if sent, are ignored). Raises `GeometryError` (422) naming the field."""
    if not spec.geometry:
        return None
    if window_px is None:
        raise GeometryError(
            f"this model takes window geometry ({', '.join(spec.geometry)}): send window_px, the window's "
            "side in camera pixels before resampling (and ground_px, its ground contact point [u, v], "
            "for a metric scale)",
            field="window_px",
            code="missing_geometry",
        )
    side = _finite(window_px, "window_px")
    top = max(cal.geometry.image_width, cal.geometry.image_height)
    if not 1.0 <= side <= top:
        raise GeometryError(
            f"window_px {side:g} is outside 1..{top}: a window is at least one pixel and at most the larger "
            f"image side of camera {cal.camera_id!r}",
            field="window_px",
        )
    window_m = None
    if ground_px is not None and cal.geometry.known:
        if not isinstance(ground_px, (list, tuple)) or len(ground_px) != 2:
            raise GeometryError("ground_px must be [u, v], two numbers", field="ground_px")
        window_m = side / ground_px_per_m(cal, (ground_px[0], ground_px[1]))
    features = np.asarray(geometry_features(window_m, side, spec), dtype=np.float32)
    return Window(side, window_m, features, tuple(spec.geometry))
