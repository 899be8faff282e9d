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

import contextlib
import datetime as dt
import fcntl
import json
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from thermops.calibration import Calibration, CalibrationError, load_calibration, load_calibrations
from thermops.geometry import PinholeCamera
from thermops.io import write_json
from thermops.registry import camera_path, find_calibration_version

log = logging.getLogger("thermops.trigger")


@dataclass(frozen=True)
class TriggerParams:
    """The `trigger:` section of params.yaml (thresholds and watcher settings)."""

    max_corner_px: float = 4.0
    p95_px: float = 2.0
    max_scale_change: float = 0.05
    max_temp_error_k: float = 0.5
    temp_range_c: tuple[float, float] = (-20.0, 60.0)
    roi_grid: int = 21
    state_file: str = ".thermops/trigger-state.json"
    poll_interval_s: float = 300.0
    mode: str = "local"
    max_attempts: int = 3

    def __post_init__(self) -> None:
        if self.mode not in ("local", "cluster"):
            raise ValueError(f"mode must be local or cluster, not {self.mode!r}")
        if not self.temp_range_c[0] < self.temp_range_c[1]:
            raise ValueError("temp_range_c must be [low, high] with low < high")


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
    def from_card(cls, card: dict[str, Any] | None) -> "Envelope":
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

    def summary(self) -> str:
        """One line: the verdict and why."""
        head = f"{self.camera_id} {self.old_version} -> {self.new_version}"
        if self.material:
            return f"{head}: MATERIAL ({'; '.join(self.material_reasons)})"
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


def geometric_figures(old: Calibration, new: Calibration, *, window_m: float, input_size: int,
                      grid: int = 21) -> dict[str, Any]:  # fmt: skip
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
    inside = (z_old > 0) & (uv_old[:, 0] >= 0) & (uv_old[:, 0] <= cam_old.width - 1) \
        & (uv_old[:, 1] >= 0) & (uv_old[:, 1] <= cam_old.height - 1)  # fmt: skip
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
    return {
        "roi_points": int(inside.sum()),
        "max_px": float(disp.max()),
        "p95_px": float(np.percentile(disp, 95)) if np.isfinite(disp).all() else math.inf,
        "max_model_px": float(disp_model.max()),
        "p95_model_px": float(np.percentile(disp_model, 95)) if np.isfinite(disp_model).all() else math.inf,
        "max_scale_change": float(scale.max()),
        "cam_px_per_model_px_min": float(cam_px_per_model_px.min()),
        "cam_px_per_model_px_max": float(cam_px_per_model_px.max()),
        "range_m": [float(cam_old.min_range_m), float(cam_old.max_range_m)],
    }


def radiometric_figures(old: Calibration, new: Calibration, temp_range_c: tuple[float, float],
                        n: int = 161) -> dict[str, Any]:  # fmt: skip
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


def compare(old: Calibration, new: Calibration, *, trigger: TriggerParams, envelope: Envelope,
            window_m: float, input_size: int) -> ChangeReport:  # fmt: skip
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
            check(geo["max_px"], trigger.max_corner_px, "max ROI displacement", " px", "trigger.max_corner_px")
            check(geo["p95_px"], trigger.p95_px, "p95 ROI displacement", " px", "trigger.p95_px")
            if envelope.max_corner_px is not None:
                lo = envelope.max_corner_px * geo["cam_px_per_model_px_min"]
                hi = envelope.max_corner_px * geo["cam_px_per_model_px_max"]
                if not geo["max_model_px"] <= envelope.max_corner_px:
                    material.append(
                        f"max ROI displacement {geo['max_model_px']:.3g} model px > envelope.geometric.max_corner_px "
                        f"{envelope.max_corner_px:.3g} model px ({lo:.3g}-{hi:.3g} camera px over the working range)"
                    )
            scale_limit = min(x for x in (trigger.max_scale_change, envelope.max_scale_change) if x is not None)
            src = "envelope.geometric.max_scale_change" if scale_limit == envelope.max_scale_change \
                else "trigger.max_scale_change"  # fmt: skip
            check(geo["max_scale_change"], scale_limit, "scale change", "", src)
            if not material:
                rep.notes.append(
                    f"geometry moves the ROI by at most {geo['max_px']:.3g} px (p95 {geo['p95_px']:.3g} px, "
                    f"{geo['max_model_px']:.3g} model px), scale change {geo['max_scale_change']:.3g}"
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
        check(rad["max_temp_error_k"], trigger.max_temp_error_k, "temperature error" + rng, " K",
              "trigger.max_temp_error_k")  # fmt: skip
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


def new_camera_report(new: Calibration) -> ChangeReport:
    """A camera the deployed model never saw: always material."""
    return ChangeReport(new.camera_id, None, new.version,
                        material_reasons=["camera not in the deployed model's calibrations"])  # fmt: skip


# -- the deployed model's lineage ------------------------------------------------------


@dataclass(frozen=True)
class Deployed:
    """What the deployed model was trained and gated on."""

    calibrations: dict[str, str]
    envelope: Envelope
    source: str
    snapshot_dir: Path | None = None  # calibration files copied into the bento model entry


def _bento_model_path(bento_json: Path) -> tuple[Path | None, dict[str, Any]]:
    """(model entry folder, metadata) of the packaged model named in models/bento.json."""
    info = json.loads(bento_json.read_text())
    tag = info.get("model_tag") if isinstance(info, dict) else None
    if not tag:
        return None, {}
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    try:
        import bentoml

        model = bentoml.models.get(tag)
    except Exception as err:  # noqa: BLE001 - a missing store entry just means no snapshot
        log.debug("bento model %s not readable: %s", tag, err)
        return None, {}
    return Path(model.path), dict(model.info.metadata or {})


def load_deployed(card_path: str | Path, bento_json: str | Path | None = None) -> Deployed | None:
    """The deployed model's calibrations and envelope: the gated card, else the bento metadata."""
    card_path = Path(card_path)
    bento_json = Path(bento_json) if bento_json else None
    if card_path.is_file():
        try:
            card = json.loads(card_path.read_text())
        except json.JSONDecodeError as err:
            raise CalibrationError(f"{card_path}: model card is not valid JSON: {err}") from None
        cals = card.get("calibrations") if isinstance(card, dict) else None
        if not isinstance(cals, dict):
            raise CalibrationError(f"{card_path}: model card has no `calibrations` map")
        snap = None
        if bento_json is not None and bento_json.is_file():
            path, meta = _bento_model_path(bento_json)
            if path is not None and meta.get("calibrations") == cals:
                snap = path / "calibration"
        return Deployed({str(k): str(v) for k, v in cals.items()}, Envelope.from_card(card), str(card_path), snap)
    if bento_json is not None and bento_json.is_file():
        path, meta = _bento_model_path(bento_json)
        if path is not None and isinstance(meta.get("calibrations"), dict):
            card_like = {"envelope": meta.get("envelope") or {}, "input": meta.get("input") or {}}
            cals = {str(k): str(v) for k, v in meta["calibrations"].items()}
            return Deployed(cals, Envelope.from_card(card_like), f"bento model {path.name}", path / "calibration")
    return None


def deployed_calibration(directory: str | Path, camera_id: str, version: str, deployed: Deployed) -> Calibration | None:
    """The content of the calibration the model was trained on: git history, else the bento snapshot."""
    cal = find_calibration_version(directory, camera_id, version)
    if cal is not None:
        return cal
    if deployed.snapshot_dir is not None:
        snap = deployed.snapshot_dir / f"{camera_id}.yaml"
        if snap.is_file():
            cal = load_calibration(snap)
            if cal.version == version:
                return cal
    return None


# -- the watcher's state ---------------------------------------------------------------

STATE_FORMAT = "thermops-trigger-state/1"


class TriggerState:
    """Handled (camera, version) pairs, persisted atomically as JSON."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.handled: dict[str, dict[str, dict[str, Any]]] = {}
        self.failed: dict[str, dict[str, dict[str, Any]]] = {}
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
            except json.JSONDecodeError as err:
                raise CalibrationError(f"{self.path}: trigger state is not valid JSON: {err}") from None
            if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
                raise CalibrationError(f"{self.path}: not a {STATE_FORMAT} file")
            self.handled = data.get("handled", {})
            self.failed = data.get("failed", {})

    def get(self, camera_id: str, version: str) -> dict[str, Any] | None:
        """The record of a handled (camera, version), or None."""
        return self.handled.get(camera_id, {}).get(version)

    def record(self, report: ChangeReport, fingerprint: str, action: str) -> None:
        """Mark (camera, version) handled; call `save` to persist."""
        self.handled.setdefault(report.camera_id, {})[report.new_version] = {
            "fingerprint": fingerprint,
            "material": report.material,
            "action": action,
            "deployed_version": report.old_version,
            "summary": report.summary(),
            "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        self.failed.get(report.camera_id, {}).pop(report.new_version, None)

    def attempts(self, camera_id: str, version: str) -> int:
        """Failed retrain attempts for (camera, version)."""
        return int(self.failed.get(camera_id, {}).get(version, {}).get("attempts", 0))

    def record_failure(self, report: ChangeReport, error: str) -> None:
        """Count a failed retrain of (camera, version); it is retried up to `trigger.max_attempts`."""
        self.failed.setdefault(report.camera_id, {})[report.new_version] = {
            "attempts": self.attempts(report.camera_id, report.new_version) + 1,
            "last_error": error,
            "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }

    def save(self) -> None:
        """Write atomically; the folder ignores itself in git (runtime state, not source)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        ignore = self.path.parent / ".gitignore"
        if self.path.parent.name.startswith(".") and not ignore.exists():
            ignore.write_text("*\n")
        failed = {cam: v for cam, v in self.failed.items() if v}
        write_json(self.path, {"format": STATE_FORMAT, "handled": self.handled, "failed": failed})

    @contextlib.contextmanager
    def locked(self) -> Iterator["TriggerState"]:
        """Hold an exclusive lock so two watchers never handle the same change at once."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield TriggerState(self.path)  # re-read under the lock
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


# -- one pass of the watcher -----------------------------------------------------------


@dataclass
class Scan:
    """Result of comparing every camera with the deployed model."""

    reports: list[ChangeReport] = field(default_factory=list)
    fingerprints: dict[str, str] = field(default_factory=dict)
    unchanged: list[str] = field(default_factory=list)
    already_handled: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)  # not deployed and not in the pipeline's sources
    gave_up: list[str] = field(default_factory=list)  # retrain failed trigger.max_attempts times

    @property
    def material(self) -> list[ChangeReport]:
        return [r for r in self.reports if r.material]


def cameras_in_use(params: dict[str, Any]) -> set[str] | None:
    """Cameras the pipeline trains on: `synth.cameras` (if `synthetic` is a data source) and the
    cameras of the imported sources named in `data.sources`; None when params do not say."""
    try:
        sources = list(params["data"]["sources"])
        used: set[str] = set(params["synth"]["cameras"]) if "synthetic" in sources else set()
        for name in sources:
            if name == "synthetic":
                continue
            cfg = params["ingest"]["sources"][name]
            used.update([cfg["camera_id"]] if cfg.get("camera_id") else [])
            used.update(cfg.get("cameras") or [])
        return used
    except (KeyError, TypeError):
        return None


def scan(calibration_dir: str | Path, deployed: Deployed, state: TriggerState, *, trigger: TriggerParams,
         window_m: float, input_size: int, in_use: set[str] | None = None) -> Scan:  # fmt: skip
    """Compare each camera's current calibration with the deployed one; skip handled versions.

    A camera the deployed model never saw is material if the pipeline would train on
    it (`in_use`; None: every camera), else only listed as unused. Raises
    CalibrationError (and nothing is triggered) if any calibration file is
    malformed, or if a file changed without a new version.
    """
    current = load_calibrations(calibration_dir)  # one malformed file stops the whole scan
    out = Scan()
    for camera_id, cal in current.items():
        fp = cal.fingerprint()
        done = state.get(camera_id, cal.version)
        if done is not None:
            if done.get("fingerprint") != fp:
                raise CalibrationError(
                    f"{camera_path(calibration_dir, camera_id)}: content changed but version {cal.version!r} was "
                    "already handled; record a new calibration (python -m pipeline.calibration record) "
                    "instead of editing in place"
                )
            out.already_handled.append(camera_id)
            continue
        if state.attempts(camera_id, cal.version) >= trigger.max_attempts:
            out.gave_up.append(camera_id)
            continue
        version = deployed.calibrations.get(camera_id)
        if version is None and in_use is not None and camera_id not in in_use:
            out.unused.append(camera_id)
            continue
        if version is None:
            rep = new_camera_report(cal)
        else:
            old = deployed_calibration(calibration_dir, camera_id, version, deployed)
            if old is None:
                if version == cal.version:
                    out.unchanged.append(camera_id)
                    continue
                # No way to bound the change: retraining is the safe side.
                why = f"the deployed calibration {version!r} is neither in git history nor in the bento snapshot"
                rep = ChangeReport(camera_id, version, cal.version, material_reasons=[why])
            elif old.fingerprint() == fp:
                out.unchanged.append(camera_id)
                continue
            elif version == cal.version:
                raise CalibrationError(
                    f"{camera_path(calibration_dir, camera_id)}: content differs from the deployed calibration but "
                    f"keeps its version {version!r}; record a new calibration (python -m pipeline.calibration record)"
                )
            else:
                rep = compare(old, cal, trigger=trigger, envelope=deployed.envelope, window_m=window_m,
                              input_size=input_size)  # fmt: skip
        out.reports.append(rep)
        out.fingerprints[camera_id] = fp
    return out
