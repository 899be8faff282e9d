"""Moving objects of the embedded world, built from 3D parts and projected through the camera.

Every object is a set of 3D primitives (capsules for heads, limbs, torsos, legs,
wings and branches; boxes for vehicle bodies) placed around a foot point on the
ground. Drawing projects them through the camera's pinhole model, so apparent
size follows the distance and the foreshortening of the mount, and objects
leaving the frame are clipped. Each primitive has its own temperature: clothed
bodies near ambient with warm face and hands, hot engines and exhausts, warm
wheels, fur near ambient with warm head and legs (figures from
../shared/THERMAL-FACTS.md, "The scene").

Label set (the `classes` in params): person, vehicle, animal, nuisance. The
specific kind is kept as `source_label` (e.g. `person_running`, `truck`, `deer`,
`bird`, `heat_shimmer`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from thermops.camera.geometry import PinholeCamera
from thermops.world.scene import Conditions

SKIN_C = 33.0  # exposed skin 30-35 degC (THERMAL-FACTS)
BODY_C = 37.0


@dataclass(frozen=True)
class Capsule:
    """A segment p0-p1 (world metres) swept by a sphere of `radius`, at `temp_c`."""

    p0: tuple[float, float, float]
    p1: tuple[float, float, float]
    radius: float
    temp_c: float


@dataclass(frozen=True)
class Box:
    """A box given by its 8 world corners (8, 3), at `temp_c`."""

    corners: np.ndarray
    temp_c: float


@dataclass
class Canvas:
    """What objects draw into: the frame's apparent temperatures and the structures' depth."""

    camera: PinholeCamera
    cond: Conditions
    field: np.ndarray  # (H, W) degC, modified in place
    depth: np.ndarray  # (H, W) ray distance to structures (inf where none)
    supersample: int = 4
    drawn: float = 0.0  # total pixel coverage composited so far (to detect fully hidden objects)
    reachable: float = 0.0  # the same before structures hide any of it (drawn / reachable = unoccluded share)
    # Who is seen where: the id of the object last painted over each pixel (-1: none). The caller sets
    # `current` before drawing each object; a pixel belongs to it when it covers more than half of it.
    owner: np.ndarray | None = None
    current: int = -1
    reach: np.ndarray | None = None  # the same without structures in front (what the object would own)


def _window(camera: PinholeCamera, lo: np.ndarray, hi: np.ndarray) -> tuple[int, int, int, int] | None:
    u0, v0 = max(0, int(math.floor(lo[0]))), max(0, int(math.floor(lo[1])))
    u1, v1 = min(camera.width, int(math.ceil(hi[0])) + 1), min(camera.height, int(math.ceil(hi[1])) + 1)
    if u1 <= u0 or v1 <= v0:
        return None
    return u0, v0, u1, v1


def _subgrid(win: tuple[int, int, int, int], s: int) -> tuple[np.ndarray, np.ndarray]:
    u0, v0, u1, v1 = win
    off = (np.arange(s) + 0.5) / s - 0.5
    us = (np.arange(u0, u1)[:, None] + off[None, :]).ravel()
    vs = (np.arange(v0, v1)[:, None] + off[None, :]).ravel()
    return np.meshgrid(us, vs)  # (Hs, Ws) each, pixel centres at integers


def _samples(win: tuple[int, int, int, int], s_max: int) -> int:
    """Supersampling per pixel axis for a window: full for small objects (their edges are most of
    them), less for large ones, whose anti-aliased edge is a small share of their pixels."""
    u0, v0, u1, v1 = win
    area = (u1 - u0) * (v1 - v0)
    return s_max if area <= 900 else max(1, min(s_max, 2 if area <= 6400 else 1))


def _reduce(cov_sub: np.ndarray, win: tuple[int, int, int, int], s: int) -> np.ndarray:
    """Supersampled coverage -> pixel coverage of the window."""
    u0, v0, u1, v1 = win
    return cov_sub.reshape(v1 - v0, s, u1 - u0, s).mean(axis=(1, 3)) if s > 1 else cov_sub


def _composite(cv: Canvas, win, cov: np.ndarray, temp: float, dist: float) -> None:
    """Blend `temp` into the window by pixel coverage `cov`, behind structures nearer than `dist`."""
    u0, v0, u1, v1 = win
    cv.reachable += float(cov.sum())
    if cv.reach is not None:
        cv.reach[v0:v1, u0:u1][cov > 0.5] = cv.current
    cov = cov * (dist < cv.depth[v0:v1, u0:u1])  # structures in front hide the object
    cv.drawn += float(cov.sum())
    f = cv.field[v0:v1, u0:u1]
    f += cov * (temp - f)
    if cv.owner is not None:
        cv.owner[v0:v1, u0:u1][cov > 0.5] = cv.current


def _dist_to_camera(camera: PinholeCamera, p: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(p, dtype=np.float64) - camera.center))


def draw_capsule(
    cv: Canvas, cap: Capsule, alpha: float = 1.0, projected: tuple[np.ndarray, np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray] | None:
    """Rasterize one capsule with anti-aliased coverage; returns its pixel extent (lo, hi) or None.

    `projected`: its two end points' (pixels (2, 2), depths (2,)) when the caller projected
    many parts at once (`Thing.draw`); otherwise they are projected here.
    """
    cam = cv.camera
    pts = np.array([cap.p0, cap.p1], dtype=np.float64)
    uv, z = cam.project(pts) if projected is None else projected
    if np.any(z <= 0.5):
        return None
    zm = float(z.mean())
    r = max(0.5 * (cam.fx + cam.fy) * cap.radius / zm, 1e-3)
    lo, hi = uv.min(axis=0) - r, uv.max(axis=0) + r
    win = _window(cam, lo - 1, hi + 1)
    if win is None:
        return lo, hi  # out of the frame: extent still reported, clipped by the caller
    s = _samples(win, cv.supersample)
    uu, vv = _subgrid(win, s)
    a, b = uv[0], uv[1]
    ab = b - a
    denom = float(ab @ ab)
    if denom < 1e-12:
        d2 = (uu - a[0]) ** 2 + (vv - a[1]) ** 2
    else:
        t = np.clip(((uu - a[0]) * ab[0] + (vv - a[1]) * ab[1]) / denom, 0, 1)
        d2 = (uu - a[0] - t * ab[0]) ** 2 + (vv - a[1] - t * ab[1]) ** 2
    cov = (d2 <= r * r).astype(np.float64) * alpha
    mid = 0.5 * (pts[0] + pts[1])
    dist = _dist_to_camera(cam, mid)
    _composite(cv, win, _reduce(cov, win, s), cv.cond.atmosphere(cap.temp_c, dist), dist)
    return lo, hi


def _hull(points: np.ndarray) -> np.ndarray:
    """Convex hull (counter-clockwise) of 2D points, monotone chain."""
    pts = sorted(map(tuple, points))
    if len(pts) <= 2:
        return np.array(pts)

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower, upper = [], []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return np.array(lower[:-1] + upper[:-1])


def box_coverage(camera: PinholeCamera, corners: np.ndarray, supersample: int = 4):
    """Anti-aliased pixel coverage of a box's silhouette (convex hull of its projected corners).

    Returns (extent (lo, hi), window (u0, v0, u1, v1) or None, pixel coverage of the window
    or None), or None when a corner is behind the camera.
    """
    uv, z = camera.project(corners)
    if np.any(z <= 0.5):
        return None
    lo, hi = uv.min(axis=0), uv.max(axis=0)
    win = _window(camera, lo - 1, hi + 1)
    hull = _hull(uv)
    if win is None or len(hull) < 3:
        return (lo, hi), None, None
    ss = _samples(win, supersample)
    uu, vv = _subgrid(win, ss)
    inside = np.ones(uu.shape, dtype=bool)
    n = len(hull)
    for i in range(n):
        a, b = hull[i], hull[(i + 1) % n]
        inside &= (b[0] - a[0]) * (vv - a[1]) - (b[1] - a[1]) * (uu - a[0]) >= 0
    return (lo, hi), win, _reduce(inside.astype(np.float64), win, ss)


def draw_box(cv: Canvas, box: Box, alpha: float = 1.0) -> tuple[np.ndarray, np.ndarray] | None:
    """Rasterize the silhouette (convex hull of the projected corners) of a box."""
    got = box_coverage(cv.camera, box.corners, cv.supersample)
    if got is None:
        return None
    ext, win, cov = got
    if win is None:
        return ext
    dist = _dist_to_camera(cv.camera, box.corners.mean(axis=0))
    _composite(cv, win, cov * alpha, cv.cond.atmosphere(box.temp_c, dist), dist)
    return ext


def box_corners(center: np.ndarray, heading: float, length: float, width: float, z0: float, z1: float) -> np.ndarray:
    """(8, 3) corners of a box of `length` along `heading` (rad, from world +Y toward +X)."""
    f = np.array([math.sin(heading), math.cos(heading)])
    r = np.array([math.cos(heading), -math.sin(heading)])
    out = []
    for a in (-0.5, 0.5):
        for b in (-0.5, 0.5):
            xy = center[:2] + a * length * f + b * width * r
            for z in (z0, z1):
                out.append([xy[0], xy[1], z])
    return np.array(out)


# -- objects -------------------------------------------------------------------------


@dataclass
class Thing:
    """A moving object: a foot point moving in a straight line at constant speed plus articulated parts."""

    label: str
    source_label: str
    start_xy: np.ndarray  # world ground point at t = 0
    heading: float  # radians, from world +Y toward +X
    speed: float  # m/s
    phase: float = 0.0
    params: dict = field(default_factory=dict)

    def ground_xy(self, t: float) -> np.ndarray:
        """Foot point (world X, Y) at time `t` seconds."""
        d = np.array([math.sin(self.heading), math.cos(self.heading)])
        return self.start_xy + self.speed * t * d

    def _frame(self, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        g = self.ground_xy(t)
        f = np.array([math.sin(self.heading), math.cos(self.heading), 0.0])
        r = np.array([math.cos(self.heading), -math.sin(self.heading), 0.0])
        return np.array([g[0], g[1], 0.0]), f, r

    def parts(self, t: float, cond: Conditions) -> list:
        raise NotImplementedError

    def draw(self, cv: Canvas, t: float) -> tuple[np.ndarray, np.ndarray] | None:
        """Draw at time `t`; returns the unclipped pixel extent (lo, hi) or None if behind the camera."""
        lo, hi = np.array([np.inf, np.inf]), np.array([-np.inf, -np.inf])
        any_part = False
        parts = self.parts(t, cv.cond)
        caps = [p for p in parts if isinstance(p, Capsule)]
        if caps:  # one projection for every capsule end point (the per-call cost dominates small objects)
            uv, z = cv.camera.project(np.array([q for c in caps for q in (c.p0, c.p1)], dtype=np.float64))
            ends = {id(c): (uv[2 * i : 2 * i + 2], z[2 * i : 2 * i + 2]) for i, c in enumerate(caps)}
        for p in parts:
            ext = draw_capsule(cv, p, projected=ends[id(p)]) if isinstance(p, Capsule) else draw_box(cv, p)
            if ext is not None:
                any_part = True
                lo, hi = np.minimum(lo, ext[0]), np.maximum(hi, ext[1])
        return (lo, hi) if any_part else None


def clothing_c(cond: Conditions, insulation: float) -> float:
    """Apparent temperature of clothing: between ambient and skin, warmed by the sun.

    A clothed body's apparent temperature is well below skin and follows ambient
    (THERMAL-FACTS); `insulation` 0..1 (1 = thick coat, close to ambient).
    """
    k = 0.55 - 0.35 * insulation
    return float(cond.wet(cond.air_c + k * (SKIN_C - cond.air_c) + 6.0 * cond.sun))


def skin_c(cond: Conditions) -> float:
    """Exposed skin: 30-35 degC, cooler in cold air (THERMAL-FACTS)."""
    return float(np.clip(SKIN_C - 0.15 * (20.0 - cond.air_c), 28.0, 35.0))


class Person(Thing):
    """A walking, running or standing person: head, torso, two arms, two legs with a swinging gait.

    Optional `params` vary the figure so that no single silhouette or temperature pattern
    defines "person": `build` (width factor), `sleeves` (0 short: warm forearms, 1 long),
    `hood` (a cool cap over the head), `backpack`, `bag` (carried at one hand),
    `patches` (per-part temperature offsets, K: folds, layers, wet patches).
    """

    def parts(self, t: float, cond: Conditions) -> list:
        pp = self.params
        h = pp["height_m"]
        run = self.source_label == "person_running"
        cadence = pp.get("cadence_hz", 2.8 if run else 1.8)  # steps per second
        swing = pp.get("swing", 0.55 if run else 0.35)  # leg angle amplitude (rad)
        ang = swing * math.sin(math.pi * cadence * t + self.phase)
        base, f, r = self._frame(t)
        build = pp.get("build", 1.0)
        patches = pp.get("patches", [0.0] * 8)
        lean = (0.12 if run else 0.03) * h * f
        hip = base + np.array([0, 0, 0.52 * h])
        neck = base + np.array([0, 0, 0.82 * h]) + lean
        # Head about 0.13 h tall and 0.09 h wide: a short vertical capsule, not a ball.
        head_r = 0.045 * h
        head = base + np.array([0, 0, h - 0.065 * h]) + lean
        cloth = pp["cloth_c"]
        trousers = pp["trousers_c"]
        skin = skin_c(cond)
        leg_r = 0.055 * h * (1.1 if not run else 1.0) * build
        sh_w = 0.13 * h * build
        z = np.array([0, 0, 1.0])
        parts = []
        for k, (side, sgn) in enumerate(((-1, 1), (1, -1))):
            a = sgn * ang
            hip_s = hip + side * 0.05 * h * build * r
            foot = hip_s + 0.52 * h * (math.sin(a) * f - math.cos(a) * z)
            foot[2] = max(foot[2], leg_r)
            parts.append(Capsule(tuple(hip_s), tuple(foot), leg_r, trousers + patches[k]))
        torso_r = 0.11 * h * build
        torso = Capsule(tuple(hip + 0.06 * h * z), tuple(neck - 0.04 * h * z), torso_r, cloth + patches[2])
        if pp.get("backpack"):  # behind the torso: near ambient, it insulates the back
            back = hip + 0.2 * h * z - 0.09 * h * f + lean
            parts.append(Box(box_corners(back - 0.05 * h * f, self.heading, 0.12 * h, 0.17 * h, back[2], back[2] + 0.26 * h),
                             cond.wet(cond.air_c + 2.0 * cond.sun + patches[3])))  # fmt: skip
        parts.append(torso)
        forearm_c = skin - 1.0 if pp.get("sleeves", 1) == 0 else cloth + patches[4]
        for k, (side, sgn) in enumerate(((-1, -1), (1, 1))):
            a = sgn * ang * (1.2 if run else 0.8)
            sh = neck + side * sh_w * r - 0.02 * h * z
            elbow = sh + 0.18 * h * (math.sin(a) * f - math.cos(a) * z)
            hand = sh + 0.36 * h * (math.sin(a) * f - math.cos(a) * z)
            parts.append(Capsule(tuple(sh), tuple(elbow), 0.032 * h * build, cloth + patches[5 + k]))
            parts.append(Capsule(tuple(elbow), tuple(hand), 0.027 * h * build, forearm_c))
            parts.append(Capsule(tuple(hand), tuple(hand), 0.025 * h, 0.5 * (skin + cloth)))  # hand
            if pp.get("bag") and side == pp["bag"]:  # a bag hanging from this hand
                parts.append(Box(box_corners(hand - 0.1 * h * z, self.heading, 0.2 * h, 0.06 * h, hand[2] - 0.22 * h,
                                             hand[2] - 0.02 * h), cond.wet(cond.air_c + 1.0 * cond.sun)))  # fmt: skip
        up = np.array([0, 0, 0.02 * h])
        parts.append(Capsule(tuple(head - up), tuple(head + up), head_r, skin))
        if pp.get("hood"):  # a hood or cap: the crown and back of the head read as cloth
            parts.append(Capsule(tuple(head + 0.3 * up - 0.01 * h * f), tuple(head + 1.2 * up - 0.01 * h * f),
                                 head_r * 1.05, cloth + patches[7]))  # fmt: skip
        return parts


def person_params(rng: np.random.Generator, cond: Conditions) -> dict:
    """Draw one person's figure and clothing (height, build, insulation, sleeves, hood, bags, patches)."""
    ins = float(rng.uniform(0, 1))
    warm = cond.air_c > 18.0
    return {
        "height_m": float(rng.uniform(1.55, 1.95)),
        "build": float(rng.uniform(0.85, 1.25)),
        "cloth_c": clothing_c(cond, ins),
        "trousers_c": clothing_c(cond, min(1.0, ins + float(rng.uniform(-0.1, 0.4)))),
        "sleeves": int(rng.random() < (0.3 if warm else 0.9)),
        "hood": bool(rng.random() < (0.15 if warm else 0.4)),
        "backpack": bool(rng.random() < 0.25),
        "bag": int(rng.choice([0, 0, 0, -1, 1])),
        "patches": [float(v) for v in rng.normal(0.0, 0.8, 8)],
    }


class Vehicle(Thing):
    """A car, van or truck: body box, cabin with sky-reflecting glass, warm wheels, hot engine and exhaust."""

    def parts(self, t: float, cond: Conditions) -> list:
        p = self.params
        base, f, r = self._frame(t)
        length, width, height = p["length_m"], p["width_m"], p["height_m"]
        # Body panels: a little engine heat conducted through, plus sun loading on paint.
        body_c = cond.wet(cond.air_c + 0.075 * (p["engine_c"] - cond.air_c) + 10.0 * cond.sun)
        # Painted metal (emissivity ~0.9) reflects a little sky; glass reflects more (THERMAL-FACTS).
        glass_c = 0.8 * cond.air_c + 0.2 * cond.sky_zenith_c + 3.0 * cond.sun
        parts: list = [Box(box_corners(base, self.heading, length, width, 0.3, 0.55 * height), body_c)]
        front = 1.0 if p["kind"] != "truck" else 1.2
        cabin_len = 0.45 * length if p["kind"] == "car" else 0.3 * length
        if p["kind"] == "car":
            cabin_ctr = base - 0.05 * length * f
        else:  # cab-over: the cabin sits right behind the engine
            cabin_ctr = base + (0.5 * length - front - cabin_len / 2 - 0.2) * f
        parts.append(Box(box_corners(cabin_ctr, self.heading, cabin_len, 0.92 * width, 0.55 * height, height), glass_c))
        if p["kind"] != "car":  # cargo box behind the cabin
            cargo = base - (0.5 * length - (length - cabin_len - front) / 2) * f + 0.0 * r
            parts.append(
                Box(
                    box_corners(cargo, self.heading, length - cabin_len - front - 0.3, width, 0.5, height),
                    cond.wet(cond.air_c + 8.0 * cond.sun),
                )
            )
        # Engine compartment: 60-100+ degC inside after driving, the hood and grille show part of it.
        hood = base + (0.5 * length - front / 2) * f
        parts.append(
            Box(
                box_corners(hood, self.heading, front * 0.9, 0.8 * width, 0.35, 0.55 * height + 0.02),
                cond.air_c + 0.45 * (p["engine_c"] - cond.air_c),
            )
        )
        wheel_r = 0.33 if p["kind"] == "car" else 0.45
        for a in (-0.35, 0.35):
            for b in (-0.5, 0.5):
                c = base + a * length * f + b * width * r + np.array([0, 0, wheel_r])
                parts.append(Capsule(tuple(c - 0.1 * r), tuple(c + 0.1 * r), wheel_r, p["tyre_c"]))
        ex = base - 0.5 * length * f + 0.3 * width * r + np.array([0, 0, 0.3])
        parts.append(Capsule(tuple(ex), tuple(ex - 0.15 * f), 0.06, p["exhaust_c"]))
        # Exhaust plume: warm gas, mostly transparent, behind the vehicle.
        parts.append(
            Capsule(
                tuple(ex - 0.2 * f),
                tuple(ex - 1.2 * f + np.array([0, 0, 0.2])),
                0.18,
                cond.air_c + 0.25 * (p["exhaust_c"] - cond.air_c),
            )
        )
        return parts


class Animal(Thing):
    """A quadruped: horizontal body, neck and head, four swinging legs, tail; fur near ambient."""

    def parts(self, t: float, cond: Conditions) -> list:
        p = self.params
        base, f, r = self._frame(t)
        L, H = p["length_m"], p["shoulder_m"]
        ang = 0.4 * math.sin(2 * math.pi * p["stride_hz"] * t + self.phase)
        fur = cond.wet(cond.air_c + p["fur_k"] * (BODY_C - cond.air_c) + 4.0 * cond.sun)
        warm = cond.air_c + 0.6 * (BODY_C - cond.air_c)  # eyes, nose, legs, belly run warmer
        body_r = 0.22 * H
        back = base - 0.4 * L * f + np.array([0, 0, H - body_r])
        chest = base + 0.4 * L * f + np.array([0, 0, H - body_r])
        parts: list = []
        for end, sgn in ((back, 1), (chest, -1)):
            for side in (-1, 1):
                hip = end + side * 0.4 * body_r * r
                a = sgn * side * ang
                foot = hip + (H - body_r) * (math.sin(a) * f - math.cos(a) * np.array([0, 0, 1.0]))
                foot[2] = max(foot[2], 0.04 * H)
                parts.append(Capsule(tuple(hip), tuple(foot), 0.06 * H, 0.5 * (fur + warm)))
        parts.append(Capsule(tuple(back), tuple(chest), body_r, fur))
        head = chest + 0.25 * L * f + np.array([0, 0, 0.35 * H])
        parts.append(Capsule(tuple(chest), tuple(head), 0.1 * H, fur))
        parts.append(Capsule(tuple(head), tuple(head + 0.12 * L * f), 0.09 * H, warm))
        parts.append(Capsule(tuple(back), tuple(back - 0.25 * L * f + np.array([0, 0, 0.05 * H])), 0.04 * H, fur))
        return parts


class Vegetation(Thing):
    """A bush or young tree swaying in the wind (static foot point, moving branches)."""

    def parts(self, t: float, cond: Conditions) -> list:
        p = self.params
        base, f, r = self._frame(0.0)
        veg = cond.surface("vegetation") + p["offset_k"]
        parts: list = []
        for i, (dx, hgt, rad) in enumerate(p["branches"]):
            sway = p["amp_m"] * math.sin(2 * math.pi * p["freq_hz"] * t + self.phase + 0.7 * i)
            foot = base + dx * r
            top = foot + np.array([0, 0, hgt]) + sway * r
            parts.append(Capsule(tuple(foot + np.array([0, 0, rad])), tuple(top), rad, veg + 0.3 * i))
        return parts


class Bird(Thing):
    """A bird close to the lens: large, fast, flapping; drawn out of focus by the caller's blur."""

    def parts(self, t: float, cond: Conditions) -> list:
        p = self.params
        d = np.array([math.sin(self.heading), math.cos(self.heading), 0.0])
        c = np.array(p["start3"]) + self.speed * t * d + np.array([0, 0, p["climb"] * t])
        r = np.array([math.cos(self.heading), -math.sin(self.heading), 0.0])
        body = p["body_c"]
        flap = math.sin(2 * math.pi * p["flap_hz"] * t + self.phase)
        up = np.array([0, 0, 1.0])
        span = p["span_m"]
        return [
            Capsule(tuple(c - 0.15 * d), tuple(c + 0.12 * d), 0.05, body),
            Capsule(
                tuple(c),
                tuple(c + 0.5 * span * (r * math.cos(0.8 * flap) + up * math.sin(0.8 * flap))),
                0.03,
                body - 3.0,
            ),
            Capsule(
                tuple(c),
                tuple(c + 0.5 * span * (-r * math.cos(0.8 * flap) + up * math.sin(0.8 * flap))),
                0.03,
                body - 3.0,
            ),
        ]

    def ground_xy(self, t: float) -> np.ndarray:
        d = np.array([math.sin(self.heading), math.cos(self.heading)])
        return np.array(self.params["start3"][:2]) + self.speed * t * d

    def draw(self, cv: Canvas, t: float) -> tuple[np.ndarray, np.ndarray] | None:
        """Draw, then defocus: the lens focuses far away, so a bird a few metres off is a soft blob."""
        from thermops.camera.sensor import defocus

        before = cv.field.copy()
        ext = super().draw(cv, t)
        sigma = self.params.get("blur_px", 0.0)
        if ext is None or sigma <= 0:
            return ext
        pad = 3.0 * sigma + 1
        win = _window(cv.camera, ext[0] - pad, ext[1] + pad)
        if win is None:
            return ext
        u0, v0, u1, v1 = win
        delta = cv.field[v0:v1, u0:u1] - before[v0:v1, u0:u1]
        cv.field[v0:v1, u0:u1] = before[v0:v1, u0:u1] + defocus(delta, sigma)
        return ext[0] - sigma, ext[1] + sigma


class Reflection(Thing):
    """A person's mirror image in a puddle or wet road: inverted, dim, blurred (the person is out of view)."""

    def parts(self, t: float, cond: Conditions) -> list:
        return []

    def draw(self, cv: Canvas, t: float) -> tuple[np.ndarray, np.ndarray] | None:
        ghost = Person("person", "person_walking", self.start_xy, self.heading, self.speed, self.phase, self.params)
        parts = ghost.parts(t, cv.cond)
        rho = self.params["reflectivity"]
        lo, hi = np.array([np.inf, np.inf]), np.array([-np.inf, -np.inf])
        hit = False
        bg = cv.cond.surface("asphalt")
        for prt in parts:
            temp = bg + rho * (prt.temp_c - bg)
            if isinstance(prt, Capsule):
                mirrored = Capsule(
                    (prt.p0[0], prt.p0[1], -prt.p0[2]), (prt.p1[0], prt.p1[1], -prt.p1[2]), prt.radius, temp
                )
                ext = draw_capsule(cv, mirrored)
            else:
                ext = draw_box(cv, Box(prt.corners * np.array([1.0, 1.0, -1.0]), temp))
            if ext is not None:
                hit = True
                lo, hi = np.minimum(lo, ext[0]), np.maximum(hi, ext[1])
        return (lo, hi) if hit else None


class HeatShimmer(Thing):
    """Turbulent flicker over hot ground: a patch whose apparent temperature boils and drifts upward."""

    def parts(self, t: float, cond: Conditions) -> list:
        return []

    def draw(self, cv: Canvas, t: float) -> tuple[np.ndarray, np.ndarray] | None:
        p = self.params
        cam = cv.camera
        g = self.ground_xy(t)
        w, hgt = p["width_m"], p["height_m"]
        rgt = np.array([math.cos(math.radians(cam.yaw_deg)), -math.sin(math.radians(cam.yaw_deg))])
        pts = np.array(
            [[*(g - w / 2 * rgt), 0.0], [*(g + w / 2 * rgt), 0.0], [*(g - w / 2 * rgt), hgt], [*(g + w / 2 * rgt), hgt]]
        )
        uv, z = cam.project(pts)
        if np.any(z <= 0.5):
            return None
        lo, hi = uv.min(axis=0), uv.max(axis=0)
        win = _window(cam, lo, hi)
        if win is None:
            return lo, hi
        u0, v0, u1, v1 = win
        vv, uu = np.mgrid[v0:v1, u0:u1].astype(np.float64)
        cu, cvv = 0.5 * (lo + hi)
        su, sv = max(0.5 * (hi[0] - lo[0]), 1.0), max(0.5 * (hi[1] - lo[1]), 1.0)
        env = np.exp(-(((uu - cu) / su) ** 2 + ((vv - cvv) / sv) ** 2) * 2.0)
        kx, ky = 2 * math.pi / max(su / 2, 1.5), 2 * math.pi / max(sv / 3, 1.5)
        rise = p["rise_hz"] * t
        boil = np.sin(kx * uu + 5.0 * rise + self.phase) * np.sin(ky * (vv + 20 * rise)) + 0.5 * np.sin(
            1.7 * kx * uu - 3.1 * rise
        ) * np.sin(1.3 * ky * vv + 7.0 * rise + self.phase)
        cv.field[v0:v1, u0:u1] += p["amp_k"] * env * boil
        return lo, hi


class RainStreak(Thing):
    """Water running off an edge close in front of the lens: a curtain of cold falling streaks."""

    def parts(self, t: float, cond: Conditions) -> list:
        return []

    def draw(self, cv: Canvas, t: float) -> tuple[np.ndarray, np.ndarray] | None:
        p = self.params
        cam = cv.camera
        lo, hi = np.array(p["lo_px"], dtype=float), np.array(p["hi_px"], dtype=float)
        win = _window(cam, lo, hi - 1)
        if win is None:
            return lo, hi
        u0, v0, u1, v1 = win
        rng = np.random.default_rng(p["seed"] + int(round(t * 1000)))
        n = p["drops"]
        us = rng.uniform(u0, u1, n)
        vs = rng.uniform(v0, v1, n)
        length = p["length_px"]
        for u, v in zip(us, vs):
            ui = int(u)
            va, vb = int(v), min(v1, int(v + length))
            if ui < u1 and vb > va:
                seg = cv.field[va:vb, ui]
                seg += 0.7 * (p["drop_c"] - seg)
        return lo, hi


class GlassReflection(Thing):
    """A person's mirror image in a glossy vertical surface (shop window, glazed door, car side).

    The panel is a thin box whose own apparent temperature is mostly reflected sky
    (glass is opaque in LWIR and partly reflective; polished metal is a mirror,
    THERMAL-FACTS). A person walking in front of it, out of view, appears behind
    the panel plane as an upright, dimmer person: radiance panel + rho (T_part -
    panel), cut by the panel's outline. A classic person-shaped false alarm.
    The virtual person's foot point moves along the panel at `behind_m` behind it.
    """

    def parts(self, t: float, cond: Conditions) -> list:
        return []

    def _panel(self) -> np.ndarray:
        p = self.params
        c = np.array([*p["panel_xy"], 0.0])
        return box_corners(c, p["panel_heading"], p["panel_w"], 0.06, p["panel_z0"], p["panel_z0"] + p["panel_h"])

    def ground_xy(self, t: float) -> np.ndarray:
        return np.asarray(self.params["panel_xy"], dtype=np.float64)

    def draw(self, cv: Canvas, t: float) -> tuple[np.ndarray, np.ndarray] | None:
        p = self.params
        panel_c = p["panel_c"]
        corners = self._panel()
        got = box_coverage(cv.camera, corners, cv.supersample)
        if got is None:
            return None
        ext, win, cov = got
        if win is None:
            return ext
        dist = _dist_to_camera(cv.camera, corners.mean(axis=0))
        _composite(cv, win, cov, cv.cond.atmosphere(panel_c, dist), dist)
        # The virtual person, drawn on a scratch copy without occluders, then kept inside the panel only.
        along = np.array([math.sin(p["panel_heading"]), math.cos(p["panel_heading"])])
        normal = np.array([along[1], -along[0]])
        start = np.asarray(p["panel_xy"]) + normal * p["behind_m"] - along * (0.5 * p["panel_w"] + p["enter_m"])
        heading = math.atan2(along[0], along[1])
        ghost = Person("person", "person_walking", start, heading, self.speed, self.phase, p["person"])
        scratch = Canvas(cv.camera, cv.cond, cv.field.copy(), np.full(cv.depth.shape, np.inf), cv.supersample)
        rho = p["reflectivity"]
        g_ext = None
        for prt in ghost.parts(t, cv.cond):
            temp = panel_c + rho * (prt.temp_c - panel_c)
            if isinstance(prt, Capsule):
                e = draw_capsule(scratch, Capsule(prt.p0, prt.p1, prt.radius, temp))
            else:
                e = draw_box(scratch, Box(prt.corners, temp))
            if e is not None:
                g_ext = e if g_ext is None else (np.minimum(g_ext[0], e[0]), np.maximum(g_ext[1], e[1]))
        u0, v0, u1, v1 = win
        mask = cov * (dist < cv.depth[v0:v1, u0:u1])
        f = cv.field[v0:v1, u0:u1]
        f += mask * (scratch.field[v0:v1, u0:u1] - f)
        cv.drawn += float(mask.sum())
        cv.reachable += float(cov.sum())
        if cv.owner is not None:
            cv.owner[v0:v1, u0:u1][mask > 0.5] = cv.current
        if cv.reach is not None:
            cv.reach[v0:v1, u0:u1][cov > 0.5] = cv.current
        if g_ext is None:
            return ext
        lo, hi = np.maximum(ext[0], g_ext[0]), np.minimum(ext[1], g_ext[1])
        if np.any(hi - lo < 1.0):
            return ext  # the reflection is outside the panel: the box is the panel
        return lo, hi
