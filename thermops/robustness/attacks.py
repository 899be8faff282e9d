"""White-box (and one black-box) evasion attacks on 5-D tubelets, torchattacks-shaped.

A base class `Attack` owns what every attack shares: the device, eval mode (restored
afterwards), the `(N, 1, T, H, W)` shape check, the optional box clamp and the
projection onto the threat model's ball. Each attack is one class with one
`forward(x, y) -> x_adv`. `REGISTRY` groups the attacks by threat model (`linf`,
`l2`, `black_box`), as AutoAttack's protocol reports robust accuracy per norm as
the per-sample worst case over an ensemble of attacks.

Units: epsilon is in model-input units (after `thermops.model.preprocess.normalize`);
for `celsius` tubelets one unit is `InputSpec.celsius_scale_k` kelvin. Norms are
per tubelet (over all C*T*H*W values).

References:
- FGSM: Goodfellow, Shlens, Szegedy, "Explaining and Harnessing Adversarial
  Examples", ICLR 2015.
- PGD: Madry et al., "Towards Deep Learning Models Resistant to Adversarial
  Attacks", ICLR 2018 (random start, restarts).
- C&W L2: Carlini & Wagner, "Towards Evaluating the Robustness of Neural
  Networks", IEEE S&P 2017 (margin loss, binary search over the constant c).
- APGD-CE / APGD-DLR: Croce & Hein, "Reliable evaluation of adversarial robustness
  with an ensemble of diverse parameter-free attacks", ICML 2020 (AutoAttack).

Geometry features: a classifier trained with `input.geometry` is called `model(x, geo)`
with each row's (N, G) window geometry (`thermops.model.preprocess.geometry_features`).
The threat model perturbs pixels only: `attack(x, y, geo)` keeps every row's geometry
fixed and, wherever an attack works on a subset of rows (PGD's active samples, APGD's
unfooled ones, `predict`'s chunks), it feeds that subset's rows of `geo` with it (an
index, never a call order). `geo=None` is the geometry-free classifier, called `model(x)`.

Only torch is imported here; ART is used in the tests and the benchmark to
cross-check these implementations.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("linf", "l2")


def _flat_norm(x: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample norm of (N, ...) as (N,)."""
    flat = x.reshape(x.shape[0], -1)
    return flat.abs().amax(dim=1) if norm == "linf" else flat.norm(dim=1)


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.ndim - 1)))


def project(delta: torch.Tensor, eps: float | torch.Tensor, norm: str) -> torch.Tensor:
    """Project perturbations (N, ...) onto the `norm` ball of radius `eps`."""
    if norm == "linf":
        e = eps if not torch.is_tensor(eps) else _bcast(eps, delta)
        return torch.maximum(torch.minimum(delta, e), -e) if torch.is_tensor(e) else delta.clamp(-e, e)
    n = _flat_norm(delta, "l2").clamp_min(1e-12)
    e = eps if torch.is_tensor(eps) else torch.full_like(n, float(eps))
    return delta * _bcast(torch.clamp(e / n, max=1.0), delta)


def normalized_step(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """Steepest-ascent direction of unit size: sign for L-inf, grad/||grad|| for L2."""
    if norm == "linf":
        return grad.sign()
    return grad / _bcast(_flat_norm(grad, "l2").clamp_min(1e-12), grad)


def random_in_ball(like: torch.Tensor, eps: float, norm: str, gen: torch.Generator) -> torch.Tensor:
    """A uniform random point in the `norm` ball (L2: uniform direction, radius ~ U^(1/d))."""
    if norm == "linf":
        return (torch.rand(like.shape, generator=gen, device=like.device) * 2 - 1) * eps
    g = torch.randn(like.shape, generator=gen, device=like.device)
    d = g[0].numel()
    r = torch.rand(like.shape[0], generator=gen, device=like.device) ** (1.0 / d) * eps
    return normalized_step(g, "l2") * _bcast(r, g)


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference-of-logits-ratio loss (Croce & Hein 2020), per sample (N,); needs >= 3 classes."""
    s, _ = logits.sort(dim=1)
    zy = logits.gather(1, y[:, None])[:, 0]
    top_is_y = logits.argmax(1) == y
    z_other = torch.where(top_is_y, s[:, -2], s[:, -1])
    denom = (s[:, -1] - s[:, -3]).clamp_min(1e-12) if logits.shape[1] >= 3 else torch.ones_like(zy)
    return -(zy - z_other) / denom


def call_model(model: nn.Module, x: torch.Tensor, geo: torch.Tensor | None = None) -> torch.Tensor:
    """`model(x)`, or `model(x, geo)` for a classifier taking (N, G) geometry features of the same rows."""
    return model(x) if geo is None else model(x, geo)


def rows_of(geo: torch.Tensor | None, idx) -> torch.Tensor | None:
    """The rows `idx` (an index, a mask or a slice) of (N, G) geometry features; None stays None."""
    return None if geo is None else geo[idx]


def check_geometry(x: torch.Tensor, geo: torch.Tensor | None, who: str) -> None:
    """Geometry features must be (N, G), one row per tubelet of x."""
    if geo is not None and (geo.ndim != 2 or len(geo) != len(x)):
        raise ValueError(f"{who}: geometry features of shape {tuple(geo.shape)} for {len(x)} tubelets, expected (N, G)")


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Z_y - max_{j != y} Z_j per sample (N,): negative means misclassified."""
    zy = logits.gather(1, y[:, None])[:, 0]
    other = logits.clone()
    other.scatter_(1, y[:, None], -math.inf)
    return zy - other.amax(1)


class Attack:
    """Base class: device, eval mode, shapes, clamping and the threat model.

    Args:
        model: a classifier (N, 1, T, H, W) -> (N, K) logits, or ((N, 1, T, H, W), (N, G)
            geometry features) -> (N, K) when called with `geo`.
        eps: radius of the threat model's ball, model-input units, per tubelet.
        norm: `linf` or `l2`.
        bounds: optional (low, high) box the adversarial input is clamped to.
        seed: seed of the attack's own random generator (random starts, noise).
    """

    name: ClassVar[str] = "attack"
    norms: ClassVar[tuple[str, ...]] = NORMS

    def __init__(
        self,
        model: nn.Module,
        eps: float,
        norm: str = "linf",
        *,
        bounds: tuple[float, float] | None = None,
        seed: int = 0,
    ):
        if norm not in self.norms:
            raise ValueError(f"{self.name}: norm {norm!r} is not one of {list(self.norms)}")
        if eps < 0:
            raise ValueError(f"{self.name}: eps must be >= 0, got {eps}")
        self.model, self.eps, self.norm, self.bounds, self.seed = model, float(eps), norm, bounds, seed
        self.device = next(model.parameters()).device if any(True for _ in model.parameters()) else torch.device("cpu")
        self.n_grad = 0  # gradient evaluations x samples, for throughput figures

    def __call__(self, x: torch.Tensor, y: torch.Tensor, geo: torch.Tensor | None = None) -> torch.Tensor:
        """(N, 1, T, H, W) inputs and (N,) labels -> adversarial inputs of the same shape.

        `geo`: (N, G) geometry features of the rows, for a classifier that takes them; they are
        not perturbed, and every forward on a subset of rows takes the same rows of `geo`.
        """
        if x.ndim != 5 or x.shape[1] != 1:
            raise ValueError(f"{self.name}: expected (N, 1, T, H, W), got {tuple(x.shape)}")
        if y.shape != (x.shape[0],):
            raise ValueError(f"{self.name}: expected {x.shape[0]} labels, got shape {tuple(y.shape)}")
        check_geometry(x, geo, self.name)
        self.geo = None if geo is None else geo.detach().to(self.device).float()
        was_training = self.model.training
        self.model.eval()  # BatchNorm and dropout must not move under attack
        self.gen = torch.Generator(device=self.device).manual_seed(self.seed)
        try:
            x = x.detach().to(self.device).float()
            y = y.detach().to(self.device).long()
            adv = self.forward(x, y).detach()
        finally:
            self.model.train(was_training)
        # Every attack's output is checked against its own threat model.
        adv = x + project(adv - x, self.eps, self.norm) if self.bounded else adv
        return self.clamp(adv)

    bounded: ClassVar[bool] = True  # C&W is a minimal-perturbation attack: not projected

    def clamp(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.bounds is None else x.clamp(*self.bounds)

    geo: torch.Tensor | None = None  # the (N, G) geometry features of the rows being attacked

    def logits(self, x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of x, which holds the attacked rows `rows` (an index or a mask into them; None: all
        rows, in order): a geometry-taking classifier gets exactly those rows' features."""
        return call_model(self.model, x, self.geo if rows is None else rows_of(self.geo, rows))

    def grad(
        self, x: torch.Tensor, y: torch.Tensor, loss: str = "ce", rows: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample loss gradient w.r.t. x: (grad, per-sample loss, logits); x holds rows `rows`."""
        x = x.clone().requires_grad_(True)
        logits = self.logits(x, rows)
        per = F.cross_entropy(logits, y, reduction="none") if loss == "ce" else dlr_loss(logits, y)
        self.n_grad += x.shape[0]
        if not per.requires_grad:  # a forward detached from its input (argmax inside): no gradient at all
            return torch.zeros_like(x), per.detach(), logits.detach()
        (g,) = torch.autograd.grad(per.sum(), x, allow_unused=True)
        g = torch.zeros_like(x) if g is None else g
        return g.detach(), per.detach(), logits.detach()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class FGSM(Attack):
    """Fast gradient sign method: one L-inf step of size eps (Goodfellow et al. 2015)."""

    name = "fgsm"
    norms = ("linf",)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        g, _, _ = self.grad(x, y)
        return x + self.eps * g.sign()


class PGD(Attack):
    """Projected gradient descent with random start and restarts (Madry et al. 2018).

    Args (beyond `Attack`):
        steps: iterations per restart.
        step_size: step as a fraction of eps (2.5 / steps is Madry's rule).
        restarts: random restarts; a sample counts as broken if any restart breaks it.
        random_start: start from a uniform point in the ball (else from x).
        early_stop: drop samples from later steps once misclassified (their adversarial
            point is kept), which saves most of the work on a fragile model; False runs
            every sample for every step, as ART does (same result, for timing comparisons).
        maximize_loss: attack every sample, misclassified or not, for every step and
            return the last iterate: the loss-maximizing inner problem of adversarial
            training (Madry et al.), not the accuracy-breaking search of an evaluation.
    """

    name = "pgd"

    def __init__(
        self,
        model: nn.Module,
        eps: float,
        norm: str = "linf",
        *,
        steps: int = 10,
        step_size: float | None = None,
        restarts: int = 1,
        random_start: bool = True,
        early_stop: bool = True,
        maximize_loss: bool = False,
        **kw,
    ):
        super().__init__(model, eps, norm, **kw)
        self.steps, self.restarts, self.random_start = int(steps), int(restarts), random_start
        self.early_stop, self.maximize_loss = early_stop, maximize_loss
        self.alpha = (step_size if step_size is not None else 2.5 / max(self.steps, 1)) * self.eps

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.maximize_loss:
            return self._ascend(x, y)
        best = x.clone()
        with torch.no_grad():
            active = self.logits(x).argmax(1) == y  # only correct samples need attacking
        for _ in range(self.restarts):
            if not active.any():
                break
            idx = active.nonzero()[:, 0]
            xa, ya = x[idx], y[idx]
            adv = xa + random_in_ball(xa, self.eps, self.norm, self.gen) if self.random_start else xa.clone()
            adv = self.clamp(adv)
            done = torch.zeros(len(idx), dtype=torch.bool, device=x.device)
            for _ in range(self.steps):
                g, _, logits = self.grad(adv, ya, rows=idx)
                fooled = (logits.argmax(1) != ya) & ~done
                if fooled.any() and not self.early_stop:  # record the first adversarial point, keep stepping
                    best[idx[fooled]] = adv[fooled]
                    active[idx[fooled]] = False
                    done |= fooled
                elif fooled.any():  # keep the first adversarial point found, drop the sample
                    best[idx[fooled]] = adv[fooled]
                    active[idx[fooled]] = False
                    keep = ~fooled
                    done = done[keep]
                    idx, xa, ya, adv, g = idx[keep], xa[keep], ya[keep], adv[keep], g[keep]
                    if len(idx) == 0:
                        break
                adv = self.clamp(
                    xa + project(adv + self.alpha * normalized_step(g, self.norm) - xa, self.eps, self.norm)
                )
            if not self.early_stop:  # drop what was recorded before the final check
                idx, xa, ya, adv = idx[~done], xa[~done], ya[~done], adv[~done]
            if len(idx):
                with torch.no_grad():
                    fooled = self.logits(adv, idx).argmax(1) != ya
                best[idx[fooled]] = adv[fooled]
                active[idx[fooled]] = False
                still = idx[~fooled]
                best[still] = adv[~fooled]  # not broken: keep the last iterate (a valid in-ball point)
        return best

    def _ascend(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Every sample, every step: projected ascent on the cross-entropy; the last iterate."""
        adv = x + random_in_ball(x, self.eps, self.norm, self.gen) if self.random_start else x.clone()
        adv = self.clamp(adv)
        for _ in range(self.steps):
            g, _, _ = self.grad(adv, y)
            adv = self.clamp(x + project(adv + self.alpha * normalized_step(g, self.norm) - x, self.eps, self.norm))
        return adv


class APGD(Attack):
    """Auto-PGD (Croce & Hein 2020): step-size halving at checkpoints, momentum 0.75.

    Args (beyond `Attack`):
        steps: iterations N; checkpoints at p_j N with p_0=0, p_1=0.22,
            p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06).
        loss: `ce` (APGD-CE) or `dlr` (APGD-DLR, scale-invariant margin).
        rho: a step size is halved when fewer than rho of the steps since the last
            checkpoint increased the loss (or the best loss did not move).
    """

    name = "apgd"

    def __init__(
        self,
        model: nn.Module,
        eps: float,
        norm: str = "linf",
        *,
        steps: int = 20,
        loss: str = "ce",
        rho: float = 0.75,
        **kw,
    ):
        super().__init__(model, eps, norm, **kw)
        if loss not in ("ce", "dlr"):
            raise ValueError(f"apgd: loss {loss!r} is not ce or dlr")
        self.steps, self.loss, self.rho = int(steps), loss, rho
        self.name = f"apgd_{loss}"

    def checkpoints(self) -> list[int]:
        p = [0.0, 0.22]
        while p[-1] < 1:
            p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
        return sorted({int(math.ceil(q * self.steps)) for q in p[1:] if q < 1})

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        checks = set(self.checkpoints())
        eta = torch.full((n,), 2.0 * self.eps, device=x.device)
        step = lambda a, g, e: self.clamp(
            x + project(a + _bcast(e, a) * normalized_step(g, self.norm) - x, self.eps, self.norm)
        )  # noqa: E731
        x0 = self.clamp(x + random_in_ball(x, self.eps, self.norm, self.gen) * 0.5)
        g, f0, logits = self.grad(x0, y)
        adv = x.clone()
        with torch.no_grad():
            wrong = self.logits(x).argmax(1) != y  # already misclassified: nothing to attack
        fooled = (logits.argmax(1) != y) | wrong
        adv[fooled] = x0[fooled]
        x_best, f_best = x0.clone(), f0.clone()
        x_prev, x_k = x0, step(x0, g, eta)
        g, f_k, logits = self.grad(x_k, y)
        new = (logits.argmax(1) != y) & ~fooled
        adv[new], fooled = x_k[new], fooled | new
        up = f_k > f_best
        x_best[up], f_best[up] = x_k[up], f_k[up]
        count = up.float()
        last, eta_last, fbest_last = 0, eta.clone(), f_best.clone()
        for k in range(1, self.steps - 1):
            z = step(x_k, g, eta)
            x_new = self.clamp(x + project(x_k + 0.75 * (z - x_k) + 0.25 * (x_k - x_prev) - x, self.eps, self.norm))
            x_prev = x_k
            # Only samples not yet fooled need a gradient: the others keep their adversarial point.
            act = (~fooled).nonzero()[:, 0]
            g_new, f_new, logits = torch.zeros_like(g), f_k.clone(), torch.zeros(n, logits.shape[1], device=x.device)
            g_new[act], f_new[act], logits[act] = self.grad(x_new[act], y[act], rows=act)
            logits[fooled] = -F.one_hot(y[fooled], logits.shape[1]).float()  # keeps them counted as fooled
            new = (logits.argmax(1) != y) & ~fooled
            adv[new], fooled = x_new[new], fooled | new
            count += (f_new > f_k).float()
            up = f_new > f_best
            x_best[up], f_best[up] = x_new[up], f_new[up]
            x_k, g, f_k = x_new, g_new, f_new
            if k in checks:
                cond1 = count < self.rho * (k - last)
                cond2 = (eta_last == eta) & (fbest_last == f_best)
                halve = cond1 | cond2
                eta_last, fbest_last = eta.clone(), f_best.clone()
                eta = torch.where(halve, eta / 2, eta)
                # Restart from the best point where the step was halved.
                x_k = torch.where(_bcast(halve, x_k), x_best, x_k)
                halve &= ~fooled
                if halve.any():
                    g2, f2, _ = self.grad(x_k[halve], y[halve], rows=halve)
                    g[halve], f_k[halve] = g2, f2
                count.zero_()
                last = k
            if fooled.all():
                break
        adv[~fooled] = x_best[~fooled]
        return adv


class CarliniWagnerL2(Attack):
    """Carlini & Wagner L2 (2017): minimise ||delta||^2 + c * max(margin, -kappa) with Adam.

    A minimal-perturbation attack: the binary search over c finds the smallest
    perturbation that flips each sample. Robust accuracy at eps counts a sample as
    robust when it is correctly classified and C&W found no flip of L2 norm <= eps
    (`eps` is used only for that count; the output is not projected). No tanh box
    change of variables is used unless `bounds` is given (model-input units have no
    natural box); with bounds, the result is clamped.

    Args (beyond `Attack`):
        steps: Adam iterations per binary-search step.
        search_steps: binary-search steps over c.
        c_init: initial constant; lr: Adam learning rate; kappa: confidence.
    """

    name = "cw_l2"
    norms = ("l2",)
    bounded = False

    def __init__(
        self,
        model: nn.Module,
        eps: float,
        norm: str = "l2",
        *,
        steps: int = 30,
        search_steps: int = 3,
        c_init: float = 1.0,
        lr: float = 0.02,
        kappa: float = 0.0,
        **kw,
    ):
        super().__init__(model, eps, norm, **kw)
        self.steps, self.search_steps, self.c_init, self.lr, self.kappa = steps, search_steps, c_init, lr, kappa

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        lo = torch.zeros(n, device=x.device)
        hi = torch.full((n,), math.inf, device=x.device)
        c = torch.full((n,), self.c_init, device=x.device)
        best_norm = torch.full((n,), math.inf, device=x.device)
        best = x.clone()
        for _ in range(self.search_steps):
            delta = torch.zeros_like(x, requires_grad=True)
            opt = torch.optim.Adam([delta], lr=self.lr)
            success = torch.zeros(n, dtype=torch.bool, device=x.device)
            for _ in range(self.steps):
                adv = self.clamp(x + delta)
                logits = self.logits(adv)
                m = margin(logits, y)
                l2 = delta.reshape(n, -1).pow(2).sum(1)
                loss = (l2 + c * torch.clamp(m + self.kappa, min=0)).sum()
                opt.zero_grad()
                if loss.requires_grad:  # else a detached forward: C&W cannot move
                    loss.backward()
                self.n_grad += n
                with torch.no_grad():
                    ok = m < 0
                    nrm = l2.sqrt()
                    better = ok & (nrm < best_norm)
                    best_norm = torch.where(better, nrm, best_norm)
                    best[better] = adv[better].detach()
                    success |= ok
                opt.step()
            # Binary search: shrink c where we succeeded, grow it where we failed.
            hi = torch.where(success, torch.minimum(hi, c), hi)
            lo = torch.where(success, lo, torch.maximum(lo, c))
            c = torch.where(torch.isfinite(hi), (lo + hi) / 2, c * 10)
        self.best_norm = best_norm
        return best

    def robust_mask(
        self, x: torch.Tensor, y: torch.Tensor, eps_list: list[float], geo: torch.Tensor | None = None
    ) -> dict[float, torch.Tensor]:
        """Run once; for each eps, the (N,) mask of samples that stay correct within L2 <= eps
        (`geo`: the rows' geometry features, as in `__call__`)."""
        with torch.no_grad():
            clean_ok = call_model(self.model.eval(), x, geo).argmax(1) == y
        self(x, y, geo)
        return {e: clean_ok & ~(self.best_norm <= e) for e in eps_list}


class RandomNoise(Attack):
    """Black-box baseline: the worst of `draws` random points on the ball's surface.

    Uniform sign noise of size eps (L-inf) or a random direction of norm eps (L2).
    A white-box attack weaker than this one means its gradients are masked.
    """

    name = "random_noise"

    def __init__(self, model: nn.Module, eps: float, norm: str = "linf", *, draws: int = 4, **kw):
        super().__init__(model, eps, norm, **kw)
        self.draws = int(draws)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        best = x.clone()
        with torch.no_grad():
            done = self.logits(x).argmax(1) != y
            for _ in range(self.draws):
                if self.norm == "linf":
                    d = torch.randint(0, 2, x.shape, generator=self.gen, device=x.device).float() * 2 - 1
                    d = d * self.eps
                else:
                    d = normalized_step(torch.randn(x.shape, generator=self.gen, device=x.device), "l2") * self.eps
                adv = self.clamp(x + d)
                fooled = (self.logits(adv).argmax(1) != y) & ~done
                best[fooled] = adv[fooled]
                done |= fooled
        return best


# The registry, grouped by threat model. Each entry: name -> (class, fixed kwargs).
REGISTRY: dict[str, dict[str, tuple[type[Attack], dict]]] = {
    "linf": {
        "fgsm": (FGSM, {}),
        "pgd": (PGD, {}),
        "apgd_ce": (APGD, {"loss": "ce"}),
        "apgd_dlr": (APGD, {"loss": "dlr"}),
    },
    "l2": {
        "pgd": (PGD, {}),
        "apgd_ce": (APGD, {"loss": "ce"}),
        "cw_l2": (CarliniWagnerL2, {}),
    },
    "black_box": {
        "random_noise": (RandomNoise, {}),
    },
}


def build_attack(threat: str, name: str, model: nn.Module, eps: float, norm: str | None = None, **kw) -> Attack:
    """Instantiate registry entry `threat/name` (black-box attacks take `norm`)."""
    if threat not in REGISTRY or name not in REGISTRY[threat]:
        known = {t: sorted(v) for t, v in REGISTRY.items()}
        raise KeyError(f"unknown attack {threat}/{name}; known: {known}")
    cls, fixed = REGISTRY[threat][name]
    return cls(model, eps, norm or (threat if threat in NORMS else "linf"), **{**fixed, **kw})


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, geo: torch.Tensor | None = None, batch: int = 256) -> torch.Tensor:
    """Predicted classes (N,) for (N, 1, T, H, W) (and the rows' (N, G) geometry features), eval mode, batched."""
    check_geometry(x, geo, "predict")
    was = model.training
    model.eval()
    try:
        return (
            torch.cat(
                [
                    call_model(model, x[i : i + batch], rows_of(geo, slice(i, i + batch))).argmax(1)
                    for i in range(0, len(x), batch)
                ]
            )
            if len(x)
            else torch.zeros(0, dtype=torch.long)
        )
    finally:
        model.train(was)


def robust_correct(attack: Attack, x: torch.Tensor, y: torch.Tensor, geo: torch.Tensor | None = None) -> torch.Tensor:
    """(N,) bool: correct on x and still correct on attack(x, y, geo) (the rows' geometry held fixed)."""
    clean = predict(attack.model, x, geo) == y
    adv = attack(x, y, geo)
    return clean & (predict(attack.model, adv, geo) == y)
