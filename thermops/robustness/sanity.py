"""Sanity checks against gradient masking (Carlini et al., "On Evaluating Adversarial
Robustness", 2019; Athalye, Carlini & Wagner, "Obfuscated Gradients Give a False
Sense of Security", ICML 2018).

Every check returns a dict {name, passed, value, limit, detail}; the gate reports
them with every number and fails when any fails:

- `monotone_in_eps`: worst-case robust accuracy never rises with eps (up to a tolerance);
- `zero_at_large_eps`: at a large eps robust accuracy is about 0, where "large" is at least
  as far as the nearest known adversarial example of the row (below);
- `more_steps_not_weaker`: PGD with more steps never leaves more samples robust;
- `gradients_finite_nonzero`: the input gradient of the (non-saturating) margin loss
  is finite and non-zero for every sample;
- `black_box_not_stronger`: random noise never breaks more than the white-box attacks.
"""

from __future__ import annotations

import torch
from torch import nn

from thermops.robustness.attacks import NORMS, call_model, margin, predict


def _check(name: str, passed: bool, value, limit, detail: str) -> dict:
    return {"name": name, "passed": bool(passed), "value": value, "limit": limit, "detail": detail}


def monotone_in_eps(curve: dict[float, float], tol: float, threat: str) -> dict:
    """Robust accuracy over increasing eps ({eps: acc}) must not rise by more than `tol`."""
    eps = sorted(curve)
    rises = [curve[b] - curve[a] for a, b in zip(eps, eps[1:])]
    worst = max(rises, default=0.0)
    return _check(
        f"monotone_in_eps[{threat}]",
        worst <= tol,
        worst,
        tol,
        f"largest rise of robust accuracy between consecutive eps {eps}",
    )


def nearest_known_adversarial(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor, norm: str, geo: torch.Tensor | None = None
) -> torch.Tensor:
    """(len(rows),) distance, in `norm` (model-input units, per tubelet), from each row in `rows`
    to the nearest tubelet of `x` that the model classifies as another class than the row's
    label; inf where it classifies every tubelet of `x` as that class.

    Each candidate is a known adversarial example of the row inside a ball of that radius: the
    row's own geometry features (a classifier that takes them) with another row's pixels, a
    pixel-only change. So an attack that leaves the row its class at that radius is beaten by
    a swap: the mark of masked gradients (Carlini et al. 2019: an unbounded attack must
    succeed), where a fixed large eps can be short of a high-contrast tubelet's margin.
    """
    if norm not in NORMS:
        raise ValueError(f"nearest_known_adversarial: norm {norm!r} is not one of {list(NORMS)}")
    flat = x.reshape(len(x), -1)
    shared = predict(model, x) if geo is None else None  # a geometry-free model: one prediction per tubelet
    out = torch.full((len(rows),), float("inf"))
    for k, i in enumerate(rows.tolist()):
        pred = shared if geo is None else predict(model, x, geo[i : i + 1].expand(len(x), -1))
        other = pred != y[i]
        if other.any():
            diff = flat[other] - flat[i]
            out[k] = float((diff.norm(dim=1) if norm == "l2" else diff.abs().amax(1)).min())
    return out


def zero_at_large_eps(acc: float, large_eps: float, limit: float, threat: str, reach: dict) -> dict:
    """Robust accuracy at the large eps must be at most `limit` (about 0), where "large" reaches as
    far as each row's nearest known adversarial.

    `acc`: robust accuracy at `large_eps`. `reach` (from `thermops.robustness.evaluate.large_eps_reach`):
    the rows still robust at `large_eps` attacked again at the distance of their nearest known
    adversarial example where that is farther. The check counts the rows still robust there
    (`kept`); a row no tubelet's pixels move (`no_known_adversarial`, robust to every pixel input
    tried) is reported and not counted: it is evidence of neither masking nor its absence.
    """
    n, kept, unmoved = reach["n"], len(reach["kept"]), len(reach["no_known_adversarial"])
    value = kept / max(n, 1)
    detail = f"robust accuracy at eps {large_eps}: {acc:.3f} ({len(reach['rows'])} of {n})"
    radii = [r for r in reach["radius"] if r is not None]
    if radii:
        detail += (
            f"; their nearest known adversarial (another tubelet's pixels the model classifies otherwise, "
            f"with the row's own geometry) lies at {min(radii):.3g}-{max(radii):.3g}; attacked out to the "
            f"farther of the two, {kept} keep their class"
        )
    if unmoved:
        detail += f"; {unmoved} with no known adversarial, not counted"
    return _check(f"zero_at_large_eps[{threat}]", value <= limit, value, limit, detail)


def more_steps_not_weaker(
    acc_few: float, acc_many: float, steps: tuple[int, int], tol: float, threat: str, eps: float
) -> dict:
    """PGD with more steps must not leave more samples robust than with fewer."""
    rise = acc_many - acc_few
    return _check(
        f"more_steps_not_weaker[{threat}]",
        rise <= tol,
        rise,
        tol,
        f"PGD eps {eps}: robust accuracy {acc_few:.3f} at {steps[0]} steps, {acc_many:.3f} at {steps[1]} steps",
    )


def input_gradients(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, geo: torch.Tensor | None = None
) -> tuple[torch.Tensor, int, int]:
    """Per-sample L2 norm (N,) of d margin / d x, plus counts of zero and non-finite gradients.

    `geo`: the rows' (N, G) geometry features for a classifier that takes them (held fixed;
    the gradient is with respect to the pixels only).

    The margin Z_y - max_j Z_j is used rather than the cross-entropy because the
    cross-entropy of a confident model underflows to an exactly zero gradient,
    which is saturation, not masking. A forward whose output is detached from the
    input (argmax inside) counts as all-zero gradients.
    """
    was = model.training
    model.eval()
    try:
        xg = x.detach().clone().requires_grad_(True)
        logits = call_model(model, xg, geo)
        if not logits.requires_grad:
            g = torch.zeros_like(xg)
        else:
            (g,) = torch.autograd.grad(margin(logits, y).sum(), xg, allow_unused=True)
            g = torch.zeros_like(xg) if g is None else g
    finally:
        model.train(was)
    finite = torch.isfinite(g.reshape(len(g), -1)).all(1)
    norms = torch.where(finite, g.reshape(len(g), -1).nan_to_num().norm(dim=1), torch.full((len(g),), float("nan")))
    zero = int(((norms == 0) & finite).sum())
    return norms, zero, int((~finite).sum())


def gradients_finite_nonzero(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, max_zero_fraction: float, geo: torch.Tensor | None = None
) -> dict:
    """No NaN/inf gradients, and at most `max_zero_fraction` of samples with an all-zero gradient."""
    norms, zero, nonfinite = input_gradients(model, x, y, geo)
    frac = zero / max(len(x), 1)
    ok = nonfinite == 0 and frac <= max_zero_fraction
    return _check(
        "gradients_finite_nonzero",
        ok,
        {"zero": zero, "nonfinite": nonfinite, "n": len(x)},
        max_zero_fraction,
        f"{zero} of {len(x)} samples with zero input gradient, {nonfinite} non-finite",
    )


def black_box_not_stronger(black: dict[float, float], white: dict[float, float], tol: float, threat: str) -> dict:
    """At every eps, random-noise robust accuracy >= white-box worst-case robust accuracy - tol."""
    gaps = {e: white[e] - black[e] for e in black if e in white}
    worst = max(gaps.values(), default=0.0)
    return _check(
        f"black_box_not_stronger[{threat}]",
        worst <= tol,
        worst,
        tol,
        "largest excess of white-box over random-noise robust accuracy, by eps: "
        + ", ".join(f"{e}: {g:+.3f}" for e, g in sorted(gaps.items())),
    )
