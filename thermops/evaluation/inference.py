"""Class probabilities of a model directory's classifier on rows of a prepared dataset."""

from __future__ import annotations

import numpy as np
import torch

from thermops.data.prepared import PreparedData
from thermops.learn.datasets import model_inputs, row_geometry
from thermops.learn.engine import predict
from thermops.model.card import input_spec_from_card


def probabilities(model: torch.nn.Module, card: dict, data: PreparedData, idx: np.ndarray, device="cpu") -> np.ndarray:
    """(len(idx), C) softmax probabilities on rows `idx`, through the card's input contract (the one
    preprocessing of training, the gate and the service)."""
    if len(idx) == 0:
        return np.zeros((0, len(card["classes"])))
    idx = np.asarray(idx)
    spec = input_spec_from_card(card)
    # a classifier trained with `input.geometry` takes each window's geometry features too
    # (from the manifest's window_m / window_px; `known` 0 where the camera's geometry is unknown)
    geo = row_geometry(data, idx, spec)
    logits = predict(model, model_inputs(data, idx, spec), torch.device(device), geo=geo)
    return torch.softmax(logits.float(), dim=1).numpy().astype(np.float64)
