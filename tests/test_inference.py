"""thermops.evaluation.inference: the card's input contract, geometry features included."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from thermops.config import load_params, section
from thermops.data.prepared import PreparedData
from thermops.evaluation.inference import probabilities
from thermops.model.network import ModelConfig, TubeletClassifier
from thermops.model.preprocess import InputSpec

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["person", "vehicle", "animal", "nuisance"]


def _setup(geometry: tuple[str, ...]):
    params = load_params(ROOT / "params.yaml")
    spec = dataclasses.replace(section(params, "input", InputSpec), geometry=geometry)
    card = {"classes": CLASSES, "input": {**dataclasses.asdict(spec), "geometry": list(geometry)}}
    torch.manual_seed(0)
    model = TubeletClassifier(section(params, "model", ModelConfig), len(CLASSES), geo_dim=len(geometry))
    # a geometry embedding trained to notice scale: make its first layer far from zero
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.5) if p.dim() > 1 else torch.nn.init.zeros_(p)
    rng = np.random.default_rng(0)
    tubelets = rng.normal(0, 1, (3, spec.frames, spec.size, spec.size)).astype(np.float32)
    rows = [
        {"tubelet_id": f"t{i}", "units": "celsius", "window_m": wm, "window_px": "32"}
        for i, wm in enumerate(["2.0", "8.0", ""])  # the last camera's geometry is unknown
    ]
    return model, card, tubelets, rows


def test_a_classifier_taking_geometry_gets_each_rows_own_features():
    model, card, tubelets, rows = _setup(("metric_scale", "known"))
    idx = np.arange(3)
    p = probabilities(model, card, PreparedData(tubelets, rows), idx)
    assert p.shape == (3, 4) and np.allclose(p.sum(1), 1.0)
    # the same pixels with row 1's window twice as large: only row 1 moves
    moved = [dict(r) for r in rows]
    moved[1]["window_m"] = "16.0"
    q = probabilities(model, card, PreparedData(tubelets, moved), idx)
    assert np.allclose(p[[0, 2]], q[[0, 2]]) and not np.allclose(p[1], q[1])


def test_a_classifier_without_geometry_ignores_the_window_metres():
    model, card, tubelets, rows = _setup(())
    moved = [{**r, "window_m": "16.0"} for r in rows]
    idx = np.arange(3)
    a = probabilities(model, card, PreparedData(tubelets, rows), idx)
    b = probabilities(model, card, PreparedData(tubelets, moved), idx)
    assert np.array_equal(a, b)


@pytest.mark.parametrize("geometry", [("metric_scale", "known"), ()])
def test_no_rows_no_probabilities(geometry):
    model, card, tubelets, rows = _setup(geometry)
    assert probabilities(model, card, PreparedData(tubelets, rows), np.arange(0)).shape == (0, 4)
