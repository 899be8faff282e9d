"""Perspective stability: small homographies a re-aimed or refocused camera produces.

Each transform moves the four corners of the model-input frame (H x W pixels)
by at most `px` pixels and is applied with kornia to every frame of a tubelet
(in its units, before normalization, with border padding: a re-aimed camera
brings neighbouring scene in, which border replication approximates):

- `tilt`: keystone in y (top edge narrows by 2 px, bottom widens), as a camera
  tilting about its horizontal axis; `pan`: the same keystone in x;
- `roll`: rotation about the centre whose corner chord is `px`;
- `zoom`: scaling about the centre whose corner displacement is `px`.

A negative `px` gives the opposite direction. Pixel figures refer to the model
input size (`InputSpec.size`); multiply by window_px / size for camera pixels.

Representation stability (Bietti & Mairal, "Group Invariance, Stability to
Deformations, and Complexity of Deep Convolutional Representations", JMLR 2019):
for L_tau x(u) = x(u - tau(u)), r = ||phi(L_tau x) - phi(x)|| / ||phi(x)|| with
phi = `model.embed`, against ||grad tau||_inf (the largest spectral norm of the
Jacobian of tau over the frame); the fitted slope through the origin summarises
it. Shapes: raw tubelets (N, T, H, W); model input (N, 1, T, H, W).

Geometry features: a classifier trained with `input.geometry` (`model(x, geo)`) gets every
row's own (N, G) features, unchanged, for each warped version of its window: the sweep
asks how the decision moves when the pixels move under a small re-aim, with what the
calibration says about the window (its metres and camera pixels across) held fixed, as the
deployed classifier would see it until the camera is re-calibrated. A zoom that changes a
window's true metric scale therefore shows up only through the pixels. phi stays
`model.embed`, the image embedding (the geometry embedding is constant under the sweep).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from thermops.model.preprocess import InputSpec, normalize
from thermops.robustness.attacks import call_model, check_geometry

KINDS = ("tilt", "pan", "roll", "zoom")


def corners(h: int, w: int) -> torch.Tensor:
    """The frame's corners (4, 2) as (x, y): top-left, top-right, bottom-right, bottom-left."""
    return torch.tensor([[0.0, 0.0], [w - 1.0, 0.0], [w - 1.0, h - 1.0], [0.0, h - 1.0]])


def corner_offsets(kind: str, px: float, h: int, w: int) -> torch.Tensor:
    """Displacements (4, 2) of the corners for transform `kind` of size `px` (signed)."""
    if kind == "tilt":
        return torch.tensor([[px, 0.0], [-px, 0.0], [px, 0.0], [-px, 0.0]]) * torch.tensor(
            [[1.0], [1.0], [-1.0], [-1.0]]
        )
    if kind == "pan":
        return torch.tensor([[0.0, px], [0.0, -px], [0.0, px], [0.0, -px]]) * torch.tensor(
            [[1.0], [-1.0], [-1.0], [1.0]]
        )
    c = corners(h, w)
    centre = torch.tensor([(w - 1) / 2, (h - 1) / 2])
    rel = c - centre
    radius = float(rel.norm(dim=1).max())
    if kind == "roll":
        theta = 2 * math.asin(min(abs(px) / (2 * radius), 1.0)) * math.copysign(1.0, px)
        rot = torch.tensor([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
        return rel @ rot.T - rel
    if kind == "zoom":
        return rel * (px / radius)
    raise ValueError(f"unknown homography kind {kind!r}; known: {list(KINDS)}")


def scale_of_zoom(px: float, h: int, w: int) -> float:
    """The scale factor of a `zoom` transform of corner displacement `px`."""
    radius = math.hypot((w - 1) / 2, (h - 1) / 2)
    return 1.0 + px / radius


def homography(offsets: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, 4, 2) or (4, 2) corner displacements -> (B, 3, 3) homographies (input -> output pixels)."""
    from kornia.geometry.transform import get_perspective_transform

    off = offsets[None] if offsets.ndim == 2 else offsets
    src = corners(h, w).to(off)[None].expand_as(off)
    return get_perspective_transform(src, src + off)


def warp(raw: torch.Tensor, hom: torch.Tensor) -> torch.Tensor:
    """Apply homographies (B or 1, 3, 3) to every frame of (N, T, H, W) tubelets."""
    from kornia.geometry.transform import warp_perspective

    n, t, h, w = raw.shape
    if hom.shape[0] == 1 and n > 1:
        hom = hom.expand(n, 3, 3)
    return warp_perspective(raw, hom, dsize=(h, w), mode="bilinear", padding_mode="border", align_corners=True)


def grad_tau_norm(hom: torch.Tensor, h: int, w: int) -> float:
    """||grad tau||_inf for the deformation of homography `hom` (3, 3) on an H x W grid.

    The warped image at u samples the input at H^-1 u, so tau(u) = u - H^-1(u) and
    grad tau = I - J_{H^-1}(u); we return the largest spectral norm over the pixels.
    """
    hinv = torch.linalg.inv(hom.double())
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    u = torch.stack([xx.ravel(), yy.ravel(), torch.ones(h * w, dtype=torch.float64)])
    p = hinv @ u
    xs, ys, z = p[0] / p[2], p[1] / p[2], p[2]
    a, b, d, e, g, hh = hinv[0, 0], hinv[0, 1], hinv[1, 0], hinv[1, 1], hinv[2, 0], hinv[2, 1]
    jac = torch.stack([torch.stack([a - xs * g, b - xs * hh], -1), torch.stack([d - ys * g, e - ys * hh], -1)], -2)
    jac = jac / z[:, None, None]
    eye = torch.eye(2, dtype=torch.float64)
    return float(torch.linalg.matrix_norm(eye - jac, ord=2).max())


@torch.no_grad()
def _forward(
    model: nn.Module, x: torch.Tensor, geo: torch.Tensor | None = None, batch: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and image embeddings of (N, 1, T, H, W) (with the rows' geometry features) in eval mode."""
    logits, emb = [], []
    for i in range(0, len(x), batch):
        e = model.embed(x[i : i + batch])
        emb.append(e)
        if geo is not None:  # the head sees the geometry embedding too: the whole forward
            logits.append(model(x[i : i + batch], geo[i : i + batch]))
        else:
            logits.append(model.head(e) if hasattr(model, "head") else model(x[i : i + batch]))
    return torch.cat(logits), torch.cat(emb)


@torch.no_grad()
def sweep(
    model: nn.Module,
    raw: torch.Tensor,
    y: torch.Tensor,
    units: list[str],
    spec: InputSpec,
    magnitudes: list[float],
    kinds: tuple[str, ...] = KINDS,
    geo: torch.Tensor | None = None,
) -> list[dict]:
    """Accuracy, flip rate and representation stability over transforms x signed magnitudes.

    Args:
        raw: (N, T, H, W) tubelets in their units at the model's T, H, W.
        magnitudes: corner displacements in input pixels; each is applied with both signs.
        geo: (N, G) geometry features of the rows for a classifier that takes them; every warped
            window keeps its row's own features (module docstring).
    Returns: one row per (kind, signed px) with accuracy, flip_rate, r (mean), grad_tau, scale.
    """
    check_geometry(raw, geo, "perspective sweep")
    model.eval()
    n, t, h, w = raw.shape
    logits0, emb0 = _forward(model, normalize(raw, units, spec), geo)
    pred0 = logits0.argmax(1)
    norm0 = emb0.norm(dim=1).clamp_min(1e-12)
    rows = []
    for kind in kinds:
        for m in magnitudes:
            for px in (m, -m):
                hom = homography(corner_offsets(kind, px, h, w), h, w)
                logits, emb = _forward(model, normalize(warp(raw, hom), units, spec), geo)
                pred = logits.argmax(1)
                r = ((emb - emb0).norm(dim=1) / norm0).mean()
                rows.append(
                    {
                        "kind": kind,
                        "px": float(px),
                        "accuracy": float((pred == y).float().mean()),
                        "flip_rate": float((pred != pred0).float().mean()),
                        "r": float(r),
                        "grad_tau": grad_tau_norm(hom[0], h, w),
                        "scale": scale_of_zoom(px, h, w) if kind == "zoom" else 1.0,
                    }
                )
    return rows


def stability_slope(rows: list[dict]) -> float:
    """Least-squares slope through the origin of r against ||grad tau||."""
    num = sum(r["grad_tau"] * r["r"] for r in rows)
    den = sum(r["grad_tau"] ** 2 for r in rows)
    return num / den if den > 0 else float("nan")


def worst_case(
    model: nn.Module,
    raw: torch.Tensor,
    y: torch.Tensor,
    units: list[str],
    spec: InputSpec,
    budget_px: float,
    steps: int = 10,
    seed: int = 0,
    geo: torch.Tensor | None = None,
) -> dict:
    """Worst-case homography per tubelet by signed-gradient ascent on the loss.

    Each of the 8 corner coordinates moves at most `budget_px` input pixels
    (an L-inf budget on the corner displacements). Returns accuracy and flip rate
    under the worst case found, the mean largest corner displacement used, and the
    offsets (N, 4, 2). `geo`: the rows' geometry features, held fixed (module docstring).
    """
    check_geometry(raw, geo, "worst-case homography")
    model.eval()
    n, t, h, w = raw.shape
    gen = torch.Generator().manual_seed(seed)
    off = ((torch.rand(n, 4, 2, generator=gen) * 2 - 1) * budget_px * 0.25).requires_grad_(True)
    alpha = 2.5 * budget_px / max(steps, 1)
    with torch.no_grad():
        pred0 = call_model(model, normalize(raw, units, spec), geo).argmax(1)
    for _ in range(steps):
        logits = call_model(model, normalize(warp(raw, homography(off, h, w)), units, spec), geo)
        loss = F.cross_entropy(logits, y, reduction="sum")
        (g,) = torch.autograd.grad(loss, off)
        with torch.no_grad():
            off += alpha * g.sign()
            off.clamp_(-budget_px, budget_px)
    with torch.no_grad():
        pred = call_model(model, normalize(warp(raw, homography(off, h, w)), units, spec), geo).argmax(1)
    return {
        "budget_px": float(budget_px),
        "steps": int(steps),
        "n": int(n),
        "accuracy": float((pred == y).float().mean()),
        "clean_accuracy": float((pred0 == y).float().mean()),
        "flip_rate": float((pred != pred0).float().mean()),
        "mean_max_corner_px": float(off.detach().norm(dim=2).amax(1).mean()),
        "offsets": off.detach(),
    }
