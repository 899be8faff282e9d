"""Class probabilities of a model directory's classifier on rows of a prepared dataset."""

from __future__ import annotations

import numpy as np
import torch

from thermops.data.prepared import PreparedData
from thermops.learn.datasets import model_inputs
from thermops.learn.engine import predict
from thermops.model.card import input_spec_from_card


def probabilities(model: torch.nn.Module, card: dict, data: PreparedData, idx: np.ndarray, device="cpu") -> np.ndarray:
    """(len(idx), C) softmax probabilities on rows `idx`, through the card's input contract (the one
    preprocessing of training, the gate and the service)."""
    if len(idx) == 0:
        return np.zeros((0, len(card["classes"])))
    logits = predict(model, model_inputs(data, np.asarray(idx), input_spec_from_card(card)), torch.device(device))
    return torch.softmax(logits.float(), dim=1).numpy().astype(np.float64)
