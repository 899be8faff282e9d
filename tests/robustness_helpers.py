"""Helpers for the robustness and gate tests: tiny models trained in seconds on structured tubelets.

Models are trained on `tests/training_helpers.make_prepared` data (class-shaped warm
blobs), at a reduced input (4 x 16 x 16) and width (8, 16), plain or with PGD
adversarial training (`thermops.learn.adversarial.pgd`, the training engineer's Madry loop).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from params_helpers import from_params
from torch import nn

from thermops.config import merge_params
from thermops.data.prepared import load_prepared
from thermops.model.card import make_card, save_model_dir
from thermops.model.network import ModelConfig, TubeletClassifier
from thermops.model.preprocess import InputSpec, prepare_batch

CLASSES = ["person", "vehicle", "animal", "nuisance"]
SPEC = from_params(InputSpec, "input", frames=4, size=16, celsius_scale_k=5.0, robust_floor=1.0)
CFG = from_params(ModelConfig, "model", widths=(8, 16), embed_dim=16, dropout=0.0, size="tiny", blocks_per_stage=1)


def split_xy(prepared: Path, split: str, spec: InputSpec = SPEC) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 1, T, H, W) model input and (N,) labels of one split."""
    data = load_prepared(prepared)
    idx = data.indices(split)
    x = prepare_batch(np.asarray(data.tubelets[idx]), [data.rows[i]["units"] for i in idx], spec)
    return x, torch.as_tensor(data.labels(CLASSES)[idx])


def train_tiny(prepared: Path, epochs: int = 12, adv_eps: float = 0.0, seed: int = 0) -> TubeletClassifier:
    """Train a tiny classifier on the train split; `adv_eps` > 0 trains on L-inf PGD examples (Madry)."""
    from thermops.learn.adversarial import AdversarialConfig, pgd

    torch.manual_seed(seed)
    x, y = split_xy(prepared, "train")
    model = TubeletClassifier(CFG, len(CLASSES))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(seed)
    acfg = AdversarialConfig(enabled=True, epsilon=adv_eps, steps=3, step_size=adv_eps / 2, clean_weight=0.0)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 16):
            b = perm[i : i + 16]
            xb, yb = x[b], y[b]
            if adv_eps > 0:
                xb = pgd(model, xb, yb, acfg, gen)
            model.train()
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def save_tiny(directory: Path, model: nn.Module) -> Path:
    """Write a model dir (model.pt + card.json) for the tiny model."""
    card = make_card(
        classes=CLASSES,
        model_cfg=CFG,
        input_spec=SPEC,
        calibrations={"cam0": "cam0-v1"},
        data={"source": "tests/training_helpers"},
    )
    save_model_dir(directory, model, card)
    return directory


class QuantizedInput(nn.Module):
    """Gradient masking by input quantization: rounds the input before the real model (zero gradients)."""

    def __init__(self, model: nn.Module, step: float = 0.5):
        super().__init__()
        self.model, self.step = model, step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.round(x / self.step) * self.step)


class ArgmaxInside(nn.Module):
    """Gradient masking by an argmax inside the forward: returns one-hot scores, detached from x."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.one_hot(self.model(x).argmax(1), 4).float() * 10.0


def gate_params(**over) -> dict:
    """A `gate` params section sized for tests (small subsets, few steps), with `over` merged in."""
    p = {
        "enforce": True,
        "split": "test",
        "threads": 1,
        "attack_subset": 40,
        "threat_models": {
            "linf": {"eps": [0.05, 0.1, 0.2], "large_eps": 1.0, "attacks": ["fgsm", "pgd", "apgd_ce", "apgd_dlr"]},
            "l2": {"eps": [0.5, 1.0, 2.0], "large_eps": 20.0, "attacks": ["pgd", "apgd_ce", "cw_l2"]},
        },
        "pgd": {"steps": 8, "restarts": 1, "step_size": 0.3},
        "apgd": {"steps": 8},
        "cw": {"subset": 8, "steps": 30, "search_steps": 3, "c_init": 1.0, "lr": 0.02},
        "sanity": {
            "monotone_tol": 0.05,
            "large_eps_max_accuracy": 0.05,
            "more_steps_factor": 2,
            "more_steps_tol": 0.05,
            "max_zero_grad_fraction": 0.0,
            "black_box_tol": 0.05,
            "random_draws": 2,
        },
        "corruptions": {"subset": 24, "names": [], "severities": {}},
        "perspective": {
            "subset": 24,
            "magnitudes_px": [0.5, 1.0, 2.0],
            "decision_px": 1.0,
            "worst_case": {"subset": 8, "budget_px": 1.0, "steps": 3},
        },
        "radiometric": {"gain_changes": [0.1, 0.3], "offset_k": [0.5, 2.0]},
        "thresholds": {
            "clean_accuracy": 0.4,
            "robust_accuracy": {"linf": {0.05: 0.0}, "l2": {0.5: 0.0}},
            "max_mean_ce": 1.5,
            "max_flip_rate": 0.5,
            "max_stability_slope": 10.0,
        },
        "regression": {"accuracy_tol": 0.03, "relative_tol": 0.1, "z": 1.0, "min_camera_n": 10},
        "report": {"examples": 2, "occlusion_window": [2, 8, 8]},
    }
    return merge_params(p, over)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: two threads spin-wait badly on the shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
