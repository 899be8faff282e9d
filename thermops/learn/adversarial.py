"""PGD adversarial training (Madry et al., "Towards Deep Learning Models Resistant to
Adversarial Attacks", ICLR 2018).

The attack is the gate's PGD (`thermops.robustness.attacks.PGD`) in its
loss-maximizing mode: an L-infinity projected gradient ascent on the cross-entropy,
with a uniform random start inside the ball. The budget is in model-input units (the
normalized input of `thermops.model.preprocess`: for `celsius` tubelets one unit is
`InputSpec.celsius_scale_k` kelvin), and the input is unbounded, so there is no
clamp to an image range. The attack runs with the model in eval mode, so that its
forward passes do not move the BatchNorm running statistics; training then
continues in train mode on the adversarial (and optionally clean) batch.

Shapes: x (N, 1, T, H, W), y (N,).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from thermops.learn.datasets import unpack
from thermops.learn.distributed import unwrap
from thermops.robustness.attacks import PGD


@dataclass(frozen=True)
class AdversarialConfig:
    """params `finetune.adversarial`.

    Attributes:
        enabled: train on PGD examples.
        epsilon: L-inf radius in model-input units.
        steps: PGD iterations.
        step_size: per-iteration step in model-input units.
        clean_weight: weight of the clean loss beside the adversarial one (0: pure Madry).
    """

    enabled: bool
    epsilon: float
    steps: int
    step_size: float
    clean_weight: float


def pgd(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: AdversarialConfig, gen: torch.Generator
) -> torch.Tensor:
    """An L-inf PGD example of x (N, 1, T, H, W) within `cfg.epsilon`, detached.

    The gate's PGD (`thermops.robustness.attacks.PGD`) in its loss-maximizing mode:
    every sample is attacked for every step from a random start, seeded from `gen`.
    """
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
    attack = PGD(
        model,
        cfg.epsilon,
        "linf",
        steps=cfg.steps,
        step_size=cfg.step_size / max(cfg.epsilon, 1e-12),
        maximize_loss=True,
        seed=seed,
    )
    return attack(x, y)


def adversarial_loss(cfg: AdversarialConfig, prepare=None, label_smoothing: float = 0.0):
    """Supervised loss on PGD examples plus `clean_weight` x the clean loss, in one forward pass.

    `prepare(x, gen, px)` (augmentation; px: camera pixels across each window, or None) is applied
    before the attack. One forward over the concatenated batch keeps DDP to one forward per
    backward.
    """

    def loss_fn(model: nn.Module, batch: tuple[torch.Tensor, ...], gen: torch.Generator) -> torch.Tensor:
        x, geo, px, y = unpack(batch)
        if geo is not None:
            raise ValueError(
                "adversarial training takes (x, [px], y) batches: geometry features (input.geometry) are not supported"
            )
        if prepare is not None:
            x = prepare(x, gen, px)
        x_adv = pgd(unwrap(model), x, y, cfg, gen)
        n = len(x)
        if cfg.clean_weight > 0:
            per = F.cross_entropy(
                model(torch.cat([x_adv, x])), torch.cat([y, y]), reduction="none", label_smoothing=label_smoothing
            )
            return (per[:n].mean() + cfg.clean_weight * per[n:].mean()) / (1 + cfg.clean_weight)
        return F.cross_entropy(model(x_adv), y, label_smoothing=label_smoothing)

    return loss_fn
