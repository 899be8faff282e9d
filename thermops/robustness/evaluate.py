"""Run the whole robustness evaluation of one model: the figures the gate decides on.

`evaluate` takes raw test tubelets (N, T0, H0, W0) in their units, resamples them
to the model's InputSpec, and measures clean accuracy (overall and per camera, from the
same predictions), robust accuracy by threat model / attack / eps (with the sanity
checks), corruption errors, perspective stability and the validated envelope. Expensive parts run on deterministic
subsets whose sizes come from params (`attack_subset`, `cw.subset`,
`corruptions.subset`, `perspective.subset`, `perspective.worst_case.subset`).

Geometry features: a classifier trained with `input.geometry` takes each row's (N, G)
window geometry (`geo`) beside the pixels. Every figure feeds each row its own features and
every subset of rows takes the same rows of `geo`; the features are never perturbed: the
attacks' threat model is on pixels, corruptions corrupt pixels, the perspective and
radiometric sweeps warp or drift pixels (`thermops.robustness.perspective` says why a warped
window keeps its row's features). `geo=None` (a geometry-free classifier) calls `model(x)`.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from torch import nn

from thermops.io import dumps_json
from thermops.model.preprocess import InputSpec, normalize, resample
from thermops.robustness import attacks as A
from thermops.robustness import corruptions as C
from thermops.robustness import envelope as E
from thermops.robustness import perspective as P
from thermops.robustness import sanity as S
from thermops.robustness.params import GateParams, ThreatModel


def subset(n_total: int, n: int, seed: int) -> np.ndarray:
    """A deterministic sorted subset of `n` of `n_total` indices (all when n >= n_total)."""
    if n >= n_total:
        return np.arange(n_total)
    return np.sort(np.random.default_rng(seed).permutation(n_total)[:n])


def data_hash(
    tubelets: np.ndarray, labels: np.ndarray, cameras: list[str], geo: torch.Tensor | np.ndarray | None = None
) -> str:
    """Content hash of the evaluated tubelets, labels and camera ids (decides whether stored blessed
    figures apply: the per-camera accuracies depend on which camera each tubelet came from), and of
    the geometry features a classifier that takes them was fed (None: none; the hash is then the
    geometry-free one)."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(tubelets, dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    h.update(dumps_json(list(cameras)).encode())
    if geo is not None:
        h.update(b"geometry")
        h.update(np.ascontiguousarray(np.asarray(geo), dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


def per_camera_accuracy(correct: np.ndarray, cameras: list[str]) -> dict[str, dict[str, Any]]:
    """{camera_id: {"accuracy", "n"}} of per-tubelet correctness (N,) and the tubelets' camera ids."""
    correct = np.asarray(correct, dtype=bool)
    if len(cameras) != len(correct):
        raise ValueError(f"{len(cameras)} camera ids for {len(correct)} tubelets")
    cams = np.asarray([str(c) for c in cameras])
    return {
        c: {"accuracy": float(correct[cams == c].mean()), "n": int((cams == c).sum())}
        for c in sorted(set(cams.tolist()))
    }


def params_hash(p: GateParams) -> str:
    """Hash of the evaluation protocol (thresholds excluded: they do not change the figures)."""
    d = asdict(p)
    for k in ("thresholds", "regression", "enforce", "report", "threads"):
        d.pop(k, None)
    return hashlib.sha256(dumps_json(d).encode()).hexdigest()[:16]


def _attack_kwargs(name: str, p: GateParams, seed: int) -> dict:
    if name == "pgd":
        return {"steps": p.pgd.steps, "restarts": p.pgd.restarts, "step_size": p.pgd.step_size, "seed": seed}
    if name.startswith("apgd"):
        return {"steps": p.apgd.steps, "seed": seed}
    if name == "cw_l2":
        return {
            "steps": p.cw.steps,
            "search_steps": p.cw.search_steps,
            "c_init": p.cw.c_init,
            "lr": p.cw.lr,
            "seed": seed,
        }
    return {"seed": seed}


def large_eps_reach(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    robust: torch.Tensor,
    threat: str,
    tm: ThreatModel,
    p: GateParams,
    seed: int,
    geo: torch.Tensor | None = None,
) -> dict[str, Any]:
    """The rows still robust at the large eps (`robust`, (N,) bool), each attacked again by the threat
    model's bounded attacks at the distance of its nearest known adversarial example
    (`sanity.nearest_known_adversarial`) where that is farther than the large eps (a row with one
    inside the large eps keeps its failure: the attacks missed an example known to be there).

    A fixed large eps is large for the tubelet it was sized on: a hot vehicle tens of kelvin over
    its background keeps its class far beyond it, where a swap with another row's pixels shows an
    adversarial example exists. Returns {n, rows, radius (None: no known adversarial), kept (rows
    that keep their class at that radius too), no_known_adversarial}; row numbers index `x`.
    """
    rows = robust.nonzero().flatten()
    radius = S.nearest_known_adversarial(model, x, y, rows, threat, geo) if len(rows) else torch.zeros(0)
    kept, unmoved = [], []
    for i, r in zip(rows.tolist(), radius.tolist()):
        if not np.isfinite(r):
            unmoved.append(i)
            continue
        if r <= tm.large_eps:  # a known adversarial inside the ball the attacks already failed in
            kept.append(i)
            continue
        xi, yi, gi = x[i : i + 1], y[i : i + 1], A.rows_of(geo, slice(i, i + 1))
        for name in tm.attacks:
            if name == "cw_l2":  # minimal-perturbation, not bounded: the bounded attacks judge the radius
                continue
            adv = A.build_attack(threat, name, model, r, **_attack_kwargs(name, p, seed))(xi, yi, gi)
            if A.predict(model, adv, gi)[0] != yi[0]:
                break
        else:
            kept.append(i)
    return {
        "n": int(len(x)),
        "rows": rows.tolist(),
        "radius": [float(r) if np.isfinite(r) else None for r in radius.tolist()],
        "kept": kept,
        "no_known_adversarial": unmoved,
    }


def attack_suite(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    p: GateParams,
    seed: int,
    baseline: bool = False,
    geo: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Robust accuracy by threat model, attack and eps, the sanity checks, and example adversarials.

    Args:
        x: (N, 1, T, H, W) model input; y: (N,) labels; geo: (N, G) geometry features of the rows
            for a classifier that takes them (never perturbed), or None.
    Returns: {robust_accuracy, sanity, timing_s, examples}; robust_accuracy[threat] holds
        one {eps: acc} curve per attack, `worst` (per-sample worst case over the attacks,
        the AutoAttack protocol) and `random_noise` (black-box), each including the large eps.
        With `baseline` (re-measuring the blessed model for the decision), only the eps
        named in the thresholds are attacked and the sanity checks are skipped.
    """
    A.check_geometry(x, geo, "attack suite")
    clean = A.predict(model, x, geo) == y
    out: dict[str, Any] = {}
    sanity: list[dict] = []
    timing: dict[str, float] = {}
    examples: dict[str, torch.Tensor] = {}
    for threat, tm in p.threat_models.items():
        if threat not in A.NORMS:
            raise ValueError(f"gate.threat_models: {threat!r} is not one of {list(A.NORMS)}")
        eps_all = sorted(set(tm.eps) | {tm.large_eps})
        if baseline:
            eps_all = sorted(p.thresholds.robust_accuracy.get(threat, {}))
            if not eps_all:
                continue
        curves: dict[str, dict[float, float]] = {}
        subset_n = {}
        worst = {e: clean.clone() for e in eps_all}
        for name in tm.attacks:
            t0 = time.perf_counter()
            if name == "cw_l2":
                idx = torch.arange(min(p.cw.subset, len(x)))
                cw = A.build_attack(threat, name, model, tm.eps[0], **_attack_kwargs(name, p, seed))
                masks = cw.robust_mask(x[idx], y[idx], eps_all, A.rows_of(geo, idx))
                curves[name] = {e: float(m.float().mean()) for e, m in masks.items()}
                subset_n[name] = int(len(idx))
                for e, m in masks.items():
                    worst[e][idx] &= m
            else:
                curves[name] = {}
                for e in eps_all:
                    atk = A.build_attack(threat, name, model, e, **_attack_kwargs(name, p, seed))
                    adv = atk(x, y, geo)
                    ok = clean & (A.predict(model, adv, geo) == y)
                    curves[name][e] = float(ok.float().mean())
                    worst[e] &= ok
                    if name == "pgd" and e == tm.eps[len(tm.eps) // 2]:
                        examples[threat] = adv
            timing[f"{threat}/{name}"] = time.perf_counter() - t0
        curves["worst"] = {e: float(m.float().mean()) for e, m in worst.items()}
        if baseline:
            out[threat] = {"n": int(len(x)), "eps": eps_all, **curves, "subset_n": subset_n}
            continue
        # Black-box baseline at every eps.
        t0 = time.perf_counter()
        curves["random_noise"] = {}
        for e in eps_all:
            rn = A.RandomNoise(model, e, threat, draws=p.sanity.random_draws, seed=seed)
            curves["random_noise"][e] = float((clean & (A.predict(model, rn(x, y, geo), geo) == y)).float().mean())
        timing[f"{threat}/random_noise"] = time.perf_counter() - t0
        # More PGD steps must not leave more samples robust.
        t0 = time.perf_counter()
        e_mid = tm.eps[len(tm.eps) // 2]
        few = A.PGD(model, e_mid, threat, steps=p.pgd.steps, restarts=1, step_size=p.pgd.step_size, seed=seed)
        many_steps = p.pgd.steps * p.sanity.more_steps_factor
        many = A.PGD(
            model,
            e_mid,
            threat,
            steps=many_steps,
            restarts=1,
            step_size=p.pgd.step_size * p.pgd.steps / many_steps,
            seed=seed,
        )
        acc_few = float(A.robust_correct(few, x, y, geo).float().mean())
        acc_many = float(A.robust_correct(many, x, y, geo).float().mean())
        timing[f"{threat}/more_steps"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        reach = large_eps_reach(model, x, y, worst[tm.large_eps], threat, tm, p, seed, geo)
        timing[f"{threat}/large_eps_reach"] = time.perf_counter() - t0
        sanity += [
            S.monotone_in_eps(curves["worst"], p.sanity.monotone_tol, threat),
            S.zero_at_large_eps(
                curves["worst"][tm.large_eps], tm.large_eps, p.sanity.large_eps_max_accuracy, threat, reach
            ),
            S.more_steps_not_weaker(
                acc_few, acc_many, (p.pgd.steps, many_steps), p.sanity.more_steps_tol, threat, e_mid
            ),
            S.black_box_not_stronger(curves["random_noise"], curves["worst"], p.sanity.black_box_tol, threat),
        ]
        out[threat] = {
            "n": int(len(x)),
            "eps": list(tm.eps),
            "large_eps": tm.large_eps,
            **curves,
            "subset_n": subset_n,
            "more_steps": {"eps": e_mid, "steps": [p.pgd.steps, many_steps], "accuracy": [acc_few, acc_many]},
            "large_eps_reach": reach,
        }
    if baseline:
        return {"robust_accuracy": out, "sanity": [], "timing_s": timing, "examples": examples}
    sanity.insert(0, S.gradients_finite_nonzero(model, x, y, p.sanity.max_zero_grad_fraction, geo))
    return {"robust_accuracy": out, "sanity": sanity, "timing_s": timing, "examples": examples}


@torch.no_grad()
def corruption_errors(
    model: nn.Module,
    raw: torch.Tensor,
    y: torch.Tensor,
    units: list[str],
    spec: InputSpec,
    p: GateParams,
    seed: int,
    geo: torch.Tensor | None = None,
) -> dict[str, list[float]]:
    """Top-1 error per corruption and severity (1..5) on (N, T, H, W) raw tubelets (`geo`: the rows'
    geometry features, held fixed: a sensor corruption changes pixels, not the window's geometry)."""
    names = p.corruptions.names or list(C.REGISTRY)
    out = {}
    arr = raw.numpy()
    for name in names:
        corr = C.build_corruption(
            name,
            p.corruptions.severities.get(name),
            celsius_scale_k=spec.celsius_scale_k,
            robust_floor=spec.robust_floor,
        )
        errs = []
        for s in range(1, 6):
            xc = normalize(torch.from_numpy(corr(arr, s, units, seed=seed)), units, spec)
            errs.append(float((A.predict(model, xc, geo) != y).float().mean()))
        out[name] = errs
    return out


def corruption_ce(errors: dict[str, list[float]], normalizer: dict[str, list[float]]) -> tuple[dict[str, float], float]:
    """CE_c = sum_s E_c,s / sum_s E^norm_c,s per corruption, and their mean (ImageNet-C).

    A 1e-3 floor on both sums keeps the ratio finite when the normalizer makes no error.
    """
    ce = {}
    for c, errs in errors.items():
        ref = normalizer.get(c)
        if ref is None:
            raise ValueError(f"the normalizer has no errors for corruption {c!r}")
        ce[c] = (sum(errs) + 1e-3) / (sum(ref) + 1e-3)
    return ce, float(np.mean(list(ce.values()))) if ce else float("nan")


def evaluate(
    model: nn.Module,
    spec: InputSpec,
    tubelets: np.ndarray,
    units: list[str],
    cameras: list[str],
    labels: np.ndarray,
    p: GateParams,
    seed: int,
    baseline: bool = False,
    geo: torch.Tensor | None = None,
) -> dict[str, Any]:
    """All the gate's figures for one model (corruption CE still unnormalized; see `corruption_ce`).

    Args:
        tubelets: (N, T0, H0, W0) raw test tubelets in their units.
        units: per-tubelet units; cameras: per-tubelet camera ids (for `per_camera`, the clean
            accuracy of each camera's tubelets); labels: (N,) class indices.
        baseline: only what the decision compares with (the blessed model re-measured on new
            data): the thresholds' eps, no sanity checks, no worst-case homography or radiometric sweep.
        geo: (N, G) geometry features of the tubelets for a classifier with `spec.geometry`
            (`thermops.model.preprocess.geometry_features` of each row), None for one without.
    Returns: a JSON-able metrics dict plus `_artefacts` (tensors for the report; `geo` holds the
        attacked rows' features, None without).
    """
    if len(cameras) != len(tubelets):
        raise ValueError(f"{len(cameras)} camera ids for {len(tubelets)} tubelets")
    if bool(spec.geometry) != (geo is not None):
        raise ValueError(
            f"input.geometry {list(spec.geometry)} but "
            + ("no geometry features" if geo is None else f"geometry features of shape {tuple(geo.shape)}")
        )
    if geo is not None:
        geo = torch.as_tensor(geo, dtype=torch.float32)
        if geo.shape != (len(tubelets), len(spec.geometry)):
            raise ValueError(
                f"geometry features of shape {tuple(geo.shape)}, expected ({len(tubelets)}, {len(spec.geometry)})"
            )

    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    model.eval()
    raw = resample(np.asarray(tubelets, dtype=np.float32), spec.frames, spec.size)
    y = torch.as_tensor(labels, dtype=torch.long)
    x = normalize(raw, units, spec)
    pred = A.predict(model, x, geo)
    clean_acc = float((pred == y).float().mean())
    per_camera = per_camera_accuracy((pred == y).numpy(), cameras)
    timing["clean"] = time.perf_counter() - t0

    ia = torch.as_tensor(subset(len(x), p.attack_subset, seed))
    t0 = time.perf_counter()
    suite = attack_suite(model, x[ia], y[ia], p, seed, baseline, A.rows_of(geo, ia))
    timing["attacks"] = time.perf_counter() - t0
    timing.update({f"attack/{k}": v for k, v in suite["timing_s"].items()})

    t0 = time.perf_counter()
    ic = torch.as_tensor(subset(len(x), p.corruptions.subset, seed + 1))
    units_c = [units[i] for i in ic.tolist()]
    c_err = corruption_errors(model, raw[ic], y[ic], units_c, spec, p, seed, A.rows_of(geo, ic))
    c_clean_err = float((pred[ic] != y[ic]).float().mean())
    timing["corruptions"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    ip = torch.as_tensor(subset(len(x), p.perspective.subset, seed + 2))
    units_p = [units[i] for i in ip.tolist()]
    persp = P.sweep(model, raw[ip], y[ip], units_p, spec, list(p.perspective.magnitudes_px), geo=A.rows_of(geo, ip))
    slope = P.stability_slope(persp)
    at = [r for r in persp if abs(abs(r["px"]) - p.perspective.decision_px) < 1e-9]
    flip = max((r["flip_rate"] for r in at), default=float("nan"))
    wc_p = p.perspective.worst_case
    iw = ip[: wc_p.subset]
    wc = None
    if not baseline:
        wc = P.worst_case(
            model,
            raw[iw],
            y[iw],
            [units[i] for i in iw.tolist()],
            spec,
            wc_p.budget_px,
            wc_p.steps,
            seed,
            geo=A.rows_of(geo, iw),
        )
        wc.pop("offsets")
    timing["perspective"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    radio = (
        []
        if baseline
        else E.radiometric_sweep(
            model,
            raw[ip],
            y[ip],
            units_p,
            spec,
            list(p.radiometric.gain_changes),
            list(p.radiometric.offset_k),
            geo=A.rows_of(geo, ip),
        )
    )
    timing["radiometric"] = time.perf_counter() - t0

    return {
        "n_test": int(len(x)),
        "clean_accuracy": clean_acc,
        "per_camera": per_camera,
        "robust_accuracy": suite["robust_accuracy"],
        "sanity": suite["sanity"],
        "sanity_passed": all(s["passed"] for s in suite["sanity"]),
        "corruption_errors": c_err,
        "corruption_clean_error": c_clean_err,
        "corruption_n": int(len(ic)),
        "perspective": {"n": int(len(ip)), "sweep": persp, "decision_px": p.perspective.decision_px, "worst_case": wc},
        "flip_rate": flip,
        "stability_slope": slope,
        "radiometric": {"n": int(len(ip)), "sweep": radio},
        "timing_s": timing,
        "_artefacts": {
            "x": x[ia],
            "y": y[ia],
            "geo": A.rows_of(geo, ia),
            "examples": suite["examples"],
            "raw": raw[ia],
        },
    }
