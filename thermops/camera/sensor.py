"""Uncooled LWIR microbolometer sensor model, as small composable functions.

Every function here is a building block that both the embedded world
(`thermops.world.synth`) and the robustness gate's thermal corruptions use, so the
signatures are a stable API:

- pattern generators return arrays that broadcast onto a `(T, H, W)` stack:
  `pixel_nonuniformity`, `column_row_fpn`, `vignetting_map`, `offset_ramp`,
  `dead_hot_pixels`, `temporal_noise`;
- transforms take float `(T, H, W)` arrays and return new arrays (inputs are
  never modified): `apply_vignetting`, `apply_dead_hot`, `replace_defects`,
  `defocus`, `quantize`, `agc_linear`, `agc_plateau`, `agc_gamma`, `agc_fixed`,
  `invert_display`, `display_jumps`, `motion_smear`;
- `SensorModel` chains them: a `(T, H, W)` scene temperature field in degrees
  Celsius becomes raw counts as the camera's calibration states them.

Figures (see ../shared/THERMAL-FACTS.md, "The sensor"): NETD 30-50 mK for good
uncooled cores, 60-100 mK for older ones, per pixel per frame; 14-bit counts
roughly linear in temperature over a few tens of kelvin; per-pixel gain and
offset non-uniformity mostly removed by the factory NUC, with residual column
(and some row) striping; offsets drift slowly between shutter flat-field
corrections (FFC); vignetting / cos^4 fall-off gives low-frequency shading; 8-bit
display output through AGC (linear with clipped tails, or plateau equalization).

Only NumPy is imported, so corruptions can run on a bare training node.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Shape = tuple[int, ...]


def _hw(shape: Shape) -> tuple[int, int]:
    if len(shape) not in (2, 3):
        raise ValueError(f"expected a (H, W) or (T, H, W) shape, got {shape}")
    return int(shape[-2]), int(shape[-1])


# -- fixed patterns --------------------------------------------------------------------


def pixel_nonuniformity(
    shape: Shape, gain_sigma: float, offset_sigma: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel residual gain (multiplicative, around 1) and offset maps, each (H, W).

    `gain_sigma` is relative (0.01 = 1 %); `offset_sigma` is in the caller's units
    (kelvin-equivalent in `SensorModel`).
    """
    h, w = _hw(shape)
    gain = 1.0 + gain_sigma * rng.standard_normal((h, w))
    offset = offset_sigma * rng.standard_normal((h, w))
    return gain.astype(np.float64), offset.astype(np.float64)


def column_row_fpn(shape: Shape, col_sigma: float, row_sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Additive column and row striping, (H, W): one value per column plus one per row.

    The readout circuit of a microbolometer digitises a column at a time, so the
    residual fixed pattern after NUC is mostly per-column, with weaker rows.
    Units are the caller's (kelvin-equivalent in `SensorModel`).
    """
    h, w = _hw(shape)
    cols = col_sigma * rng.standard_normal(w)
    rows = row_sigma * rng.standard_normal(h)
    return rows[:, None] + cols[None, :]


def vignetting_map(h: int, w: int, strength: float) -> np.ndarray:
    """Multiplicative cos^4-like fall-off, (H, W): 1 at the centre, `1 - strength` in the corners."""
    if not 0.0 <= strength < 1.0:
        raise ValueError(f"vignetting strength must be in [0, 1), got {strength}")
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    # Normalised radius: 1 in the corners whatever the aspect ratio.
    r2 = ((xx - (w - 1) / 2) / (w / 2)) ** 2 + ((yy - (h - 1) / 2) / (h / 2)) ** 2
    r2 /= r2.max() if r2.max() > 0 else 1.0
    # cos^4 of an off-axis angle whose tan grows linearly with the radius.
    tan_max2 = (1.0 - strength) ** -0.5 - 1.0  # cos^4(theta_max) = 1 - strength
    cos4 = (1.0 / (1.0 + tan_max2 * r2)) ** 2
    return cos4


def dead_hot_pixels(shape: Shape, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Defect map (H, W) int8: -1 dead (stuck low), +1 hot (stuck high), 0 good.

    `fraction` is the share of defective pixels, split evenly between dead and hot.
    """
    h, w = _hw(shape)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"defect fraction must be in [0, 1], got {fraction}")
    u = rng.random((h, w))
    out = np.zeros((h, w), dtype=np.int8)
    out[u < fraction / 2] = -1
    out[(u >= fraction / 2) & (u < fraction)] = 1
    return out


# -- temporal patterns -----------------------------------------------------------------


def temporal_noise(shape: Shape, netd_k: float, rng: np.random.Generator, dtype: type = np.float64) -> np.ndarray:
    """White Gaussian noise of standard deviation `netd_k` kelvin, per pixel per frame."""
    out = rng.standard_normal(tuple(int(s) for s in shape), dtype=dtype)
    out *= dtype(netd_k)
    return out


def offset_ramp(n_frames: int, rate_per_frame: float, start: float = 0.0, ffc_every: int | None = None) -> np.ndarray:
    """Slow offset drift between flat-field corrections, (T, 1, 1).

    The offset grows by `rate_per_frame` each frame from `start`; when `ffc_every`
    is given the shutter resets it to zero every that many frames (counted from
    the first frame, after the start phase).
    """
    t = np.arange(n_frames, dtype=np.float64)
    if ffc_every:
        t = t % int(ffc_every)
        ramp = np.where(np.arange(n_frames) < int(ffc_every), start + rate_per_frame * t, rate_per_frame * t)
    else:
        ramp = start + rate_per_frame * t
    return ramp[:, None, None]


# -- transforms ------------------------------------------------------------------------


def apply_vignetting(frames: np.ndarray, vmap: np.ndarray, reference: float) -> np.ndarray:
    """Shade a signal toward `reference` (e.g. the lens housing temperature) by `vmap`.

    Where less scene flux reaches a pixel, the housing fills in: out = ref + v (x - ref).
    """
    x = _float(frames)
    return reference + vmap * (x - reference)


def apply_dead_hot(frames: np.ndarray, defects: np.ndarray, low: float, high: float) -> np.ndarray:
    """Set dead pixels to `low` and hot pixels to `high` in every frame of (T, H, W)."""
    x = np.array(frames, dtype=np.float64, copy=True)
    x[..., defects < 0] = low
    x[..., defects > 0] = high
    return x


def replace_defects(frames: np.ndarray, defects: np.ndarray) -> np.ndarray:
    """Replace defective pixels by the mean of their good horizontal neighbours, as cameras do.

    Cores keep a bad-pixel map and substitute neighbours (THERMAL-FACTS), so only
    defects missing from the map reach the output. A defect with no good
    horizontal neighbour takes the pixel above (below on the first row).
    """
    x = _float(frames).copy()
    ys, xs = np.nonzero(defects)
    if len(ys) == 0:
        return x
    h, w = defects.shape
    good = defects == 0
    lx, rx = np.clip(xs - 1, 0, w - 1), np.clip(xs + 1, 0, w - 1)
    wl = ((xs - 1 >= 0) & good[ys, lx]).astype(np.float64)
    wr = ((xs + 1 < w) & good[ys, rx]).astype(np.float64)
    n = wl + wr
    fill = (x[..., ys, lx] * wl + x[..., ys, rx] * wr) / np.where(n > 0, n, 1.0)
    uy = np.where(ys > 0, ys - 1, np.minimum(ys + 1, h - 1))
    x[..., ys, xs] = np.where(n > 0, fill, x[..., uy, xs])
    return x


def _gauss_kernel(sigma: float) -> np.ndarray:
    radius = max(1, int(np.ceil(3.0 * sigma)))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    return k / k.sum()


def _blur_axis(x: np.ndarray, k: np.ndarray, axis: int) -> np.ndarray:
    r = len(k) // 2
    pad = [(0, 0)] * x.ndim
    pad[axis] = (r, r)
    xp = np.pad(x, pad, mode="reflect" if x.shape[axis] > r else "edge")
    n = x.shape[axis]

    def sl(i: int) -> tuple:
        idx = [slice(None)] * x.ndim
        idx[axis] = slice(i, i + n)
        return tuple(idx)

    out = xp[sl(0)] * x.dtype.type(k[0])
    for i in range(1, len(k)):
        out += xp[sl(i)] * x.dtype.type(k[i])
    return out


def _float(frames: np.ndarray) -> np.ndarray:
    x = np.asarray(frames)
    return x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float64)


def defocus(frames: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of every frame of (T, H, W) (or one (H, W) image), `sigma` in pixels.

    Float input keeps its precision (float32 stays float32); integers become float64.
    """
    x = _float(frames)
    if sigma <= 0:
        return x.copy()
    k = _gauss_kernel(sigma)
    return _blur_axis(_blur_axis(x, k, x.ndim - 1), k, x.ndim - 2)


def quantize(x: np.ndarray, bits: int) -> np.ndarray:
    """Round to integers and clip to the `bits`-bit range [0, 2**bits - 1] (float out)."""
    return np.clip(np.rint(np.asarray(x, dtype=np.float64)), 0, 2**bits - 1)


def agc_linear(frames: np.ndarray, clip_percent: float = 1.0, dtype: type = np.uint8) -> np.ndarray:
    """Per-frame linear AGC to 8 bits, clipping `clip_percent` % at each tail.

    Each frame is stretched on its own (as a camera's AGC does), so the same
    object gets different grey levels when the scene content changes.
    """
    x = np.asarray(frames, dtype=np.float64)
    x3 = x[None] if x.ndim == 2 else x
    lo = np.percentile(x3, clip_percent, axis=(1, 2))[:, None, None]
    hi = np.percentile(x3, 100.0 - clip_percent, axis=(1, 2))[:, None, None]
    span = np.maximum(hi - lo, 1e-9)
    out = np.clip(np.rint(255.0 * (x3 - lo) / span), 0, 255).astype(dtype)
    return out[0] if x.ndim == 2 else out


def agc_plateau(frames: np.ndarray, plateau: float = 0.02, bins: int = 1024, dtype: type = np.uint8) -> np.ndarray:
    """Per-frame plateau (clipped-histogram) equalization to 8 bits.

    Each histogram bin is capped at `plateau` x (number of pixels), so a large
    uniform background cannot take most of the grey levels (as in common cores'
    "plateau equalization"); the capped cumulative histogram is the transfer curve.
    """
    if not 0.0 < plateau <= 1.0:
        raise ValueError(f"plateau must be in (0, 1], got {plateau}")
    x = np.asarray(frames, dtype=np.float64)
    x3 = x[None] if x.ndim == 2 else x
    out = np.empty(x3.shape, dtype=dtype)
    for i, f in enumerate(x3):
        lo, hi = float(f.min()), float(f.max())
        if hi - lo < 1e-9:
            out[i] = 0
            continue
        idx = np.clip(((f - lo) / (hi - lo) * bins).astype(np.int64), 0, bins - 1)
        hist = np.bincount(idx.ravel(), minlength=bins).astype(np.float64)
        hist = np.minimum(hist, max(1.0, plateau * f.size))
        cdf = np.cumsum(hist)
        cdf = (cdf - cdf[0]) / max(cdf[-1] - cdf[0], 1e-9)
        out[i] = np.clip(np.rint(255.0 * cdf[idx]), 0, 255).astype(dtype)
    return out[0] if x.ndim == 2 else out


def agc_gamma(frames: np.ndarray, gamma: float, clip_percent: float = 1.0, dtype: type = np.uint8) -> np.ndarray:
    """Per-frame linear AGC (tails clipped) followed by a display gamma curve, 8 bits out.

    `gamma` < 1 lifts the dark end (cold scenes get more grey levels), > 1 the bright
    end; monitors and video encoders apply such a curve after the camera's AGC.
    """
    if gamma <= 0:
        raise ValueError(f"gamma must be positive, got {gamma}")
    x = np.asarray(frames, dtype=np.float64)
    x3 = x[None] if x.ndim == 2 else x
    lo = np.percentile(x3, clip_percent, axis=(1, 2))[:, None, None]
    hi = np.percentile(x3, 100.0 - clip_percent, axis=(1, 2))[:, None, None]
    lin = np.clip((x3 - lo) / np.maximum(hi - lo, 1e-9), 0.0, 1.0)
    out = np.clip(np.rint(255.0 * lin**gamma), 0, 255).astype(dtype)
    return out[0] if x.ndim == 2 else out


def agc_fixed(frames: np.ndarray, lo: float, hi: float, dtype: type = np.uint8) -> np.ndarray:
    """A fixed (manual) gain and level: [lo, hi] maps to 0..255 in every frame, the rest saturates.

    Unlike the automatic modes the mapping does not follow the scene, so hot
    objects clip white and cold sky clips black (a "clipped" display).
    """
    if not hi > lo:
        raise ValueError(f"fixed AGC needs hi > lo, got [{lo}, {hi}]")
    x = np.asarray(frames, dtype=np.float64)
    return np.clip(np.rint(255.0 * (x - lo) / (hi - lo)), 0, 255).astype(dtype)


def invert_display(frames8: np.ndarray) -> np.ndarray:
    """Black-hot display: 255 - x (polarity is a display setting of most cores)."""
    x = np.asarray(frames8)
    if x.dtype != np.uint8:
        raise ValueError(f"invert_display takes uint8 display frames, got {x.dtype}")
    return (255 - x).astype(np.uint8)


def display_jumps(
    frames8: np.ndarray, rng: np.random.Generator, n_jumps: int, gain: tuple[float, float], offset: float
) -> np.ndarray:
    """Step changes of display gain and level between frames, as an AGC re-adapting does.

    The clip is cut at `n_jumps` random frame boundaries; each segment after a cut
    gets gain g ~ U(gain) and level shift ~ U(-offset, offset) grey levels,
    applied around mid-grey: y = clip(128 + g (x - 128) + o). (THERMAL-FACTS: AGC
    changes frame to frame with scene content; the same object gets different
    grey levels when a hot car enters the view.)
    """
    x = np.asarray(frames8, dtype=np.float64)
    t = x.shape[0]
    if n_jumps <= 0 or t < 2:
        return np.asarray(frames8).copy()
    cuts = np.sort(rng.choice(np.arange(1, t), size=min(n_jumps, t - 1), replace=False))
    g = np.ones(t)
    o = np.zeros(t)
    for c in cuts:
        g[c:] = rng.uniform(*gain)
        o[c:] = rng.uniform(-offset, offset)
    y = 128.0 + g[:, None, None] * (x - 128.0) + o[:, None, None]
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


def motion_smear(patch: np.ndarray, velocity_px: tuple[float, float], tau_s: float) -> np.ndarray:
    """Trail of a moving object on a microbolometer: (H, W) change image -> smeared change image.

    A bolometer pixel is a first-order low-pass with thermal time constant tau
    (uncooled VOx/a-Si cores: about 8-15 ms by their data sheets; not in
    THERMAL-FACTS), so a readout shows the object's recent path weighted by
    exp(-s / tau): a comet tail of about |v| tau pixels behind it. `velocity_px`
    is the image velocity (px/s, x then y). Implemented as a weighted sum of
    bilinearly shifted copies over 3 tau.
    """
    x = np.asarray(patch, dtype=np.float64)
    vx, vy = velocity_px
    length = float(np.hypot(vx, vy)) * tau_s
    if length < 0.25:
        return x.copy()
    n = int(min(12, np.ceil(3.0 * length))) + 1
    s = np.linspace(0.0, 3.0 * tau_s, n)
    w = np.exp(-s / tau_s)
    w /= w.sum()
    out = np.zeros_like(x)
    for si, wi in zip(s, w):
        out += wi * _shift(x, -vx * si, -vy * si)
    return out


def _shift(x: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """Bilinear shift of an (H, W) image by (dx, dy) pixels, zeros entering at the border."""
    h, w = x.shape
    ix, fx = int(np.floor(dx)), dx - np.floor(dx)
    iy, fy = int(np.floor(dy)), dy - np.floor(dy)
    out = np.zeros_like(x)
    for ddy, wy in ((iy, 1 - fy), (iy + 1, fy)):
        for ddx, wx in ((ix, 1 - fx), (ix + 1, fx)):
            if wx * wy == 0:
                continue
            ys, yd = (slice(0, h - ddy), slice(ddy, h)) if ddy >= 0 else (slice(-ddy, h), slice(0, h + ddy))
            xs, xd = (slice(0, w - ddx), slice(ddx, w)) if ddx >= 0 else (slice(-ddx, w), slice(0, w + ddx))
            if ys.start < ys.stop and xs.start < xs.stop and abs(ddy) < h and abs(ddx) < w:
                out[yd, xd] += wx * wy * x[ys, xs]
    return out


# -- the whole chain -------------------------------------------------------------------


@dataclass(frozen=True)
class SensorParams:
    """Knobs of the residual sensor imperfections (all kelvin-equivalent unless said)."""

    pixel_gain_sigma: float  # 1 % residual gain non-uniformity after the factory NUC
    pixel_offset_k: float
    col_fpn_k: float  # column striping: the dominant residual pattern, below the NETD after a good NUC
    row_fpn_k: float
    vignetting: float  # corner flux loss (cos^4 fall-off, narcissus)
    drift_k_per_min: float  # offset drift rate between FFCs
    defect_fraction: float
    replace_defects: bool  # the core substitutes neighbours for pixels in its bad-pixel map
    psf_sigma_px: float  # optics blur


@dataclass
class SensorModel:
    """A camera's sensor: fixed patterns (drawn once per camera) plus the radiometric chain.

    `counts(temps, rng, ffc_phase_s)` maps a `(T, H, W)` scene temperature field in
    degrees Celsius to `(T, H, W)` uint16 raw counts at the calibration's bit depth.
    """

    radiometry: object  # thermops.camera.calibration.Radiometry
    height: int
    width: int
    fps: float
    ffc_interval_s: float
    params: SensorParams
    gain_map: np.ndarray
    offset_map_k: np.ndarray
    fpn_k: np.ndarray
    vmap: np.ndarray
    defects: np.ndarray

    @classmethod
    def from_calibration(cls, cal, rng: np.random.Generator, params: SensorParams, fps: float = 9.0) -> SensorModel:
        """Draw a camera's fixed patterns from `rng` and take NETD, bit depth, FFC from `cal`."""
        p = params
        h, w = cal.geometry.image_height, cal.geometry.image_width
        gain, offset = pixel_nonuniformity((h, w), p.pixel_gain_sigma, p.pixel_offset_k, rng)
        fpn = column_row_fpn((h, w), p.col_fpn_k, p.row_fpn_k, rng)
        defects = dead_hot_pixels((h, w), p.defect_fraction, rng)
        return cls(
            radiometry=cal.radiometry,
            height=h,
            width=w,
            fps=fps,
            ffc_interval_s=float(cal.nuc.ffc_interval_s or 180.0),
            params=p,
            gain_map=gain,
            offset_map_k=offset,
            fpn_k=fpn,
            vmap=vignetting_map(h, w, p.vignetting),
            defects=defects,
        )

    @property
    def netd_k(self) -> float:
        return float(self.radiometry.netd_mk) / 1000.0

    def counts_float(
        self,
        temps: np.ndarray,
        rng: np.random.Generator,
        ffc_phase_s: float = 0.0,
        housing_c: float | None = None,
        extra_blur_px: float = 0.0,
    ) -> np.ndarray:
        """(T, H, W) degrees Celsius to unquantized float counts (no defects, no clipping).

        `extra_blur_px`: defocus on top of the optics' PSF (Gaussian sigmas add in quadrature).
        """
        # float32 through the optical/noise chain: plenty for 50 mK on a 14-bit scale, half the memory traffic.
        t = np.asarray(temps, dtype=np.float32)
        n = t.shape[0]
        ref = float(np.median(t)) if housing_c is None else housing_c
        x = defocus(t, float(np.hypot(self.params.psf_sigma_px, extra_blur_px)))
        x -= np.float32(ref)
        x *= self.vmap.astype(np.float32)
        x += np.float32(ref)
        # Drift: resets at each FFC; the clip starts `ffc_phase_s` after the last one.
        per_frame = self.params.drift_k_per_min / 60.0 / self.fps
        ffc_frames = max(1, int(round(self.ffc_interval_s * self.fps)))
        phase_frames = int(round(ffc_phase_s * self.fps)) % ffc_frames
        drift = offset_ramp(n + phase_frames, per_frame, ffc_every=ffc_frames)[phase_frames:]
        x += (self.offset_map_k + self.fpn_k).astype(np.float32)
        x += drift.astype(np.float32)
        x += temporal_noise(t.shape, self.netd_k, rng, np.float32)
        c = self.radiometry.celsius_to_counts(x)
        c_ref = self.radiometry.celsius_to_counts(ref)
        return c_ref + self.gain_map * (c - c_ref)

    def counts(
        self,
        temps: np.ndarray,
        rng: np.random.Generator,
        ffc_phase_s: float = 0.0,
        housing_c: float | None = None,
        extra_blur_px: float = 0.0,
    ) -> np.ndarray:
        """(T, H, W) degrees Celsius to (T, H, W) uint16 raw counts (defects, quantization)."""
        bits = int(self.radiometry.bit_depth)
        c = self.counts_float(temps, rng, ffc_phase_s, housing_c, extra_blur_px)
        c = apply_dead_hot(c, self.defects, 0.0, 2**bits - 1)
        if self.params.replace_defects:
            c = replace_defects(c, self.defects)
        return quantize(c, bits).astype(np.uint16)
