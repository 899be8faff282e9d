"""The static thermal scene seen by one fixed camera: ground, sky, structures, weather.

A camera's *layout* (road, buildings, tree line, ground texture) is fixed per
camera, as a real mast sees the same place every day; the *conditions* (time of
day, weather, air temperature) change per clip. `background(...)` turns the two
into a `(H, W)` apparent-temperature field in degrees Celsius plus a depth map
of the structures (for occluding objects behind them).

Figures, from ../shared/THERMAL-FACTS.md ("The scene"):
- the clear sky reads -20 to -50 degC; cloud bases are a few kelvin below air;
- sun-loaded ground can exceed 40-50 degC, so a clothed person (apparent
  temperature well below skin and following ambient) is colder than the ground
  by day: polarity inversion; near dawn and dusk the contrast vanishes
  (thermal crossover);
- rain drives every surface toward the wet-bulb temperature and lowers contrast;
- emissivities: asphalt/concrete 0.9-0.96, vegetation and soil 0.92-0.98,
  glass and bare metal partly reflective (they show the cold sky).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from thermops.camera.geometry import PinholeCamera

WEATHERS = ("clear", "overcast", "rain")


@dataclass(frozen=True)
class Conditions:
    """Per-clip environment: time of day, weather and the temperatures that follow."""

    hour: float
    weather: str
    air_c: float  # ambient air temperature at this hour
    sun: float  # 0..1 surface sun loading (elevation, lagged; reduced by cloud)
    sky_zenith_c: float
    wet_bulb_c: float
    visibility_m: float  # LWIR atmospheric extinction length

    @property
    def day(self) -> bool:
        return self.sun > 0.05

    def atmosphere(self, c: np.ndarray | float, range_m: np.ndarray | float) -> np.ndarray:
        """Apparent temperature through `range_m` of air: tau T + (1 - tau) T_air."""
        tau = np.exp(-np.asarray(range_m, dtype=np.float64) / self.visibility_m)
        return tau * np.asarray(c, dtype=np.float64) + (1.0 - tau) * self.air_c

    def wet(self, c: np.ndarray | float) -> np.ndarray | float:
        """Rain pulls a surface most of the way to the wet-bulb temperature."""
        if self.weather != "rain":
            return c
        return self.wet_bulb_c + 0.25 * (np.asarray(c) - self.wet_bulb_c)

    def surface(self, kind: str) -> float:
        """Temperature of a horizontal surface of material `kind` under these conditions."""
        # Sun gain (K at full loading) and night offset (radiative cooling under a
        # clear sky, K) per material; asphalt stores heat and stays warm at night.
        gain, night = {
            "asphalt": (30.0, 2.5),
            "soil": (20.0, -2.0),
            "grass": (12.0, -4.0),
            "concrete": (22.0, 1.0),
            "vegetation": (4.0, -1.5),
            "wall": (12.0, 2.0),
        }[kind]
        cooling = {"clear": 1.0, "overcast": 0.3, "rain": 0.2}[self.weather]
        t = self.air_c + gain * self.sun + (1.0 - min(1.0, 4 * self.sun)) * night * cooling
        return float(self.wet(t))


def conditions(hour: float, weather: str, mean_air_c: float) -> Conditions:
    """Derive a clip's temperatures from the hour, the weather and the day's mean air temperature."""
    if weather not in WEATHERS:
        raise ValueError(f"weather {weather!r} is not one of {WEATHERS}")
    amp = {"clear": 6.0, "overcast": 3.0, "rain": 2.0}[weather]
    air = mean_air_c + amp * math.cos(2 * math.pi * (hour - 15.0) / 24.0)  # warmest mid-afternoon
    # Surface loading lags the sun by about an hour: zero before 7 h and after 19 h, peak at 13 h.
    sun = max(0.0, math.sin(math.pi * (hour - 7.0) / 12.0)) if 7.0 <= hour <= 19.0 else 0.0
    sun *= {"clear": 1.0, "overcast": 0.3, "rain": 0.1}[weather]
    # Clear sky reads -20 to -50 degC (THERMAL-FACTS): about 45 K below air at the zenith.
    zenith = air - {"clear": 45.0, "overcast": 8.0, "rain": 3.0}[weather]
    wet_bulb = air - (0.7 if weather == "rain" else 3.0)  # rain means near-saturated air
    vis = {"clear": 3000.0, "overcast": 1500.0, "rain": 400.0}[weather]
    return Conditions(hour, weather, air, sun, zenith, wet_bulb, vis)


@dataclass(frozen=True)
class Building:
    """An axis-aligned box in the camera's heading frame: (lateral, forward) centre, size, height."""

    lateral_m: float
    forward_m: float
    width_m: float
    depth_m: float
    height_m: float


@dataclass(frozen=True)
class Layout:
    """A camera's static world: a road across the view, buildings, a tree line, ground texture."""

    road_forward_m: float
    road_width_m: float
    path_lateral_m: float
    buildings: tuple[Building, ...]
    treeline_forward_m: float
    treeline_height_m: float
    waves: np.ndarray  # (K, 4): kx, ky, phase, amplitude of the ground texture
    tree_waves: np.ndarray  # (K, 3): k, phase, amplitude of the tree-line crown profile
    clutter: np.ndarray  # (K, 4): the fine ground clutter (tufts, stones, puddles; 0.15-3 m wavelengths)


def layout(camera: PinholeCamera, rng: np.random.Generator) -> Layout:
    """Draw a plausible static layout inside a camera's working range."""
    rmin, rmax = camera.min_range_m, camera.max_range_m
    half_fov = math.atan(camera.width / (2 * camera.fx))
    road = float(rng.uniform(rmin + 0.3 * (rmax - rmin), rmin + 0.6 * (rmax - rmin)))
    buildings = []
    for side in (-1, 1):
        if rng.random() < 0.75:
            fwd = float(rng.uniform(0.55, 0.95) * rmax)
            lat = side * float(rng.uniform(0.45, 0.75)) * fwd * math.tan(half_fov)
            buildings.append(
                Building(
                    lat,
                    fwd,
                    float(rng.uniform(0.1, 0.25) * fwd * math.tan(half_fov) + 6),
                    float(rng.uniform(8, 20)),
                    float(rng.uniform(4, 9)),
                )
            )
    n = 16  # enough random plane waves to read as blotches rather than stripes
    wl = np.exp(rng.uniform(math.log(4.0), math.log(60.0), n))
    ang = rng.uniform(0, 2 * math.pi, n)
    waves = np.stack(
        [
            np.cos(ang) * 2 * np.pi / wl,
            np.sin(ang) * 2 * np.pi / wl,
            rng.uniform(0, 2 * np.pi, n),
            rng.uniform(0.3, 1.0, n),
        ],
        axis=1,
    )
    twl = rng.uniform(2.0, 25.0, 10)
    tree_waves = np.stack([2 * np.pi / twl, rng.uniform(0, 2 * np.pi, 10), rng.uniform(0.3, 1.5, 10)], axis=1)
    m = 24
    cwl = np.exp(rng.uniform(math.log(0.15), math.log(3.0), m))
    cang = rng.uniform(0, 2 * math.pi, m)
    clutter = np.stack(
        [np.cos(cang) * 2 * np.pi / cwl, np.sin(cang) * 2 * np.pi / cwl, rng.uniform(0, 2 * np.pi, m),
         rng.uniform(0.3, 1.0, m)],
        axis=1,
    )  # fmt: skip
    return Layout(
        road_forward_m=road,
        road_width_m=float(rng.uniform(5, 8)),
        path_lateral_m=float(rng.uniform(-0.3, 0.3) * rmin * math.tan(half_fov) * 2),
        buildings=tuple(buildings),
        treeline_forward_m=1.4 * rmax + 30,
        treeline_height_m=float(rng.uniform(8, 14)),
        waves=waves,
        tree_waves=tree_waves,
        clutter=clutter,
    )


def _heading_frame(camera: PinholeCamera, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World XY to (lateral, forward) coordinates along the camera heading."""
    yaw = math.radians(camera.yaw_deg)
    fwd = np.array([math.sin(yaw), math.cos(yaw)])
    right = np.array([math.cos(yaw), -math.sin(yaw)])
    return xy @ right, xy @ fwd


@dataclass
class Rays:
    """Per-pixel world rays of a camera, computed once (they do not change between clips)."""

    dirs: np.ndarray  # (H, W, 3)
    lateral: np.ndarray  # (H, W) heading-frame components of the ray direction
    forward: np.ndarray
    up: np.ndarray


def camera_rays(camera: PinholeCamera) -> Rays:
    """Unit world rays through every pixel centre, as (H, W, 3)."""
    vv, uu = np.mgrid[0 : camera.height, 0 : camera.width].astype(np.float64)
    d = camera.pixel_rays(np.stack([uu.ravel(), vv.ravel()], axis=1)).reshape(camera.height, camera.width, 3)
    lat, fwd = _heading_frame(camera, d[..., :2].reshape(-1, 2))
    return Rays(d, lat.reshape(d.shape[:2]), fwd.reshape(d.shape[:2]), d[..., 2])


def _texture(
    lay: Layout,
    lat: np.ndarray,
    fwd: np.ndarray,
    foot_lat: np.ndarray | float = 0.0,
    foot_fwd: np.ndarray | float = 0.0,
    waves: np.ndarray | None = None,
) -> np.ndarray:
    """Smooth ground texture (unit variance) as seen through pixels of a given ground footprint (m).

    A pixel integrates the ground over its footprint, which grows with range and
    stretches along the view at grazing angles, so each wave is attenuated by
    its Gaussian footprint response (no aliased stripes at long range).
    """
    waves = lay.waves if waves is None else waves
    out = np.zeros_like(lat)
    for kx, ky, ph, amp in waves:
        att = np.exp(-0.5 * ((kx * foot_lat) ** 2 + (ky * foot_fwd) ** 2))
        out += amp * att * np.sin(kx * lat + ky * fwd + ph)
    return out / math.sqrt(len(waves) / 2)


@dataclass
class SceneGeometry:
    """What a camera's background looks like apart from the conditions: per-pixel ranges, materials,
    textures and structure hits. It depends on the camera and its layout only, so it is computed
    once per camera and each clip's conditions are a few array blends on top (`background`)."""

    ground: np.ndarray  # (H, W) bool: pixel sees the ground (within 20 x the working range)
    t_ground: np.ndarray  # ray distance to the ground (inf where none)
    ground_range: np.ndarray  # horizontal range of the ground point
    tex: np.ndarray  # ground texture (unit variance, footprint-attenuated)
    clutter: np.ndarray  # fine ground clutter (unit variance where resolved; fades with range)
    road: np.ndarray
    path: np.ndarray
    el: np.ndarray  # elevation of the ray, degrees
    clouds: np.ndarray  # cloud texture of the sky (used when not clear)
    tree: np.ndarray  # bool: tree-line pixels (in front of the ground)
    t_tree: np.ndarray
    crown_tex: np.ndarray
    crown_frac: np.ndarray  # height within the crown, 0..1
    buildings: list  # per building: (hit, tnear, on_roof, window, wall_ripple)


def scene_geometry(camera: PinholeCamera, rays: Rays, lay: Layout) -> SceneGeometry:
    """The conditions-independent part of `background` (see SceneGeometry)."""
    h0 = camera.mount_height_m
    up = rays.up
    with np.errstate(divide="ignore", invalid="ignore"):
        t_ground = np.where(up < -1e-6, h0 / -up, np.inf)
    finite = np.isfinite(t_ground)
    g_lat = np.where(finite, rays.lateral * np.where(finite, t_ground, 0.0), np.inf)
    g_fwd = np.where(finite, rays.forward * np.where(finite, t_ground, 0.0), np.inf)
    ground_range = np.hypot(g_lat, g_fwd)
    rng_safe = np.where(finite, ground_range, 0.0)
    # Pixel footprint on the ground: r / f across, r^2 / (h f) along the view.
    f = 0.5 * (camera.fx + camera.fy)
    gl, gf = np.where(finite, g_lat, 0.0), np.where(finite, g_fwd, 0.0)
    tex = _texture(lay, gl, gf, rng_safe / f, rng_safe**2 / (h0 * f))
    clutter = _texture(lay, gl, gf, rng_safe / f, rng_safe**2 / (h0 * f), lay.clutter)
    road = finite & (np.abs(g_fwd - lay.road_forward_m) < lay.road_width_m / 2)
    path = finite & (np.abs(gl - lay.path_lateral_m - 0.05 * gf) < 0.9) & (gf < lay.road_forward_m)
    el = np.degrees(np.arcsin(np.clip(up, -1, 1)))
    # Cloud texture: smooth in azimuth and elevation, weaker toward the horizon.
    az = np.arctan2(rays.lateral, rays.forward)
    clouds = np.sin(9.0 * az + 0.2 * el + lay.waves[0, 2]) * np.sin(0.35 * el + 4.0 * az + lay.waves[1, 2])
    clouds = 1.2 * clouds * np.clip(el / 6, 0, 1)
    is_ground = np.isfinite(t_ground) & (ground_range < 20 * camera.max_range_m)
    dist = np.where(is_ground, t_ground, np.inf)

    # Tree line: a vertical curtain at a fixed forward distance with a noisy crown.
    with np.errstate(divide="ignore", invalid="ignore"):
        t_tree = np.where(rays.forward > 1e-6, lay.treeline_forward_m / rays.forward, np.inf)
    z_tree = h0 + t_tree * up
    x_tree = rays.lateral * t_tree
    # Rounded crowns: |sin| bumps (cusps between trees point down, as between real crowns).
    bumps = (a * (2 * np.abs(np.sin(0.5 * k * x_tree + p)) - 1) for k, p, a in lay.tree_waves)
    crown = lay.treeline_height_m + sum(bumps)
    tree = (z_tree >= 0) & (z_tree <= crown) & (t_tree < dist)
    crown_tex = sum(np.sin(3.1 * k * x_tree + 2 * p) for k, p, _ in lay.tree_waves[:4]) / 2.0
    crown_frac = np.clip(z_tree / np.maximum(crown, 1), 0, 1)
    dist = np.where(tree, t_tree, dist)

    # Buildings: ray/box intersection (slab method) in the heading frame.
    blds = []
    d = np.stack([rays.lateral, rays.forward, up], axis=-1)
    o = np.array([0.0, 0.0, h0])
    for b in lay.buildings:
        lo = np.array([b.lateral_m - b.width_m / 2, b.forward_m - b.depth_m / 2, 0.0])
        hi = np.array([b.lateral_m + b.width_m / 2, b.forward_m + b.depth_m / 2, b.height_m])
        with np.errstate(divide="ignore", invalid="ignore"):
            t1 = (lo - o) / d
            t2 = (hi - o) / d
        tnear = np.nanmax(np.minimum(t1, t2), axis=-1)
        tfar = np.nanmin(np.maximum(t1, t2), axis=-1)
        hit = (tnear <= tfar) & (tfar > 0) & (tnear < dist)
        p = o + tnear[..., None] * d
        on_roof = np.abs(p[..., 2] - b.height_m) < 1e-3 * np.maximum(tnear, 1)
        u = np.where(np.abs(p[..., 1] - lo[1]) < 1e-3 * np.maximum(tnear, 1), p[..., 0], p[..., 1])
        window = (
            (np.mod(u, 4.0) > 1.2)
            & (np.mod(u, 4.0) < 2.8)
            & (np.mod(p[..., 2], 3.2) > 1.0)
            & (np.mod(p[..., 2], 3.2) < 2.4)
        )
        blds.append((hit, tnear, on_roof, window, 0.3 * np.sin(p[..., 2] * 3)))
        dist = np.where(hit, tnear, dist)
    return SceneGeometry(
        is_ground,
        t_ground,
        ground_range,
        tex,
        clutter,
        road,
        path,
        el,
        clouds,
        tree,
        t_tree,
        crown_tex,
        crown_frac,
        blds,
    )


def background(
    camera: PinholeCamera, rays: Rays, lay: Layout, cond: Conditions, geom: SceneGeometry | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Static apparent temperature (H, W) degC, structure depth (H, W) m (inf where none), ground range (H, W).

    Ground pixels get a material (asphalt road and path, grass with soil patches)
    and a smooth texture; sky pixels cool with elevation; the tree line and the
    buildings occlude both. Everything is seen through the atmosphere. Pass the
    camera's `scene_geometry` to skip recomputing what does not change between clips.
    """
    g = scene_geometry(camera, rays, lay) if geom is None else geom
    tex = g.tex
    grass, soil, asphalt = cond.surface("grass"), cond.surface("soil"), cond.surface("asphalt")
    soil_mix = np.clip(0.5 + 0.6 * tex, 0, 1) * 0.6
    temp = (1 - soil_mix) * grass + soil_mix * soil + (0.4 + 1.0 * cond.sun) * 0.4 * tex
    # Tufts, stones and bare patches: a kelvin or so at night (uneven radiative cooling), more in sun.
    temp = temp + (0.5 + 1.0 * cond.sun) * 0.6 * g.clutter
    temp = np.where(g.road, asphalt + 0.2 * tex + 0.15 * g.clutter, temp)
    # A gravel path toward the road: between soil and concrete.
    temp = np.where(g.path, 0.5 * (cond.surface("concrete") + soil) + 0.2 * tex, temp)

    # Sky: cold at the zenith, approaching air temperature at the horizon.
    horizon_sky = cond.air_c - (4.0 if cond.weather == "clear" else 1.0)
    sky = cond.sky_zenith_c + (horizon_sky - cond.sky_zenith_c) * np.exp(-np.clip(g.el, 0, None) / 8.0)
    if cond.weather != "clear":
        sky = sky + g.clouds
    temp = np.where(g.ground, cond.atmosphere(temp, g.ground_range), sky)

    # Crowns: warmer cores, cooler edges against the sky.
    tree_c = cond.surface("vegetation") + 0.5 * g.crown_tex - 0.8 * g.crown_frac
    temp = np.where(g.tree, cond.atmosphere(tree_c, g.t_tree), temp)

    depth = np.full(temp.shape, np.inf)
    wall = cond.surface("wall")
    roof = 0.6 * cond.surface("concrete") + 0.4 * cond.sky_zenith_c  # metal sheet: partly mirrors the sky
    # Windows: glass reflects the cold sky (THERMAL-FACTS: glass is opaque and partly reflective).
    glass = 0.75 * cond.air_c + 0.25 * cond.sky_zenith_c + (2.0 if not cond.day else 0.0)
    for hit, tnear, on_roof, window, ripple in g.buildings:
        face = np.where(on_roof, roof, np.where(window, glass, wall + ripple))
        temp = np.where(hit, cond.atmosphere(face, tnear), temp)
        depth = np.where(hit, tnear, depth)
    depth = np.where(g.tree, np.minimum(depth, g.t_tree), depth)
    return temp, depth, g.ground_range
