"""Model-input preprocessing shared by prepare, training, the gate and the service.

The one path from a camera's pixel values to the network input:
`to_model_units` (counts -> degrees Celsius through the calibration, or the
camera's own units), `resample` (to the model's T x S x S) and `normalize`
(physical or robust scaling, with the one `robust_spread`). One `InputSpec` is
saved in the model card; the service rebuilds it from there, so training and
serving cannot drift apart.

Shapes: a tubelet is (T, H, W); a batch is (N, T, H, W); the model takes
(N, 1, T, H, W).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # the training path imports with torch, numpy and pyyaml alone (no pydantic)
    from thermops.camera.calibration import Calibration

# Units a model can be trained on for radiometric cameras (recorded in its card);
# display8 cameras always give `display8`.
RADIOMETRIC_UNITS = ("celsius", "counts")
IQR_TO_SIGMA = 1.349  # interquartile range of a standard normal distribution


@dataclass(frozen=True)
class InputSpec:
    """The model's input contract.

    Attributes:
        frames: T the network sees.
        size: H = W the network sees.
        celsius_scale_k: kelvin of contrast that map to one unit for `celsius` tubelets
            (physical scaling: the same contrast means the same input on every camera).
        robust_floor: lower bound of the robust spread for `counts` / `display8` tubelets,
            so that a flat tubelet is not blown up into noise.
        geometry: names of the window's geometry features the classifier takes beside the
            pixels (GEOMETRY_FEATURES; `geometry_features` computes them); empty: none.
    """

    frames: int
    size: int
    celsius_scale_k: float
    robust_floor: float
    geometry: tuple[str, ...]

    def __post_init__(self):
        bad = [g for g in self.geometry if g not in GEOMETRY_FEATURES]
        if bad:
            raise ValueError(f"input.geometry {bad} not in {list(GEOMETRY_FEATURES)}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["geometry"] = list(self.geometry)
        return d


# Geometry features of a tubelet's window (what the camera's calibration says about it):
#   metric_scale   log(window_m / REF_WINDOW_M): metres the window covers at the object's range
#                  (window_px / pixels-per-metre at its ground point), 0 when the geometry is unknown;
#   pixel_scale    log(window_px / size): camera pixels across the window per model-input pixel
#                  (>0: downsampled, <0: upsampled from few pixels);
#   known          1 when the camera geometry gave metric_scale, else 0.
GEOMETRY_FEATURES = ("metric_scale", "pixel_scale", "known")
REF_WINDOW_M = 4.0


def geometry_features(window_m: float | None, window_px: float, spec: InputSpec) -> list[float]:
    """The spec's geometry features of one window: `window_m` metres (None: unknown geometry) and
    `window_px` camera pixels across (the tubelet's side before resampling)."""
    import math

    if window_px <= 0 or (window_m is not None and not window_m > 0):
        raise ValueError(f"window of {window_px} px / {window_m} m: both must be positive")
    values = {
        "metric_scale": 0.0 if window_m is None else math.log(window_m / REF_WINDOW_M),
        "pixel_scale": math.log(window_px / spec.size),
        "known": 0.0 if window_m is None else 1.0,
    }
    return [values[g] for g in spec.geometry]


def to_model_units(
    values: np.ndarray, cal: Calibration, radiometric_units: str, source_units: str | None = None
) -> tuple[np.ndarray, str]:
    """A camera's pixel values -> float32 values in the units the model works in, and those units.

    Args:
        values: raw pixel values, any shape.
        cal: the camera's calibration.
        radiometric_units: `celsius` (counts become degrees Celsius through the
            calibration) or `counts` (kept as they are), for radiometric cameras.
        source_units: what the values are (`counts` or `display8`); default: what the
            calibration says the camera gives. A radiometric camera whose data were
            recorded after AGC (8-bit display levels) is `display8`.
    Returns:
        (values as float32, `celsius` | `counts` | `display8`).
    """
    if radiometric_units not in RADIOMETRIC_UNITS:
        raise ValueError(f"radiometric units {radiometric_units!r} is not one of {RADIOMETRIC_UNITS}")
    source = source_units or ("counts" if cal.radiometry.radiometric else "display8")
    if source == "display8":
        return values.astype(np.float32), "display8"
    if radiometric_units == "celsius" and cal.radiometry.radiometric:
        return cal.radiometry.counts_to_celsius(values).astype(np.float32), "celsius"
    return values.astype(np.float32), "counts"


def robust_spread(x: torch.Tensor, floor: float = 0.0) -> torch.Tensor:
    """(N, ...) -> (N,): the interquartile range / 1.349 of each row, at least `floor`.

    The standard deviation of a normal sample, insensitive to hot pixels and to
    an object covering part of the window.
    """
    flat = x.reshape(len(x), -1)
    flat = flat if flat.is_floating_point() else flat.float()
    q = torch.quantile(flat, torch.tensor([0.25, 0.75], dtype=flat.dtype), dim=1)
    return torch.clamp((q[1] - q[0]) / IQR_TO_SIGMA, min=floor)


def resample(tubelet: torch.Tensor | np.ndarray, frames: int, size: int) -> torch.Tensor:
    """Resample a (T, H, W) or (N, T, H, W) tubelet to (.., frames, size, size).

    Spatially: area averaging when shrinking (no aliasing of hot pixels), bilinear
    when enlarging. Temporally: linear interpolation; a single frame is repeated.
    """
    x = torch.as_tensor(np.asarray(tubelet) if not torch.is_tensor(tubelet) else tubelet).float()
    squeeze = x.ndim == 3
    if squeeze:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"expected (T, H, W) or (N, T, H, W), got shape {tuple(x.shape)}")
    n, t, h, w = x.shape
    if (h, w) != (size, size):
        mode = "area" if h >= size and w >= size else "bilinear"
        kw = {} if mode == "area" else {"align_corners": False}
        x = F.interpolate(x, size=(size, size), mode=mode, **kw)
    if t != frames:
        if t == 1:
            x = x.expand(n, frames, size, size)
        else:
            v = x.permute(0, 2, 3, 1).reshape(n, size * size, t)
            v = F.interpolate(v, size=frames, mode="linear", align_corners=True)
            x = v.reshape(n, size, size, frames).permute(0, 3, 1, 2)
    x = x.contiguous()
    return x[0] if squeeze else x


def normalize(x: torch.Tensor, units: list[str] | str, spec: InputSpec) -> torch.Tensor:
    """(N, T, H, W) tubelets in their units -> (N, 1, T, H, W) network input.

    `celsius`: subtract the tubelet median, divide by `celsius_scale_k` (contrast in
    physical units). `counts` and `display8`: subtract the median, divide by the
    robust spread (IQR / 1.349, at least `robust_floor`), since their scale carries
    no temperature.
    """
    if x.ndim != 4:
        raise ValueError(f"expected (N, T, H, W), got shape {tuple(x.shape)}")
    n = x.shape[0]
    units = [units] * n if isinstance(units, str) else list(units)
    if len(units) != n:
        raise ValueError(f"{len(units)} units for {n} tubelets")
    flat = x.reshape(n, -1).float()
    med = torch.quantile(flat, torch.tensor(0.5, dtype=flat.dtype), dim=1)
    robust = robust_spread(flat, spec.robust_floor)
    celsius = torch.tensor([u == "celsius" for u in units], dtype=torch.bool)
    scale = torch.where(celsius, torch.full_like(robust, spec.celsius_scale_k), robust)
    out = (flat - med[:, None]) / scale[:, None]
    return out.reshape(x.shape)[:, None]


def prepare_batch(tubelets, units: list[str] | str, spec: InputSpec) -> torch.Tensor:
    """Resample then normalize: what every consumer of the model calls."""
    return normalize(resample(tubelets, spec.frames, spec.size), units, spec)
