"""Is a camera's new calibration a material change for the deployed model?

The deployed model was trained and gated on one calibration per camera (its card's
`calibrations` map, and the gate's validated `envelope`). This module compares a
camera's current calibration with that one and says, with numbers, whether the
change leaves what the model was validated for:

- geometric: the ground plane seen through each calibration (the ground-plane
  homography, then the lens distortion) over the camera's region of interest:
  how far each ground point moves in the image (max and 95th percentile, camera
  pixels and model-input pixels), and how much the metric window changes size
  (scale change) over the working range;
- radiometric: counts the sensor now produces for a scene temperature T, read back
  through the old calibration, give T'; the error T' - T over the sensor's range
  (max), and the line T' = (1 + g) T + o fitted to it (gain change g, offset o K),
  which is exactly the gain/offset perturbation the gate applies to the input;
- categorical: resolution, known/unknown geometry, radiometry mode (units), bit
  depth, NUC table and AGC mode changes.

A change is material when any figure is outside the gate's envelope or past the
`trigger:` thresholds in params.yaml (whichever is tighter).

Envelope pixels are model-input pixels: the model sees a window of `size` pixels
(the card's `input.size`, the tubelet size) that covers `window_m` metres
(`prepare.window_m`) at the object's range. At a ground point at depth z the
window spans w = f * window_m / z camera pixels, so one model pixel is w / size
camera pixels there: far points get the tightest allowance. Each ROI point's
camera-pixel displacement d is converted at its own depth: d * size / w.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from thermops.camera.calibration import Calibration
from thermops.camera.geometry import PinholeCamera


@dataclass(frozen=True)
class TriggerParams:
    """The `trigger:` section of params.yaml (thresholds and watcher settings)."""

    max_corner_px: float
    p95_px: float
    max_scale_change: float
    max_temp_error_k: float
    temp_range_c: tuple[float, float]
    roi_grid: int
    state_file: str
    metrics_file: str
    poll_interval_s: float
    mode: str
    retrain_command: tuple[str, ...]
    max_attempts: int
    retry_backoff_s: float
    stop_grace_s: float
    submit_grace_s: float
    auto_promote: bool

    def __post_init__(self) -> None:
        if self.mode not in ("local", "cluster"):
            raise ValueError(f"mode must be local or cluster, not {self.mode!r}")
        if not self.temp_range_c[0] < self.temp_range_c[1]:
            raise ValueError("temp_range_c must be [low, high] with low < high")
        if not self.retrain_command:
            raise ValueError("retrain_command must name a command (e.g. [python, -m, dvc, repro])")
        if not isinstance(self.auto_promote, bool):
            raise ValueError(f"auto_promote must be true or false, not {self.auto_promote!r}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, not {self.max_attempts}")
        for name in ("poll_interval_s", "retry_backoff_s", "stop_grace_s", "submit_grace_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, not {getattr(self, name)!r}")


@dataclass(frozen=True)
class Envelope:
    """The gate's validated envelope (None where the gate did not state a bound).

    `max_corner_px` is in model-input pixels of a `input_size`-pixel window.
    """

    max_corner_px: float | None = None
    max_scale_change: float | None = None
    max_gain_change: float | None = None
    max_offset_k: float | None = None
    input_size: int | None = None
    # The gate tests only the non-uniform part of an offset drift: a uniform offset
    # is removed by the per-tubelet median normalization.
    uniform_offset_invariant: bool = False

    @classmethod
    def from_card(cls, card: dict[str, Any] | None) -> Envelope:
        """Read `card['envelope']` (geometric/radiometric bounds) and the input size."""
        if not card:
            return cls()
        env = card.get("envelope") or {}
        geo = env.get("geometric") or {}
        rad = env.get("radiometric") or {}

        def num(d: dict, key: str) -> float | None:
            v = d.get(key)
            return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

        size = geo.get("input_size_px") or (card.get("input") or {}).get("size")
        return cls(
            max_corner_px=num(geo, "max_corner_px"),
            max_scale_change=num(geo, "max_scale_change"),
            max_gain_change=num(rad, "max_gain_change"),
            max_offset_k=num(rad, "max_offset_k"),
            input_size=int(size) if isinstance(size, (int, float)) and not isinstance(size, bool) else None,
            uniform_offset_invariant=rad.get("uniform_offset_invariant") is True,
        )


@dataclass
class ChangeReport:
    """Figures and verdict for one camera: old (deployed) vs new (current) calibration."""

    camera_id: str
    old_version: str | None
    new_version: str
    figures: dict[str, Any] = field(default_factory=dict)
    material_reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def material(self) -> bool:
        return bool(self.material_reasons)

    @property
    def new_camera(self) -> bool:
        """A camera the deployed model was never trained on."""
        return self.old_version is None

    def summary(self) -> str:
        """One line: the verdict and why."""
        if self.new_camera:
            head = f"{self.camera_id} (new camera, version {self.new_version})"
        else:
            head = f"{self.camera_id} {self.old_version} -> {self.new_version}"
        if self.material:
            notes = f"; {'; '.join(self.notes)}" if self.notes else ""
            return f"{head}: MATERIAL ({'; '.join(self.material_reasons)}){notes}"
        why = "; ".join(self.notes) if self.notes else "no difference"
        return f"{head}: immaterial, no retrain needed ({why})"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["material"] = self.material
        return d


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested mappings."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b)):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def geometric_figures(
    old: Calibration, new: Calibration, *, window_m: float, input_size: int, grid: int = 21
) -> dict[str, Any]:
    """Image-plane displacement and scale change of the ground plane over the old ROI.

    Ground points: the old camera's `roi_ground_grid(grid)` that fall inside the old
    image (the region the model was trained on). Returns camera-pixel and
    model-input-pixel displacement (max, p95), the scale change of the metric window
    (max |w_new / w_old - 1|), and the camera pixels per model pixel over the ROI.
    """
    cam_old = PinholeCamera.from_calibration(old)
    cam_new = PinholeCamera.from_calibration(new)
    ground = cam_old.roi_ground_grid(grid)
    pts = np.column_stack([ground, np.zeros(len(ground))])
    uv_old, z_old = cam_old.project(pts)
    uv_new, z_new = cam_new.project(pts)
    inside = (
        (z_old > 0)
        & (uv_old[:, 0] >= 0)
        & (uv_old[:, 0] <= cam_old.width - 1)
        & (uv_old[:, 1] >= 0)
        & (uv_old[:, 1] <= cam_old.height - 1)
    )
    if not inside.any():
        return {"roi_points": 0}
    z_o, z_n = z_old[inside], z_new[inside]
    behind = z_n <= 0  # a ground point now behind the camera: moved infinitely far
    disp = np.linalg.norm(uv_new[inside] - uv_old[inside], axis=1)
    disp = np.where(behind, np.inf, disp)
    f_old = 0.5 * (cam_old.fx + cam_old.fy)
    f_new = 0.5 * (cam_new.fx + cam_new.fy)
    w_old = f_old * window_m / z_o  # window width in camera pixels at each point
    with np.errstate(divide="ignore", invalid="ignore"):
        w_new = np.where(behind, np.nan, f_new * window_m / np.maximum(z_n, 1e-9))
    cam_px_per_model_px = w_old / input_size
    disp_model = disp / cam_px_per_model_px
    scale = np.abs(w_new / w_old - 1.0)
    scale = np.where(np.isnan(scale), np.inf, scale)
    worst = int(np.argmax(disp_model))  # the point that decides against the envelope
    return {
        "roi_points": int(inside.sum()),
        "max_px": float(disp.max()),
        "p95_px": float(np.percentile(disp, 95)) if np.isfinite(disp).all() else math.inf,
        "max_model_px": float(disp_model.max()),
        "p95_model_px": float(np.percentile(disp_model, 95)) if np.isfinite(disp_model).all() else math.inf,
        "max_scale_change": float(scale.max()),
        "cam_px_per_model_px_min": float(cam_px_per_model_px.min()),
        "cam_px_per_model_px_max": float(cam_px_per_model_px.max()),
        # At that point: its camera-pixel displacement, its depth, and how many camera
        # pixels one model pixel is there (the envelope's allowance in camera pixels).
        "worst_px": float(disp[worst]),
        "worst_depth_m": float(z_o[worst]),
        "worst_cam_px_per_model_px": float(cam_px_per_model_px[worst]),
        "range_m": [float(cam_old.min_range_m), float(cam_old.max_range_m)],
    }


def camera_px_allowance(
    cal: Calibration, model_px: float, *, window_m: float, input_size: int, grid: int
) -> tuple[float, float] | None:
    """The camera-pixel range that `model_px` model pixels span over a camera's ROI (far, near); None
    when the geometry is unknown or the ROI is out of view."""
    if not cal.geometry.known:
        return None
    cam = PinholeCamera.from_calibration(cal)
    pts = cam.roi_ground_grid(grid)
    uv, z = cam.project(np.column_stack([pts, np.zeros(len(pts))]))
    inside = (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] <= cam.width - 1) & (uv[:, 1] >= 0) & (uv[:, 1] <= cam.height - 1)
    if not inside.any():
        return None
    per = 0.5 * (cam.fx + cam.fy) * window_m / z[inside] / input_size
    return float(model_px * per.min()), float(model_px * per.max())


def radiometric_figures(
    old: Calibration, new: Calibration, temp_range_c: tuple[float, float], n: int = 161
) -> dict[str, Any]:
    """Temperature error the new counts-to-temperature model induces under the old one.

    For T over `temp_range_c`: counts = new(T), T' = old^-1(counts). Returns the max
    |T' - T| (K), and the gain change |slope - 1| and offset |intercept| (K) of the
    least-squares line T' = slope * T + intercept.
    """
    t = np.linspace(temp_range_c[0], temp_range_c[1], n)
    t_read = old.radiometry.counts_to_celsius(new.radiometry.celsius_to_counts(t))
    err = t_read - t
    slope, intercept = np.polyfit(t, t_read, 1)
    return {
        "max_temp_error_k": float(np.max(np.abs(err))),
        "gain_change": float(abs(slope - 1.0)),
        "offset_k": float(abs(intercept)),
        "temp_range_c": [float(temp_range_c[0]), float(temp_range_c[1])],
    }


def compare(
    old: Calibration, new: Calibration, *, trigger: TriggerParams, envelope: Envelope, window_m: float, input_size: int
) -> ChangeReport:
    """Compare the deployed calibration `old` with the current `new` of one camera."""
    rep = ChangeReport(new.camera_id, old.version, new.version)
    changed = _diff_keys(old.model_dump(mode="json"), new.model_dump(mode="json"))
    rep.figures["changed_fields"] = changed
    size = envelope.input_size or input_size
    material = rep.material_reasons

    def check(value: float, limit: float | None, what: str, unit: str, source: str) -> None:
        if limit is not None and not value <= limit:  # `not <=` also catches NaN
            material.append(f"{what} {value:.3g}{unit} > {source} {limit:.3g}{unit}")

    # Geometry.
    go, gn = old.geometry, new.geometry
    if (go.image_width, go.image_height) != (gn.image_width, gn.image_height):
        material.append(f"resolution changed {go.image_width}x{go.image_height} -> {gn.image_width}x{gn.image_height}")
    elif go.known != gn.known:
        material.append(f"geometry.known changed {go.known} -> {gn.known}")
    elif go.known and gn.known:
        geo = geometric_figures(old, new, window_m=window_m, input_size=size, grid=trigger.roi_grid)
        rep.figures["geometric"] = geo
        if geo["roi_points"] == 0:
            material.append("the old region of interest is not in view; cannot bound the change")
        else:
            check(geo["max_px"], trigger.max_corner_px, "max ROI displacement", " camera px", "trigger.max_corner_px")
            check(geo["p95_px"], trigger.p95_px, "p95 ROI displacement", " camera px", "trigger.p95_px")
            if envelope.max_corner_px is not None:
                lo = envelope.max_corner_px * geo["cam_px_per_model_px_min"]
                hi = envelope.max_corner_px * geo["cam_px_per_model_px_max"]
                there = envelope.max_corner_px * geo["worst_cam_px_per_model_px"]
                if not geo["max_model_px"] <= envelope.max_corner_px:
                    material.append(
                        f"max ROI displacement {geo['max_model_px']:.3g} model px = {geo['worst_px']:.3g} camera px "
                        f"at {geo['worst_depth_m']:.3g} m > envelope.geometric.max_corner_px "
                        f"{envelope.max_corner_px:.3g} model px = {there:.3g} camera px there "
                        f"({lo:.3g}-{hi:.3g} camera px over the working range)"
                    )
            scale_limit = min(x for x in (trigger.max_scale_change, envelope.max_scale_change) if x is not None)
            src = (
                "envelope.geometric.max_scale_change"
                if scale_limit == envelope.max_scale_change
                else "trigger.max_scale_change"
            )
            check(geo["max_scale_change"], scale_limit, "scale change", "", src)
            if not material:
                env = ""
                if envelope.max_corner_px is not None:
                    env = (
                        f" against the envelope's {envelope.max_corner_px:.3g} model px = "
                        f"{envelope.max_corner_px * geo['worst_cam_px_per_model_px']:.3g} camera px there"
                    )
                rep.notes.append(
                    f"geometry moves the ROI by at most {geo['max_px']:.3g} camera px (p95 {geo['p95_px']:.3g} "
                    f"camera px; {geo['max_model_px']:.3g} model px = {geo['worst_px']:.3g} camera px at "
                    f"{geo['worst_depth_m']:.3g} m{env}), scale change {geo['max_scale_change']:.3g}"
                )
    # Radiometry.
    ro, rn = old.radiometry, new.radiometry
    n_before = len(material)
    if ro.radiometric != rn.radiometric:
        material.append(f"radiometry.mode changed {ro.mode} -> {rn.mode} (tubelet units change)")
    elif ro.bit_depth != rn.bit_depth:
        material.append(f"radiometry.bit_depth changed {ro.bit_depth} -> {rn.bit_depth}")
    elif ro.radiometric:
        rad = radiometric_figures(old, new, trigger.temp_range_c)
        rep.figures["radiometric"] = rad
        rng = f" over {trigger.temp_range_c[0]:g}..{trigger.temp_range_c[1]:g} degC"
        check(
            rad["max_temp_error_k"],
            trigger.max_temp_error_k,
            "temperature error" + rng,
            " K",
            "trigger.max_temp_error_k",
        )
        check(rad["gain_change"], envelope.max_gain_change, "gain change", "", "envelope.radiometric.max_gain_change")
        # A calibration offset shifts every pixel alike. When the gate says its
        # max_offset_k bounds only the non-uniform part (NUC drift, caught here as a
        # nuc.table_id change), a uniform offset is left to trigger.max_temp_error_k.
        if not envelope.uniform_offset_invariant:
            check(rad["offset_k"], envelope.max_offset_k, "offset", " K", "envelope.radiometric.max_offset_k")
        if len(material) == n_before:
            rep.notes.append(f"temperature error at most {rad['max_temp_error_k']:.3g} K{rng}")
    if old.nuc.table_id != new.nuc.table_id:
        material.append(f"nuc.table_id changed {old.nuc.table_id} -> {new.nuc.table_id}")
    if old.agc.mode != new.agc.mode:
        material.append(f"agc.mode changed {old.agc.mode} -> {new.agc.mode}")
    elif not rn.radiometric and old.agc != new.agc:
        # For display8 cameras the AGC shapes the very values the model sees.
        material.append("agc settings changed on a display8 camera")
    if changed:
        rep.notes.append("changed fields: " + ", ".join(changed))
    return rep


def envelope_for(cal: Calibration, envelope: Envelope, *, window_m: float, input_size: int, grid: int) -> str:
    """The envelope stated for one camera: geometric bounds in its own camera pixels, radiometric bounds."""
    parts = []
    if envelope.max_corner_px is not None:
        size = envelope.input_size or input_size
        span = camera_px_allowance(cal, envelope.max_corner_px, window_m=window_m, input_size=size, grid=grid)
        if span is None:
            parts.append(f"{envelope.max_corner_px:.3g} model px (geometry unknown: no camera-pixel equivalent)")
        else:
            g = cal.geometry
            parts.append(
                f"{envelope.max_corner_px:.3g} model px = {span[0]:.3g}-{span[1]:.3g} camera px over its "
                f"{g.min_range_m:g}-{g.max_range_m:g} m working range"
            )
    if envelope.max_scale_change is not None:
        parts.append(f"scale change {envelope.max_scale_change:.3g}")
    if cal.radiometry.radiometric:
        if envelope.max_gain_change is not None:
            parts.append(f"gain change {envelope.max_gain_change:.3g}")
        if envelope.max_offset_k is not None:
            inv = ", uniform offsets invariant" if envelope.uniform_offset_invariant else ""
            parts.append(f"offset {envelope.max_offset_k:.3g} K{inv}")
    else:
        parts.append("display8: no radiometric bound applies")
    return "; ".join(parts) if parts else "the deployed model states no envelope"


def new_camera_report(
    new: Calibration, envelope: Envelope | None = None, *, window_m: float = 0.0, input_size: int = 0, grid: int = 21
) -> ChangeReport:
    """A camera the deployed model never saw: always material (a retrain adds it, the gate then judges it)."""
    rep = ChangeReport(
        new.camera_id,
        None,
        new.version,
        material_reasons=["new camera, not in the deployed model: a retrain adds it and the gate validates it"],
    )
    if envelope is not None and window_m > 0 and input_size > 0:
        stated = envelope_for(new, envelope, window_m=window_m, input_size=input_size, grid=grid)
        rep.notes.append(f"the retrained model must hold the gate's envelope for it too (deployed: {stated})")
        rep.figures["envelope"] = stated
    return rep
