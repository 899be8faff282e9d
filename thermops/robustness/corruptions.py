"""Thermal corruptions at 5 severities, built on the sensor model (`thermops.camera.sensor`).

The torchattacks shape again: `Corruption` owns the shared concerns (shape
checks, per-tubelet seeding, unit scaling, severity lookup); each corruption is
one class with one `forward(x, severity_value, rng)` on a single (T, H, W)
tubelet; `REGISTRY` maps names to classes.

Corruptions act on tubelets in their own units BEFORE normalization (as the
camera would produce them), after resampling to the model's (T, H, W); the gate
then runs `thermops.model.preprocess.normalize`. Magnitudes are kelvin for `celsius`
tubelets; for `counts` / `display8` tubelets (no temperature) a kelvin figure is
converted with the tubelet's robust spread over `InputSpec.celsius_scale_k`, so
that a corruption moves the model input by the same amount whatever the units.

Severity tables (5 levels each) follow ../shared/THERMAL-FACTS.md: NETD 30-50 mK
for good cores and 60-100 mK for old ones (the levels go well beyond); residual
column FPN of a few tens of mK after NUC; offsets drifting between flat-field
corrections; cos^4 vignetting; dead/hot pixel fractions; 8-bit AGC output.
They can be overridden per corruption in params (`gate.corruptions.severities`).
Reference for the protocol: Hendrycks & Dietterich, "Benchmarking Neural Network
Robustness to Common Corruptions and Perturbations", ICLR 2019 (ImageNet-C).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from thermops.camera import sensor
from thermops.model.preprocess import robust_spread


class Corruption:
    """Base class: one thermal corruption with a 5-level severity table.

    Args:
        severities: the 5 magnitudes (units per class docstring); defaults to `SEVERITIES`.
        celsius_scale_k: kelvin per model-input unit (for unit conversion of non-celsius tubelets).
        robust_floor: floor of the robust spread (as `InputSpec.robust_floor`).
    """

    name: ClassVar[str] = "corruption"
    SEVERITIES: ClassVar[tuple[float, ...]] = ()
    kelvin: ClassVar[bool] = True  # magnitudes are kelvin (converted for non-celsius units)

    def __init__(
        self,
        severities: tuple[float, ...] | list[float] | None = None,
        *,
        celsius_scale_k: float = 5.0,
        robust_floor: float = 1.0,
    ):
        self.severities = tuple(float(s) for s in (severities if severities is not None else self.SEVERITIES))
        if len(self.severities) != 5:
            raise ValueError(f"{self.name}: expected 5 severities, got {len(self.severities)}")
        self.celsius_scale_k, self.robust_floor = celsius_scale_k, robust_floor

    def __call__(
        self, tubelets: np.ndarray, severity: int, units: list[str] | str = "celsius", seed: int = 0
    ) -> np.ndarray:
        """(N, T, H, W) tubelets in their units -> corrupted copy, severity 1..5.

        Tubelet i uses the generator seeded with (seed, i), so severities of one
        corruption share their random patterns (monotone in magnitude).
        """
        x = np.asarray(tubelets, dtype=np.float64)
        if x.ndim != 4:
            raise ValueError(f"{self.name}: expected (N, T, H, W), got shape {x.shape}")
        if not 1 <= severity <= 5:
            raise ValueError(f"{self.name}: severity must be 1..5, got {severity}")
        units = [units] * len(x) if isinstance(units, str) else list(units)
        value = self.severities[severity - 1]
        out = np.empty_like(x)
        for i, t in enumerate(x):
            rng = np.random.default_rng([seed, i])
            k = 1.0
            if self.kelvin and units[i] != "celsius":
                k = float(robust_spread(torch.from_numpy(t)[None], self.robust_floor)) / self.celsius_scale_k
            out[i] = self.forward(t, value, k, rng)
        return out.astype(np.float32)

    def forward(self, x: np.ndarray, value: float, k: float, rng: np.random.Generator) -> np.ndarray:
        """(T, H, W) -> (T, H, W); `k` converts kelvin to the tubelet's units."""
        raise NotImplementedError


class ColumnRowFPN(Corruption):
    """Residual column (and weaker row, 1/3) striping, sigma in kelvin: `sensor.column_row_fpn`."""

    name = "column_row_fpn"
    SEVERITIES = (0.05, 0.1, 0.2, 0.4, 0.8)

    def forward(self, x, value, k, rng):
        return x + sensor.column_row_fpn(x.shape, value * k, value * k / 3, rng)[None]


class NUCDrift(Corruption):
    """Per-pixel gain/offset drift of the NUC tables: `sensor.pixel_nonuniformity`.

    Severity value v: gain sigma v % and offset sigma v/10 K; gain acts on the
    signal around the tubelet median (the scene level the NUC was made at).
    """

    name = "nuc_drift"
    SEVERITIES = (0.5, 1.0, 2.0, 4.0, 8.0)

    def forward(self, x, value, k, rng):
        gain, offset = sensor.pixel_nonuniformity(x.shape, value / 100.0, value / 10.0 * k, rng)
        med = float(np.median(x))
        return med + gain[None] * (x - med) + offset[None]


class FFCOffsetRamp(Corruption):
    """Offset ramp since the last flat-field correction: `sensor.offset_ramp`, K per frame.

    The ramp follows a low-frequency spatial shading (the housing warms unevenly),
    since a spatially uniform ramp would vanish under the per-tubelet median
    normalization only in its mean. The shading runs from 0.5 to 1.5 across the frame.
    """

    name = "ffc_offset_ramp"
    SEVERITIES = (0.05, 0.1, 0.2, 0.4, 0.8)

    def forward(self, x, value, k, rng):
        t, h, w = x.shape
        ramp = sensor.offset_ramp(t, value * k, start=0.0)  # (T, 1, 1)
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:h, 0:w]
        proj = np.cos(angle) * (xx / max(w - 1, 1) - 0.5) + np.sin(angle) * (yy / max(h - 1, 1) - 0.5)
        shade = 1.0 + proj / max(np.abs(proj).max(), 1e-9) * 0.5
        return x + ramp * shade[None]


class Vignetting(Corruption):
    """cos^4 fall-off toward a housing 5 K below the tubelet median: `sensor.vignetting_map`."""

    name = "vignetting"
    SEVERITIES = (0.05, 0.1, 0.2, 0.3, 0.45)  # strength is relative; only the housing offset is kelvin

    def forward(self, x, value, k, rng):
        t, h, w = x.shape
        ref = float(np.median(x)) - 5.0 * k
        return sensor.apply_vignetting(x, sensor.vignetting_map(h, w, value), ref)


class DeadHotPixels(Corruption):
    """Dead (stuck at min - 5 K) and hot (max + 5 K) pixels, fraction: `sensor.dead_hot_pixels`."""

    name = "dead_hot_pixels"
    SEVERITIES = (0.002, 0.005, 0.01, 0.02, 0.05)  # fraction; only the stuck levels are kelvin

    def forward(self, x, value, k, rng):
        defects = sensor.dead_hot_pixels(x.shape, value, rng)
        pad = 5.0 * k
        return sensor.apply_dead_hot(x, defects, float(x.min()) - pad, float(x.max()) + pad)


class HigherNETD(Corruption):
    """Extra temporal noise of `value` kelvin per pixel per frame: `sensor.temporal_noise`."""

    name = "netd"
    SEVERITIES = (0.05, 0.1, 0.2, 0.4, 0.8)

    def forward(self, x, value, k, rng):
        return x + sensor.temporal_noise(x.shape, value * k, rng)


class Defocus(Corruption):
    """Gaussian defocus blur, sigma in model-input pixels: `sensor.defocus`."""

    name = "defocus"
    kelvin = False
    SEVERITIES = (0.5, 0.75, 1.0, 1.5, 2.0)

    def forward(self, x, value, k, rng):
        return sensor.defocus(x, value)


class AGCRemap(Corruption):
    """Plateau-equalization AGC re-mapping (`sensor.agc_plateau`), mapped back to units.

    The 8-bit equalized levels are mapped linearly onto the tubelet's own
    [p1, p99] range and blended with the original by the severity value (0..1):
    a frame-by-frame nonlinear tone curve, as when a camera's AGC mode changes.
    """

    name = "agc_remap"
    kelvin = False
    SEVERITIES = (0.1, 0.25, 0.5, 0.75, 1.0)

    def forward(self, x, value, k, rng):
        lo, hi = np.percentile(x, [1, 99])
        eq = sensor.agc_plateau(x).astype(np.float64) / 255.0 * (hi - lo) + lo
        return (1 - value) * x + value * eq


class Truncation8Bit(Corruption):
    """8-bit truncation over an AGC span of `value` kelvin: `sensor.quantize(bits=8)`.

    Levels are span/255 apart (0.08 K to 1.25 K); the span is centred on the
    tubelet median, so values outside it clip.
    """

    name = "truncation_8bit"
    SEVERITIES = (20.0, 40.0, 80.0, 160.0, 320.0)

    def forward(self, x, value, k, rng):
        span = value * k
        lo = float(np.median(x)) - span / 2
        step = span / 255.0
        return sensor.quantize((x - lo) / step, 8) * step + lo


REGISTRY: dict[str, type[Corruption]] = {
    c.name: c
    for c in (
        ColumnRowFPN,
        NUCDrift,
        FFCOffsetRamp,
        Vignetting,
        DeadHotPixels,
        HigherNETD,
        Defocus,
        AGCRemap,
        Truncation8Bit,
    )
}


def build_corruption(name: str, severities: list[float] | None = None, **kw) -> Corruption:
    """Instantiate registry entry `name` (optionally with a 5-level severity table)."""
    if name not in REGISTRY:
        raise KeyError(f"unknown corruption {name!r}; known: {sorted(REGISTRY)}")
    return REGISTRY[name](severities, **kw)
