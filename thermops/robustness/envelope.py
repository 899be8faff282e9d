"""The validated envelope: how far geometry and radiometry may drift before the model
falls below its thresholds.

The calibration watcher reads these keys from the gated model card:

    envelope.geometric.max_corner_px     largest corner displacement (tilt, pan, roll),
                                         in model-input pixels (InputSpec.size)
    envelope.geometric.max_scale_change  largest |scale - 1| of a zoom
    envelope.radiometric.max_gain_change largest relative gain change of counts->temperature
    envelope.radiometric.max_offset_k    largest non-uniform offset drift, kelvin corner to corner

A magnitude is inside the envelope when it and every smaller tested magnitude,
in both directions and for every transform kind, keep accuracy >= the clean
accuracy threshold and flip rate <= the flip-rate threshold. 0.0 means not even
the smallest tested change is tolerated. A spatially uniform offset is removed by
the per-tubelet median normalization, so only the non-uniform part is tested
(`uniform_offset_invariant: true` says so).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from thermops.model.preprocess import InputSpec, normalize, robust_spread
from thermops.robustness.attacks import call_model


def _units_scale(raw: torch.Tensor, units: list[str], spec: InputSpec) -> torch.Tensor:
    """(N,) factor converting kelvin into each tubelet's units (1 for celsius)."""
    spread = robust_spread(raw, spec.robust_floor) / spec.celsius_scale_k
    return torch.tensor([1.0 if u == "celsius" else float(s) for u, s in zip(units, spread)])


def gain_drift(raw: torch.Tensor, change: float) -> torch.Tensor:
    """Scale the signal around each tubelet's median by (1 + change): a counts->temperature gain error."""
    med = raw.reshape(len(raw), -1).median(dim=1).values[:, None, None, None]
    return med + (1.0 + change) * (raw - med)


def offset_drift(raw: torch.Tensor, kelvin: float, units: list[str], spec: InputSpec) -> torch.Tensor:
    """Add a linear offset gradient of `kelvin` from one corner to the opposite one (diagonal)."""
    n, t, h, w = raw.shape
    yy, xx = torch.meshgrid(torch.linspace(-0.5, 0.5, h), torch.linspace(-0.5, 0.5, w), indexing="ij")
    ramp = (xx + yy) / 2.0  # -0.5 .. 0.5 along the diagonal: corner-to-corner difference of exactly 1
    k = _units_scale(raw, units, spec)[:, None, None, None]
    return raw + kelvin * k * ramp[None, None]


@torch.no_grad()
def radiometric_sweep(
    model: nn.Module,
    raw: torch.Tensor,
    y: torch.Tensor,
    units: list[str],
    spec: InputSpec,
    gains: list[float],
    offsets_k: list[float],
    geo: torch.Tensor | None = None,
) -> list[dict]:
    """Accuracy and flip rate under gain changes (both signs) and non-uniform offset drifts (both signs).

    `geo`: the rows' (N, G) geometry features for a classifier that takes them, held fixed: a
    radiometric drift changes the temperatures a window reads, not where it is or how large.
    """
    model.eval()
    pred0 = call_model(model, normalize(raw, units, spec), geo).argmax(1)
    rows = []
    for kind, values in (("gain", gains), ("offset", offsets_k)):
        for v in values:
            for s in (v, -v):
                drifted = gain_drift(raw, s) if kind == "gain" else offset_drift(raw, s, units, spec)
                pred = call_model(model, normalize(drifted, units, spec), geo).argmax(1)
                rows.append(
                    {
                        "kind": kind,
                        "value": float(s),
                        "accuracy": float((pred == y).float().mean()),
                        "flip_rate": float((pred != pred0).float().mean()),
                    }
                )
    return rows


def _largest_ok(rows: list[dict], key: str, min_accuracy: float, max_flip_rate: float) -> float:
    """Largest |key| such that every row with |key| <= it meets both thresholds."""
    mags = sorted({abs(r[key]) for r in rows})
    best = 0.0
    for m in mags:
        at = [r for r in rows if abs(r[key]) <= m + 1e-12]
        if all(r["accuracy"] >= min_accuracy and r["flip_rate"] <= max_flip_rate for r in at):
            best = m
        else:
            break
    return float(best)


def envelope(
    geo_rows: list[dict],
    radio_rows: list[dict],
    *,
    min_accuracy: float,
    max_flip_rate: float,
    spec: InputSpec,
    window_px: float | None,
    clean_ok: bool = True,
) -> dict:
    """The validated envelope from the perspective sweep rows and the radiometric sweep rows."""
    shape_rows = [r for r in geo_rows if r["kind"] != "zoom"]
    zoom_rows = [dict(r, scale_change=r["scale"] - 1.0) for r in geo_rows if r["kind"] == "zoom"]
    by_kind = {
        k: _largest_ok([r for r in geo_rows if r["kind"] == k], "px", min_accuracy, max_flip_rate)
        for k in sorted({r["kind"] for r in geo_rows})
    }
    out = {
        "geometric": {
            "max_corner_px": _largest_ok(shape_rows, "px", min_accuracy, max_flip_rate),
            "max_scale_change": _largest_ok(zoom_rows, "scale_change", min_accuracy, max_flip_rate),
            "max_corner_px_by_kind": by_kind,
            "units": "model-input pixels",
            "input_size_px": spec.size,
            "window_px_median": window_px,
            "note": "camera pixels = input pixels x window_px / input_size_px (window_px from the tubelet manifest)",
        },
        "radiometric": {
            "max_gain_change": _largest_ok(
                [r for r in radio_rows if r["kind"] == "gain"], "value", min_accuracy, max_flip_rate
            ),
            "max_offset_k": _largest_ok(
                [r for r in radio_rows if r["kind"] == "offset"], "value", min_accuracy, max_flip_rate
            ),
            "offset_kind": "linear gradient, kelvin corner to corner (non-uniform part of an offset drift)",
            "uniform_offset_invariant": True,
            "celsius_scale_k": spec.celsius_scale_k,
        },
        "criterion": {
            "min_accuracy": min_accuracy,
            "max_flip_rate": max_flip_rate,
            "tested_corner_px": sorted({abs(r["px"]) for r in geo_rows}),
            "tested_gain_changes": sorted({abs(r["value"]) for r in radio_rows if r["kind"] == "gain"}),
            "tested_offset_k": sorted({abs(r["value"]) for r in radio_rows if r["kind"] == "offset"}),
        },
    }
    if not clean_ok:  # a model below its clean threshold has an empty envelope
        for part, keys in (
            ("geometric", ("max_corner_px", "max_scale_change")),
            ("radiometric", ("max_gain_change", "max_offset_k")),
        ):
            for k in keys:
                out[part][k] = 0.0
    return out


def median_window_px(rows: list[dict[str, str]]) -> float | None:
    """Median `window_px` of manifest rows (None when unknown)."""
    vals = []
    for r in rows:
        try:
            vals.append(float(r.get("window_px", "")))
        except ValueError:
            continue
    return float(np.median(vals)) if vals else None
