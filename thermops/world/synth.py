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

import dataclasses
import hashlib
import math
from dataclasses import dataclass

import numpy as np

from thermops.camera.calibration import Calibration
from thermops.camera.geometry import PinholeCamera
from thermops.camera.sensor import (
    SensorModel,
    SensorParams,
    agc_fixed,
    agc_gamma,
    agc_linear,
    agc_plateau,
    display_jumps,
    invert_display,
    motion_smear,
)
from thermops.parallel import map_in_processes
from thermops.world.objects import (
    Animal,
    Bird,
    Canvas,
    GlassReflection,
    HeatShimmer,
    Person,
    RainStreak,
    Reflection,
    Thing,
    Vegetation,
    Vehicle,
    person_params,
)
from thermops.world.scene import (
    Conditions,
    Layout,
    Rays,
    SceneGeometry,
    background,
    camera_rays,
    conditions,
    layout,
    scene_geometry,
)

LABELS = ("person", "vehicle", "animal", "nuisance")


SPLITS = ("train", "val", "test")
OUTPUTS = ("counts", "linear", "plateau", "gamma", "clipped")


@dataclass(frozen=True)
class DisplayParams:
    """How the 8-bit outputs vary between clips (`synth.display`); [lo, hi] ranges drawn per clip.

    Attributes:
        clip_percent: tails clipped by the linear and gamma AGC, per cent of pixels.
        plateau: plateau of the plateau equalization (fraction of pixels per histogram bin).
        gamma: display gamma after a linear AGC.
        fixed_span_k: span of the fixed ("clipped") display, kelvin-equivalent around the
            scene median: hot objects saturate white.
        inverted: share of 8-bit clips shown black-hot.
        jumps: share of 8-bit clips whose gain and level step between frames.
        jump_gain: display gain after a step.
        jump_offset: display level shift after a step, grey levels (+-).
    """

    clip_percent: list[float]
    plateau: list[float]
    gamma: list[float]
    fixed_span_k: list[float]
    inverted: float
    jumps: float
    jump_gain: list[float]
    jump_offset: float


@dataclass(frozen=True)
class SynthParams:
    """The `synth` section of params.yaml (knobs of every synthetic camera's clips).

    Attributes:
        clips: clips per camera and split. Splits are clip-disjoint: no scene, hour,
            object or sensor state is shared between train, val and test clips.
        frames: frames per clip, per split (test clips of T frames give one tubelet per track).
        stills: single-frame clips per camera and split: appearance without motion, as a
            still-image set or a snapshot gives it (a tubelet of T copies), and cheap test data.
        fps: frame rate.
        objects_per_clip: people, vehicles and animals, drawn in turn (classes stay balanced).
        nuisance_per_clip: nuisances per clip.
        near_fraction: share of objects placed nearer than the camera's working range,
            down to where they are cut by the bottom of the frame (large objects).
        static_fraction: share of people and animals standing still and of vehicles parked
            (cold engine, no exhaust).
        min_visible: smallest visible share (not hidden by structures x box inside the frame)
            at which an object is labelled in a frame.
        hours: hours of day cycled through (per-camera offset, +-15 min).
        weathers: drawn uniformly from the list (repeat to weight).
        mean_air_c: range of the day's mean air temperature.
        outputs: weight of each output per clip: `counts` (14-bit radiometric) or an 8-bit
            display (`linear`, `plateau`, `gamma`, `clipped` AGC), so one training set
            holds radiometric and display8 cameras alike.
        display: how the 8-bit outputs vary.
        defocus_px: extra lens blur per clip (Gaussian sigma, px) on top of `sensor.psf_sigma_px`.
        tau_ms: bolometer thermal time constant per clip (motion smear of moving objects).
        sensor: residual sensor imperfections.
    """

    clips: dict[str, int]
    frames: dict[str, int]
    stills: dict[str, int]
    fps: float
    objects_per_clip: int
    nuisance_per_clip: int
    near_fraction: float
    static_fraction: float
    min_visible: float
    hours: list[float]
    weathers: list[str]
    mean_air_c: list[float]
    outputs: dict[str, float]
    display: DisplayParams
    defocus_px: list[float]
    tau_ms: list[float]
    sensor: SensorParams

    def __post_init__(self) -> None:
        for name in ("clips", "frames", "stills"):
            d = getattr(self, name)
            if set(d) != set(SPLITS):
                raise ValueError(f"{name} must name exactly {list(SPLITS)}")
        if min(self.clips.values()) < 0 or min(self.stills.values()) < 0:
            raise ValueError("clips and stills must be non-negative")
        if sum(self.clips.values()) + sum(self.stills.values()) < 1:
            raise ValueError("clips and stills hold no clip at all")
        if min(self.frames.values()) < 1:
            raise ValueError("frames must be at least 1 per clip")
        if self.fps <= 0:
            raise ValueError("fps must be positive")
        if not self.hours or not self.weathers:
            raise ValueError("hours and weathers must not be empty")
        bad = [w for w in self.weathers if w not in ("clear", "overcast", "rain")]
        if bad:
            raise ValueError(f"unknown weather(s) {bad}; use clear, overcast, rain")
        unknown = sorted(set(self.outputs) - set(OUTPUTS))
        if unknown or not self.outputs or min(self.outputs.values()) < 0 or sum(self.outputs.values()) <= 0:
            raise ValueError(f"outputs: weights >= 0 (some > 0) for {list(OUTPUTS)}, got {self.outputs}")
        for name in ("near_fraction", "static_fraction", "min_visible"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")
        for name in ("mean_air_c", "defocus_px", "tau_ms"):
            lo_hi = getattr(self, name)
            if len(lo_hi) != 2 or lo_hi[0] > lo_hi[1]:
                raise ValueError(f"{name} must be [lo, hi] with lo <= hi")


def single_split(cfg: SynthParams, clips: int, frames: int, stills: int = 0, split: str = "train") -> SynthParams:
    """`cfg` with only `clips` sequences of `frames` frames (and `stills` single frames) in one split,
    e.g. unlabeled footage for pretraining: `synthesize_camera(single_split(cfg, 12, 24), cal, seed + k)`."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {SPLITS}")
    zero = dict.fromkeys(SPLITS, 0)
    return dataclasses.replace(
        cfg,
        clips={**zero, split: clips},
        frames=dict.fromkeys(SPLITS, frames),
        stills={**zero, split: stills},
    )


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


def near_ranges(camera: PinholeCamera) -> tuple[float, float]:
    """Ground ranges nearer than the working range: from where an object's lower half is below the frame's
    bottom edge (0.8 x the range the bottom edge sees) out to the working range's start."""
    bottom = camera.pixel_to_ground(np.array([[camera.cx, camera.height - 1.0]]))[0]
    r_bottom = float(camera.ground_range(bottom)[0]) if np.all(np.isfinite(bottom)) else camera.min_range_m
    lo = max(1.5, 0.8 * r_bottom)
    return lo, max(camera.min_range_m, 1.5 * lo)


def _range_limits(camera: PinholeCamera, rng: np.random.Generator, near_fraction: float) -> tuple[float, float]:
    if rng.random() < near_fraction:
        return near_ranges(camera)
    return camera.min_range_m, camera.max_range_m


def sample_object(
    label: str,
    camera: PinholeCamera,
    cond: Conditions,
    rng: np.random.Generator,
    t_mid: float,
    near_fraction: float = 0.0,
    static_fraction: float = 0.0,
) -> Thing:
    """Draw one object of class `label` (person, vehicle, animal) visible at mid-clip.

    With probability `near_fraction` it stands nearer than the working range (large,
    maybe cut by the frame); with `static_fraction` it stands still (a vehicle: parked,
    engine and exhaust cold).
    """
    # Vehicles near the mast are rarer (a road, not a footpath, passes it) and would cover the frame.
    xy, _ = _place(camera, rng, *_range_limits(camera, rng, near_fraction / (3.0 if label == "vehicle" else 1.0)))
    static = bool(rng.random() < static_fraction)
    if label == "person":
        run = (not static) and rng.random() < 0.3
        p = person_params(rng, cond)
        if static:  # standing, shifting weight a little
            p.update({"swing": float(rng.uniform(0.0, 0.08)), "cadence_hz": float(rng.uniform(0.2, 0.6))})
            speed, kind = float(rng.uniform(0.0, 0.15)), "person_standing"
        else:
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
        if static:  # parked for a while: engine, tyres and exhaust near ambient
            p.update(
                {
                    "engine_c": cond.air_c + float(rng.uniform(0.0, 15.0)),
                    "tyre_c": cond.air_c + float(rng.uniform(-0.5, 2.0)),
                    "exhaust_c": cond.air_c + float(rng.uniform(-0.5, 1.0)),
                }
            )
            return _started(
                Vehicle, label, f"parked_{kind}", camera, rng, xy, _heading(camera, rng, 0.5), 0.0, t_mid, p
            )
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
        speed = float(rng.uniform(0.0, 0.2)) if static else float(rng.uniform(0.8, vmax))
        if static:
            p["stride_hz"] = float(rng.uniform(0.05, 0.3))  # grazing, sniffing: legs barely move
        return _started(Animal, label, kind, camera, rng, xy, _heading(camera, rng, 0.6), speed, t_mid, p)
    raise ValueError(f"unknown object class {label!r}")


def sample_nuisance(
    camera: PinholeCamera, cond: Conditions, rng: np.random.Generator, t_mid: float, seed: int
) -> Thing:
    """Draw one nuisance: vegetation, a bird near the lens, reflection, heat shimmer (sunny) or rain streaks (rain)."""
    kinds = ["vegetation", "warm_vegetation", "bird", "reflection", "glass_reflection"]
    if cond.sun > 0.3:
        kinds += ["heat_shimmer", "heat_shimmer"]
    if cond.weather == "rain":
        kinds += ["rain_streak", "rain_streak"]
    kind = str(rng.choice(kinds))
    rmin, rmax = camera.min_range_m, camera.max_range_m
    if kind == "warm_vegetation":
        # A person-sized upright shrub or sapling, warmer than the ground cover: sunlit by day,
        # or a trunk that keeps the day's heat at night (a person-shaped warm blob that sways).
        xy, _ = _place(camera, rng, *_range_limits(camera, rng, 0.3), 0.9)
        n = int(rng.integers(1, 3))
        hgt = float(rng.uniform(1.2, 2.2))
        branches = [
            (float(rng.uniform(-0.15, 0.15)), hgt * float(rng.uniform(0.8, 1.0)), float(rng.uniform(0.12, 0.28)))
            for _ in range(n)
        ]
        p = {
            "branches": branches,
            "amp_m": float(rng.uniform(0.03, 0.2)),
            "freq_hz": float(rng.uniform(0.3, 1.2)),
            "offset_k": float(rng.uniform(2.0, 5.0)) + 6.0 * cond.sun,
        }
        return Vegetation("nuisance", kind, np.asarray(xy), 0.0, 0.0, float(rng.uniform(0, 6.28)), p)
    if kind == "glass_reflection":
        xy, _ = _place(camera, rng, rmin, rmin + 0.6 * (rmax - rmin), 0.8)
        yaw = math.radians(camera.yaw_deg)
        # Panels roughly face the camera (the reflection is seen), turned by up to 50 degrees.
        heading = yaw + math.pi / 2 + float(rng.uniform(-0.9, 0.9))
        metal = rng.random() < 0.3  # polished metal (a car side, a steel door) mirrors more than glass
        p = {
            "panel_xy": [float(xy[0]), float(xy[1])],
            "panel_heading": heading,
            "panel_w": float(rng.uniform(1.2, 3.0)),
            "panel_h": float(rng.uniform(1.8, 2.6)),
            "panel_z0": float(rng.uniform(0.0, 0.4)),
            # Mostly reflected cold sky plus its own emission (glass about as building windows).
            "panel_c": float(0.75 * cond.air_c + 0.25 * cond.sky_zenith_c + float(rng.uniform(-1.0, 2.0))),
            "reflectivity": float(rng.uniform(0.5, 0.85) if metal else rng.uniform(0.15, 0.45)),
            "behind_m": float(rng.uniform(0.5, 3.0)),
            "enter_m": float(rng.uniform(-1.0, 1.5)),
            "person": person_params(rng, cond),
        }
        return GlassReflection("nuisance", kind, np.asarray(xy), 0.0, float(rng.uniform(0.8, 1.6)), 0.0, p)
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
        p = {**person_params(rng, cond), "reflectivity": float(rng.uniform(0.25, 0.5))}
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


def _annotation(
    clip_id: str,
    frame: int,
    track: str,
    obj: Thing,
    ext,
    camera: PinholeCamera,
    t: float,
    unoccluded: float = 1.0,
    min_visible: float = 0.0,
):
    """The annotation row of `obj` at `t`, or None when too little of it is seen.

    Visible share = `unoccluded` (its coverage not hidden by structures) x the share of its
    box inside the frame; below `min_visible` the object is not labelled in this frame (a
    detector would not see enough of it either, and a tubelet of a leg is label noise).
    """
    lo, hi = ext
    x0, y0 = max(0.0, float(lo[0])), max(0.0, float(lo[1]))
    x1, y1 = min(float(camera.width), float(hi[0])), min(float(camera.height), float(hi[1]))
    if x1 - x0 < 1.0 or y1 - y0 < 1.0:
        return None  # outside the frame (or less than a pixel left inside)
    full = max(float(hi[0] - lo[0]) * float(hi[1] - lo[1]), 1e-9)
    if unoccluded * (x1 - x0) * (y1 - y0) / full < min_visible:
        return None
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


def _velocity_px(camera: PinholeCamera, thing: Thing, t: float, dt: float = 0.05) -> tuple[float, float]:
    """Image velocity (px/s) of a point 0.8 m above the object's foot point."""
    a, b = thing.ground_xy(t), thing.ground_xy(t + dt)
    uv, z = camera.project(np.array([[a[0], a[1], 0.8], [b[0], b[1], 0.8]]))
    if np.any(z <= 0.5):
        return 0.0, 0.0
    v = (uv[1] - uv[0]) / dt
    return float(v[0]), float(v[1])


def _draw(cv: Canvas, thing: Thing, t: float, tau_s: float):
    """Draw `thing` at `t`; a moving object leaves its bolometer trail (`sensor.motion_smear`)."""
    vel = _velocity_px(cv.camera, thing, t) if thing.speed > 0 and tau_s > 0 else (0.0, 0.0)
    if float(np.hypot(*vel)) * tau_s < 0.25:
        return thing.draw(cv, t)
    before = cv.field.copy()
    ext = thing.draw(cv, t)
    if ext is None:
        return ext
    pad = 3.0 * float(np.hypot(*vel)) * tau_s + 2
    lo, hi = ext
    u0, v0 = max(0, int(lo[0] - pad)), max(0, int(lo[1] - pad))
    u1, v1 = min(cv.camera.width, int(hi[0] + pad) + 1), min(cv.camera.height, int(hi[1] + pad) + 1)
    if u1 <= u0 or v1 <= v0:
        return ext
    delta = cv.field[v0:v1, u0:u1] - before[v0:v1, u0:u1]
    cv.field[v0:v1, u0:u1] = before[v0:v1, u0:u1] + motion_smear(delta, vel, tau_s)
    return ext


def display_output(
    kind: str, counts: np.ndarray, gain_counts_per_k: float, d: DisplayParams, rng: np.random.Generator
) -> tuple[np.ndarray, str]:
    """Float counts (T, H, W) -> 8-bit display frames through AGC `kind`, and the clip's `agc` label.

    Every knob is drawn per clip from `d`: tails clipped, plateau, gamma, the fixed
    span; black-hot with probability `d.inverted`; gain/level steps between frames
    with probability `d.jumps`.
    """
    if kind == "linear":
        out = agc_linear(counts, float(rng.uniform(*d.clip_percent)))
    elif kind == "plateau":
        out = agc_plateau(counts, float(rng.uniform(*d.plateau)))
    elif kind == "gamma":
        out = agc_gamma(counts, float(rng.uniform(*d.gamma)), float(rng.uniform(*d.clip_percent)))
    elif kind == "clipped":
        span = float(rng.uniform(*d.fixed_span_k)) * gain_counts_per_k
        mid = float(np.median(counts)) + float(rng.uniform(-0.2, 0.4)) * span
        out = agc_fixed(counts, mid - span / 2, mid + span / 2)
    else:
        raise ValueError(f"unknown display output {kind!r}")
    label = kind
    if rng.random() < d.jumps:
        out = display_jumps(out, rng, int(rng.integers(1, 3)), tuple(d.jump_gain), d.jump_offset)
    if rng.random() < d.inverted:
        out, label = invert_display(out), f"{kind}-inverted"
    return out, label


def synthesize_camera(cfg: SynthParams, cal: Calibration, seed: int) -> list[ClipResult]:
    """All clips of one camera, split by split: frames (T, H, W) uint16 counts or uint8 display8, annotations.

    Clip ids are `<camera>-<split><NNN>`; the clip's split, output units and AGC are
    in its row. Each split draws from its own random stream, so changing the number
    of test clips leaves the training clips as they were.
    """
    camera = PinholeCamera.from_calibration(cal)
    base = camera_seed(seed, cal.camera_id)
    cam_rng = np.random.default_rng([base, 0])
    lay = layout(camera, cam_rng)
    sensor = SensorModel.from_calibration(cal, cam_rng, cfg.sensor, fps=cfg.fps)
    rays = camera_rays(camera)
    geom = scene_geometry(camera, rays, lay)
    hour_offset = int(cam_rng.integers(0, len(cfg.hours)))
    kinds = sorted(cfg.outputs)
    weights = np.array([cfg.outputs[k] for k in kinds], dtype=np.float64)
    weights /= weights.sum()
    gain = float(cal.radiometry.celsius_to_counts(21.0) - cal.radiometry.celsius_to_counts(20.0))  # counts per K
    shared = _CameraWorld(cfg, cal, camera, base, lay, sensor, rays, geom, hour_offset, kinds, weights, gain)
    # Sequences first, then single frames (stills), each split and kind from its own random stream.
    plan = [(split, si, ci, False) for si, split in enumerate(SPLITS) for ci in range(cfg.clips[split])]
    plan += [(split, si, ci, True) for si, split in enumerate(SPLITS) for ci in range(cfg.stills[split])]
    # every clip draws from its own stream and reads the camera's world only: one process per core
    return map_in_processes(_render_clip, [(shared, item) for item in plan])


@dataclass(frozen=True)
class _CameraWorld:
    """What every clip of one camera shares, read-only: the camera, its layout, sensor and scene."""

    cfg: SynthParams
    cal: Calibration
    camera: PinholeCamera
    base: int
    lay: Layout
    sensor: SensorModel
    rays: Rays
    geom: SceneGeometry
    hour_offset: int
    kinds: list[str]
    weights: np.ndarray
    gain: float


def _render_clip(job: tuple[_CameraWorld, tuple[str, int, int, bool]]) -> ClipResult:
    """One clip of a camera (`synthesize_camera`'s plan item), from its own random stream."""
    w, (split, si, ci, still) = job
    cfg, cal, camera, base, lay, sensor, rays, geom = w.cfg, w.cal, w.camera, w.base, w.lay, w.sensor, w.rays, w.geom
    hour_offset, kinds, weights, gain = w.hour_offset, w.kinds, w.weights, w.gain
    n = 1 if still else cfg.frames[split]
    t_mid = 0.5 * (n - 1) / cfg.fps
    rng = np.random.default_rng([base, 1 + si + (len(SPLITS) if still else 0), ci])
    clip_id = f"{cal.camera_id}-{split}{'-still' if still else ''}{ci:03d}"
    h_index = (ci + hour_offset + 2 * si + (1 if still else 0)) % len(cfg.hours)
    hour = float(cfg.hours[h_index]) + float(rng.uniform(-0.25, 0.25))
    weather = str(rng.choice(cfg.weathers))
    cond = conditions(hour % 24.0, weather, float(rng.uniform(*cfg.mean_air_c)))
    output = str(rng.choice(kinds, p=weights))
    extra_blur = float(rng.uniform(*cfg.defocus_px))
    tau_s = float(rng.uniform(*cfg.tau_ms)) / 1000.0
    bg, depth, _ = background(camera, rays, lay, cond, geom)
    things: list[Thing] = []
    first = int(rng.integers(0, 3))
    for k in range(cfg.objects_per_clip):
        things.append(
            sample_object(LABELS[(first + k) % 3], camera, cond, rng, t_mid, cfg.near_fraction, cfg.static_fraction)
        )
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
        owner = np.full(fld.shape, -1, dtype=np.int16)
        cv = Canvas(camera, cond, fld, depth, owner=owner, reach=owner.copy())
        # Painter's order: far objects first, so near ones cover them.
        order = sorted(range(len(things)), key=lambda j: -float(camera.ground_range(things[j].ground_xy(t))[0]))
        drawn = []
        for j in order:
            before, reach = cv.drawn, cv.reachable
            cv.current = j
            ext = _draw(cv, things[j], t, tau_s)
            field_like = isinstance(things[j], (HeatShimmer, RainStreak))  # no solid outline to hide
            hidden = cv.drawn - before < 0.3 and not field_like
            if ext is None or hidden:
                continue  # behind the camera, outside the frame, or hidden behind a structure
            seen = 1.0 if field_like else (cv.drawn - before) / max(cv.reachable - reach, 1e-9)
            win = (max(0, int(ext[0][0]) - 1), max(0, int(ext[0][1]) - 1),
                   int(np.ceil(ext[1][0])) + 2, int(np.ceil(ext[1][1])) + 2)  # fmt: skip
            px = int((cv.reach[win[1] : win[3], win[0] : win[2]] == j).sum())  # its own pixels, parts united
            drawn.append((j, ext, seen, px, win, field_like))
        for j, ext, seen, px, win, field_like in drawn:
            if px >= 4 and not field_like:  # what nearer objects and structures left of it in the frame
                seen = min(seen, float((owner[win[1] : win[3], win[0] : win[2]] == j).sum()) / px)
            row = _annotation(clip_id, fi, tracks[j], things[j], ext, camera, t, seen, cfg.min_visible)
            if row is not None:
                anns.append(row)
        temps[fi] = fld
    ffc_phase = float(rng.uniform(0, sensor.ffc_interval_s))
    agc = ""
    if output == "counts":
        frames = sensor.counts(temps, rng, ffc_phase, housing_c=cond.air_c, extra_blur_px=extra_blur)
        dtype, units = "uint16", "counts"
    else:
        c = sensor.counts_float(temps, rng, ffc_phase, housing_c=cond.air_c, extra_blur_px=extra_blur)
        frames, agc = display_output(output, c, gain, cfg.display, rng)
        dtype, units = "uint8", "display8"
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
        "split": split,
        "agc": agc,
    }
    return ClipResult(row, anns, frames)
