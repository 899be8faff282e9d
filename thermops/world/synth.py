"""The embedded thermal world: clips and annotations for one camera, deterministic for a seed.

`synthesize_camera(cfg, cal, seed)` draws a camera's static layout and sensor
fixed patterns, then for each clip the conditions (hour, weather, air
temperature), the moving objects, the per-frame temperature field and the
sensor's counts. It returns rows and arrays in the raw format of
`thermops.data.raw`; `components/synthesize.py` writes them.

Seeds: a camera's seed is a stable hash of the params `seed` and its camera id
(never Python's salted `hash`), so cameras are independent: editing one camera's
calibration changes only that camera's output.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from thermops.camera.calibration import Calibration
from thermops.camera.geometry import PinholeCamera
from thermops.camera.sensor import SensorModel, SensorParams, agc_linear, agc_plateau
from thermops.world.objects import (
    Animal,
    Bird,
    Canvas,
    HeatShimmer,
    Person,
    RainStreak,
    Reflection,
    Thing,
    Vegetation,
    Vehicle,
    clothing_c,
)
from thermops.world.scene import Conditions, background, camera_rays, conditions, layout

LABELS = ("person", "vehicle", "animal", "nuisance")


@dataclass(frozen=True)
class SynthParams:
    """The `synth` section of params.yaml."""

    clips_per_camera: int
    frames_per_clip: int
    fps: float
    objects_per_clip: int  # people, vehicles and animals, drawn in turn so classes stay balanced
    nuisance_per_clip: int
    hours: list[float]
    weathers: list[str]
    agc_output: bool
    mean_air_c: list[float]  # range of the day's mean air temperature
    sensor: SensorParams

    def __post_init__(self) -> None:
        if self.clips_per_camera < 1 or self.frames_per_clip < 1:
            raise ValueError("clips_per_camera and frames_per_clip must be at least 1")
        if self.fps <= 0:
            raise ValueError("fps must be positive")
        if not self.hours or not self.weathers:
            raise ValueError("hours and weathers must not be empty")
        bad = [w for w in self.weathers if w not in ("clear", "overcast", "rain")]
        if bad:
            raise ValueError(f"unknown weather(s) {bad}; use clear, overcast, rain")


def camera_seed(seed: int, camera_id: str) -> int:
    """Stable 63-bit seed from the params seed and a camera id (sha256, not Python's hash)."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{camera_id}".encode()).digest()[:8], "big") >> 1


@dataclass
class ClipResult:
    """One synthesized clip: metadata row, annotation rows, frames."""

    row: dict
    annotations: list[dict]
    frames: np.ndarray


# -- object sampling -------------------------------------------------------------------


def _place(camera: PinholeCamera, rng: np.random.Generator, rmin: float, rmax: float, lat_frac: float = 0.85):
    """A ground point at a range drawn uniformly in [rmin, rmax], laterally inside the view."""
    r = float(rng.uniform(rmin, rmax))
    half = math.atan(camera.width / (2 * camera.fx))
    return camera.ground_point_at_range(r, float(rng.uniform(-lat_frac, lat_frac)) * r * math.tan(half)), r


def _heading(camera: PinholeCamera, rng: np.random.Generator, lateral_bias: float) -> float:
    """Heading in radians (world): lateral crossings with probability `lateral_bias`, else any direction."""
    yaw = math.radians(camera.yaw_deg)
    if rng.random() < lateral_bias:
        return yaw + float(rng.choice([-1, 1])) * math.pi / 2 + float(rng.normal(0, 0.3))
    return float(rng.uniform(0, 2 * math.pi))


def _started(cls, label, kind, camera, rng, mid_xy, heading, speed, t_mid, params) -> Thing:
    d = np.array([math.sin(heading), math.cos(heading)])
    return cls(label, kind, np.asarray(mid_xy) - speed * t_mid * d, heading, speed, float(rng.uniform(0, 6.28)), params)


def sample_object(label: str, camera: PinholeCamera, cond: Conditions, rng: np.random.Generator, t_mid: float) -> Thing:
    """Draw one object of class `label` (person, vehicle, animal) visible at mid-clip."""
    rmin, rmax = camera.min_range_m, camera.max_range_m
    xy, _ = _place(camera, rng, rmin, rmax)
    if label == "person":
        run = rng.random() < 0.3
        ins = float(rng.uniform(0, 1))
        p = {
            "height_m": float(rng.uniform(1.55, 1.95)),
            "cloth_c": clothing_c(cond, ins),
            "trousers_c": clothing_c(cond, min(1.0, ins + 0.2)),
        }
        speed = float(rng.uniform(2.8, 5.0) if run else rng.uniform(1.0, 1.7))
        kind = "person_running" if run else "person_walking"
        return _started(Person, label, kind, camera, rng, xy, _heading(camera, rng, 0.6), speed, t_mid, p)
    if label == "vehicle":
        kind = str(rng.choice(["car", "car", "van", "truck"]))
        dims = {
            "car": ((4.1, 4.9), (1.7, 1.9), (1.4, 1.6)),
            "van": ((5.0, 6.0), (1.9, 2.1), (2.1, 2.6)),
            "truck": ((7.0, 10.0), (2.4, 2.55), (3.0, 3.6)),
        }[kind]
        p = {
            "kind": kind,
            "length_m": float(rng.uniform(*dims[0])),
            "width_m": float(rng.uniform(*dims[1])),
            "height_m": float(rng.uniform(*dims[2])),
            "engine_c": float(rng.uniform(60, 100)),
            "tyre_c": cond.air_c + float(rng.uniform(8, 20)),
            "exhaust_c": float(rng.uniform(70, 110)),
        }
        speed = float(rng.uniform(3.0, 12.0) if kind == "car" else rng.uniform(2.5, 8.0))
        return _started(Vehicle, label, kind, camera, rng, xy, _heading(camera, rng, 0.75), speed, t_mid, p)
    if label == "animal":
        kind = str(rng.choice(["dog", "deer", "fox", "boar"]))
        length, shoulder, vmax = {
            "dog": (0.8, 0.55, 5.0),
            "deer": (1.5, 0.95, 4.0),
            "fox": (0.65, 0.4, 3.5),
            "boar": (1.2, 0.8, 2.5),
        }[kind]
        s = float(rng.uniform(0.85, 1.15))
        p = {
            "length_m": length * s,
            "shoulder_m": shoulder * s,
            "stride_hz": float(rng.uniform(1.5, 2.5)),
            "fur_k": float(rng.uniform(0.12, 0.3)),
        }
        return _started(
            Animal, label, kind, camera, rng, xy, _heading(camera, rng, 0.6), float(rng.uniform(0.8, vmax)), t_mid, p
        )
    raise ValueError(f"unknown object class {label!r}")


def sample_nuisance(
    camera: PinholeCamera, cond: Conditions, rng: np.random.Generator, t_mid: float, seed: int
) -> Thing:
    """Draw one nuisance: vegetation, a bird near the lens, reflection, heat shimmer (sunny) or rain streaks (rain)."""
    kinds = ["vegetation", "vegetation", "bird", "reflection"]
    if cond.sun > 0.3:
        kinds += ["heat_shimmer", "heat_shimmer"]
    if cond.weather == "rain":
        kinds += ["rain_streak", "rain_streak"]
    kind = str(rng.choice(kinds))
    rmin, rmax = camera.min_range_m, camera.max_range_m
    if kind == "vegetation":
        xy, _ = _place(camera, rng, rmin, rmax, 0.9)
        n = int(rng.integers(3, 7))
        branches = [
            (float(rng.uniform(-0.8, 0.8)), float(rng.uniform(0.8, 3.2)), float(rng.uniform(0.12, 0.35)))
            for _ in range(n)
        ]
        p = {
            "branches": branches,
            "amp_m": float(rng.uniform(0.05, 0.35)),
            "freq_hz": float(rng.uniform(0.3, 1.2)),
            "offset_k": float(rng.uniform(-1.0, 1.5)),
        }
        return Vegetation("nuisance", kind, np.asarray(xy), 0.0, 0.0, float(rng.uniform(0, 6.28)), p)
    if kind == "bird":
        # Close to the lens, flying mostly along the view so it stays in frame for a while.
        depth = float(rng.uniform(4.0, 12.0)) * max(1.0, camera.fx / 600.0)
        uv = np.array([[rng.uniform(0.2, 0.8) * camera.width, rng.uniform(0.1, 0.6) * camera.height]])
        ray = camera.pixel_rays(uv)[0]
        yaw = math.radians(camera.yaw_deg)
        fwd = ray[0] * math.sin(yaw) + ray[1] * math.cos(yaw)
        mid3 = camera.center + ray * depth / max(fwd, 1e-3)
        mid3[2] = max(mid3[2], 0.5)
        heading = yaw + float(rng.choice([0.0, math.pi])) + float(rng.normal(0, 0.35))
        speed = float(rng.uniform(2.0, 6.0))
        d = np.array([math.sin(heading), math.cos(heading), 0.0])
        climb = float(rng.uniform(-0.5, 0.5))
        start3 = mid3 - speed * t_mid * d - np.array([0, 0, climb * t_mid])
        p = {
            "start3": start3.tolist(),
            "climb": climb,
            "span_m": float(rng.uniform(0.3, 0.9)),
            "flap_hz": float(rng.uniform(3, 8)),
            "body_c": cond.air_c + float(rng.uniform(5, 12)),
            "blur_px": defocus_sigma_px(camera, depth / max(fwd, 1e-3)),
        }
        return Bird("nuisance", kind, start3[:2].copy(), heading, speed, float(rng.uniform(0, 6.28)), p)
    if kind == "reflection":
        xy, _ = _place(camera, rng, rmin, min(rmax, rmin + 0.6 * (rmax - rmin)))
        ins = float(rng.uniform(0, 1))
        p = {
            "height_m": float(rng.uniform(1.55, 1.95)),
            "cloth_c": clothing_c(cond, ins),
            "trousers_c": clothing_c(cond, min(1.0, ins + 0.2)),
            "reflectivity": float(rng.uniform(0.25, 0.5)),
        }
        return _started(
            Reflection,
            "nuisance",
            kind,
            camera,
            rng,
            xy,
            _heading(camera, rng, 0.7),
            float(rng.uniform(1.0, 1.6)),
            t_mid,
            p,
        )
    if kind == "heat_shimmer":
        xy, _ = _place(camera, rng, rmin + 0.4 * (rmax - rmin), rmax, 0.7)
        p = {
            "width_m": float(rng.uniform(0.04, 0.1)) * rmax,
            "height_m": float(rng.uniform(0.008, 0.02)) * rmax,
            "amp_k": float(rng.uniform(1.5, 3.0)) * cond.sun,
            "rise_hz": float(rng.uniform(0.5, 1.5)),
        }
        return _started(
            HeatShimmer,
            "nuisance",
            kind,
            camera,
            rng,
            xy,
            _heading(camera, rng, 1.0),
            float(rng.uniform(0.0, 0.3)),
            t_mid,
            p,
        )
    # rain_streak: an image-space curtain close to the lens.
    w = int(rng.uniform(0.06, 0.15) * camera.width)
    h = int(rng.uniform(0.2, 0.45) * camera.height)
    u0 = int(rng.uniform(0, camera.width - w))
    v0 = int(rng.uniform(0, camera.height - h))
    p = {
        "lo_px": [u0, v0],
        "hi_px": [u0 + w, v0 + h],
        "drops": int(rng.integers(8, 25)),
        "length_px": int(rng.uniform(0.1, 0.25) * h),
        "drop_c": cond.wet_bulb_c - 1.5,
        "seed": seed,
    }
    xy = camera.ground_point_at_range(1.5)
    return RainStreak("nuisance", kind, np.asarray(xy), 0.0, 0.0, 0.0, p)


def defocus_sigma_px(camera: PinholeCamera, distance_m: float, f_number: float = 1.0, pitch_m: float = 17e-6) -> float:
    """Blur (Gaussian sigma, px) of a point at `distance_m` for a lens focused at infinity.

    Blur-circle diameter on the focal plane = aperture x focal length / distance =
    (f / N) f / d; in pixels that is fx^2 pitch / (N d). Perimeter lenses are fast
    (about f/1.0) and pixels 12-17 um (THERMAL-FACTS), so only long lenses blur
    nearby birds much; sigma is taken as half the diameter.
    """
    return float(max(0.3, 0.5 * camera.fx**2 * pitch_m / (f_number * max(distance_m, 0.1))))


def rain_streaks(field: np.ndarray, cond: Conditions, rng: np.random.Generator) -> None:
    """Scatter short falling streaks over the whole frame (in place), pulling toward the wet-bulb temperature."""
    h, w = field.shape
    n = int(0.0015 * h * w)
    us = rng.integers(0, w, n)
    vs = rng.integers(0, h, n)
    length = max(3, h // 40)
    for k in range(length):
        vk = np.minimum(vs + k, h - 1)
        field[vk, us] += 0.35 * (cond.wet_bulb_c - 1.0 - field[vk, us])


# -- one camera ------------------------------------------------------------------------


def _annotation(clip_id: str, frame: int, track: str, obj: Thing, ext, camera: PinholeCamera, t: float):
    lo, hi = ext
    x0, y0 = max(0.0, float(lo[0])), max(0.0, float(lo[1]))
    x1, y1 = min(float(camera.width), float(hi[0])), min(float(camera.height), float(hi[1]))
    if x1 - x0 < 1.0 or y1 - y0 < 1.0:
        return None  # outside the frame (or less than a pixel left inside)
    g = obj.ground_xy(t)
    return {
        "clip_id": clip_id,
        "frame": frame,
        "track_id": track,
        "label": obj.label,
        "source_label": obj.source_label,
        "x0": round(x0, 2),
        "y0": round(y0, 2),
        "x1": round(x1, 2),
        "y1": round(y1, 2),
        "ground_x": round(float(g[0]), 3),
        "ground_y": round(float(g[1]), 3),
        "distance_m": round(float(camera.ground_range(g)[0]), 3),
    }


def synthesize_camera(cfg: SynthParams, cal: Calibration, seed: int) -> list[ClipResult]:
    """All clips of one camera: frames (T, H, W) uint16 counts (or uint8 display8) and annotations."""
    camera = PinholeCamera.from_calibration(cal)
    base = camera_seed(seed, cal.camera_id)
    cam_rng = np.random.default_rng([base, 0])
    lay = layout(camera, cam_rng)
    sensor = SensorModel.from_calibration(cal, cam_rng, cfg.sensor, fps=cfg.fps)
    rays = camera_rays(camera)
    hour_offset = int(cam_rng.integers(0, len(cfg.hours)))
    out = []
    n = cfg.frames_per_clip
    t_mid = 0.5 * (n - 1) / cfg.fps
    for ci in range(cfg.clips_per_camera):
        rng = np.random.default_rng([base, 1, ci])
        clip_id = f"{cal.camera_id}-{ci:03d}"
        hour = float(cfg.hours[(ci + hour_offset) % len(cfg.hours)]) + float(rng.uniform(-0.25, 0.25))
        weather = str(rng.choice(cfg.weathers))
        cond = conditions(hour % 24.0, weather, float(rng.uniform(*cfg.mean_air_c)))
        bg, depth, _ = background(camera, rays, lay, cond)
        things: list[Thing] = []
        first = int(rng.integers(0, 3))
        for k in range(cfg.objects_per_clip):
            things.append(sample_object(LABELS[(first + k) % 3], camera, cond, rng, t_mid))
        for _ in range(cfg.nuisance_per_clip):
            things.append(sample_nuisance(camera, cond, rng, t_mid, int(rng.integers(0, 2**31))))
        tracks = [f"{clip_id}-t{j:02d}" for j in range(len(things))]
        temps = np.empty((n, camera.height, camera.width), dtype=np.float32)
        anns: list[dict] = []
        for fi in range(n):
            t = fi / cfg.fps
            fld = bg.copy()
            if cond.weather == "rain":
                rain_streaks(fld, cond, rng)
            cv = Canvas(camera, cond, fld, depth)
            # Painter's order: far objects first, so near ones cover them.
            order = sorted(range(len(things)), key=lambda j: -float(camera.ground_range(things[j].ground_xy(t))[0]))
            for j in order:
                before = cv.drawn
                ext = things[j].draw(cv, t)
                if ext is None or (cv.drawn - before < 0.3 and not isinstance(things[j], (HeatShimmer, RainStreak))):
                    continue  # behind the camera, outside the frame, or hidden behind a structure
                row = _annotation(clip_id, fi, tracks[j], things[j], ext, camera, t)
                if row is not None:
                    anns.append(row)
            temps[fi] = fld
        ffc_phase = float(rng.uniform(0, sensor.ffc_interval_s))
        if cfg.agc_output:
            c = sensor.counts_float(temps, rng, ffc_phase, housing_c=cond.air_c)
            frames = (
                agc_plateau(c, cal.agc.plateau)
                if cal.agc.mode in ("plateau", "histeq")
                else agc_linear(c, cal.agc.clip_percent)
            )
            dtype, units = "uint8", "display8"
        else:
            frames = sensor.counts(temps, rng, ffc_phase, housing_c=cond.air_c)
            dtype, units = "uint16", "counts"
        row = {
            "clip_id": clip_id,
            "camera_id": cal.camera_id,
            "calibration_version": cal.version,
            "source": "synthetic",
            "n_frames": n,
            "height": camera.height,
            "width": camera.width,
            "dtype": dtype,
            "units": units,
            "fps": cfg.fps,
            "time_of_day_h": round(hour % 24.0, 3),
            "weather": weather,
            "ambient_c": round(cond.air_c, 3),
        }
        out.append(ClipResult(row, anns, frames))
    return out
