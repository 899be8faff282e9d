"""Temporal, geometric and thermal augmentations of model inputs, batched on the device.

They act on the normalized network input (N, 1, T, H, W) so that they run on the
GPU with the model and draw every random number from one `torch.Generator`
(reproducible, and resumable epoch by epoch). Why these:

- spatial crop/scale/flip: the tubelet window is centred on a tracker's box, which
  is off by a few pixels and by some scale; objects walk either way;
- temporal speed, shift and reversal: the same class moves at different speeds
  and in either direction; frame rates differ between cameras (9 Hz vs 30 Hz);
- thermal gain, offset, temporal noise (NETD) and column striping (residual
  fixed-pattern noise between flat-field corrections): what changes between
  cameras, weather and hours without changing what the object is
  (see /work/shared/THERMAL-FACTS.md);
- range (`far`): the same object k times farther away covers k times fewer camera
  pixels, so its window reaches the network resampled from fewer pixels (blurred,
  its edges mixed with the background). Simulated by area-downsampling the window to
  the px / k camera pixels it would cover (px: the window's `window_px`; capped at the
  input side S) and resampling it back to S, as `prepare` resamples a small window; a
  classifier that takes geometry features gets its `pixel_scale` moved by -log k
  (`augment_with_geometry`): the metric extent, what the object is, stays;
- unknown geometry (`geometry_drop`, `augment_with_geometry`), for a classifier that
  takes geometry features: a share of views is marked as of a camera without geometry
  (`metric_scale` 0, `known` 0), as every imported real set is, so that such cameras are
  in distribution and the pixels alone must carry the class there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    """Strengths of the augmentations (params `pretrain.augment` / `finetune.augment`)."""

    crop_scale: tuple[float, float]  # side fraction of the crop window
    max_shift: float  # of the half-width, in grid units
    flip: bool
    speed: tuple[float, float]
    reverse_p: float
    gain: tuple[float, float]
    offset: float
    noise: float
    stripes: float
    far_p: float  # share of tubelets simulated farther away
    far_max: float  # up to this many times farther (log-uniform in [1, far_max])
    geometry_drop: float  # share of views given unknown geometry (a classifier with input.geometry only)

    def __post_init__(self):
        if not 0.0 <= self.geometry_drop <= 1.0:
            raise ValueError(f"geometry_drop {self.geometry_drop} is not a share in [0, 1]")


def _uniform(n: int, lo: float, hi: float, g: torch.Generator, device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, device=device)


def spatial(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Random crop-and-resize, shift and horizontal flip, the same for all frames of a tubelet."""
    n, c, t, h, w = x.shape
    dev = x.device
    s = _uniform(n, *cfg.crop_scale, g, dev)
    tx = _uniform(n, -cfg.max_shift, cfg.max_shift, g, dev)
    ty = _uniform(n, -cfg.max_shift, cfg.max_shift, g, dev)
    sx = s * (torch.where(torch.rand(n, generator=g, device=dev) < 0.5, -1.0, 1.0) if cfg.flip else 1.0)
    theta = torch.zeros(n, 2, 3, device=dev, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, 0, 2], theta[:, 1, 2] = sx, s, tx, ty
    grid = F.affine_grid(theta, (n, c * t, h, w), align_corners=False)
    y = F.grid_sample(x.reshape(n, c * t, h, w), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return y.reshape(n, c, t, h, w)


def temporal(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Random playback speed about a random centre, with edge frames repeated, and reversal."""
    n, c, t, h, w = x.shape
    dev = x.device
    speed = torch.exp(_uniform(n, math.log(cfg.speed[0]), math.log(cfg.speed[1]), g, dev))
    centre = _uniform(n, 0.0, t - 1.0, g, dev)
    pos = centre[:, None] + (torch.arange(t, device=dev, dtype=x.dtype)[None] - (t - 1) / 2) * speed[:, None]
    rev = torch.rand(n, generator=g, device=dev) < cfg.reverse_p
    pos = torch.where(rev[:, None], pos.flip(1), pos).clamp(0, t - 1)
    lo = pos.floor().long().clamp(0, t - 1)
    hi = (lo + 1).clamp(max=t - 1)
    frac = (pos - lo.to(pos.dtype)).to(x.dtype)[:, None, :, None, None]
    take = lambda idx: torch.gather(x, 2, idx[:, None, :, None, None].expand(n, c, t, h, w))  # noqa: E731
    return take(lo) * (1 - frac) + take(hi) * frac


def thermal(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Random contrast gain, offset, temporal noise and column stripes."""
    n, c, t, h, w = x.shape
    dev = x.device
    gain = torch.exp(_uniform(n, math.log(cfg.gain[0]), math.log(cfg.gain[1]), g, dev)).view(n, 1, 1, 1, 1)
    off = _uniform(n, -cfg.offset, cfg.offset, g, dev).view(n, 1, 1, 1, 1)
    sigma = _uniform(n, 0.0, cfg.noise, g, dev).view(n, 1, 1, 1, 1)
    noise = torch.randn(x.shape, generator=g, device=dev, dtype=x.dtype) * sigma
    stripe_on = (torch.rand(n, generator=g, device=dev) < 0.5).to(x.dtype).view(n, 1, 1, 1, 1)
    stripes = torch.randn((n, 1, 1, 1, w), generator=g, device=dev, dtype=x.dtype) * cfg.stripes * stripe_on
    return x * gain + off + noise + stripes


def far(
    x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator, px: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The object up to `far_max` times farther: (view, factor (N,) k applied, 1 when untouched).

    `px` (N,): camera pixels across each window (the manifest's `window_px`). k times farther the
    window covers px / k camera pixels; the view is the input area-downsampled to that many
    pixels (never more than the input's side: a window still covering more camera pixels than
    the network sees keeps all its detail) and resampled back, as `prepare` resamples a window
    cut from few pixels. So a near vehicle 300 px across stays sharp at k = 4 (75 px), while a
    person 60 px across is cut to 15 px. Without `px` every window is taken as covering exactly
    the input's side (k times farther: side / k, snapped to 4 px), which over-blurs windows cut
    from many pixels.
    """
    n, c, t, h, w = x.shape
    dev = x.device
    on = torch.rand(n, generator=g, device=dev) < cfg.far_p
    k = torch.exp(_uniform(n, 0.0, math.log(max(cfg.far_max, 1.0)), g, dev))
    if px is None:
        # sides snapped to multiples of 4 px: at most H/4 distinct sizes, one batched resample each
        side = torch.where(on, torch.clamp(torch.round(h / k / 4) * 4, min=4, max=h), torch.full_like(k, h)).long()
        factor = h / side.to(x.dtype)
    else:
        # whole camera pixels, at least 2 (the `prepare` minimum is larger): at most H distinct sizes
        seen = torch.clamp(torch.round(px.to(dev, x.dtype) / k), min=2.0)
        side = torch.where(on & (seen < h), seen, torch.full_like(k, h)).long()
        factor = torch.where(on, k, torch.ones_like(k))
    out = x
    for s in torch.unique(side).tolist():
        if s == h:
            continue
        idx = torch.nonzero(side == s).flatten()
        part = x[idx].reshape(len(idx), c * t, h, w)
        lo = F.interpolate(part, size=(s, round(s * w / h)), mode="area")
        back = F.interpolate(lo, size=(h, w), mode="bilinear", align_corners=False)
        out = out.index_copy(0, idx, back.reshape(len(idx), c, t, h, w))
    return out, factor


def _augment(
    x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator, px: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    x = thermal(spatial(temporal(x, cfg, g), cfg, g), cfg, g)
    if cfg.far_p > 0:
        return far(x, cfg, g, px)
    return x, torch.ones(len(x), device=x.device, dtype=x.dtype)


def augment(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator, px: torch.Tensor | None = None) -> torch.Tensor:
    """One random view of a batch (N, 1, T, H, W): temporal, then spatial, then thermal, then range
    (`px`: camera pixels across each window, see `far`)."""
    return _augment(x, cfg, g, px)[0]


def augment_with_geometry(
    x: torch.Tensor,
    geo: torch.Tensor,
    cfg: AugmentConfig,
    g: torch.Generator,
    geometry: tuple[str, ...],
    px: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`augment` for a classifier with geometry features `geometry` (N, G): a view simulated k times
    farther gets its `pixel_scale` lowered by log k, as `geometry_features` would compute it; then
    `geometry_drop` (unknown geometry), which draws random numbers only when it is on."""
    view, k = _augment(x, cfg, g, px)
    geo = geo.clone()
    if "pixel_scale" in geometry:
        i = geometry.index("pixel_scale")
        geo[:, i] = geo[:, i] - torch.log(k).to(geo.dtype)
    unknown = [geometry.index(f) for f in ("metric_scale", "known") if f in geometry]
    if cfg.geometry_drop > 0 and unknown:
        drop = torch.rand(len(geo), generator=g, device=geo.device) < cfg.geometry_drop
        for i in unknown:
            geo[drop, i] = 0.0
    return view, geo
