"""The gate decision: absolute thresholds, sanity checks and no regression against the
blessed model, with every reason written down.

`decide` returns {passed, reasons, checks}: `checks` lists every comparison made
(passing or not) with its value and limit; `reasons` holds one line per failing
check, so an empty list means the model passed.
"""

from __future__ import annotations

import math
from typing import Any

from thermops.robustness.params import Regression, Thresholds


def _c(name: str, kind: str, value: Any, limit: Any, ok: bool, text: str) -> dict:
    return {"name": name, "kind": kind, "value": value, "limit": limit, "passed": bool(ok), "text": text}


def _eps_key(curve: dict, eps: float) -> Any:
    """Find eps in a curve whose keys may be floats or strings (after JSON)."""
    for k in curve:
        if abs(float(k) - float(eps)) < 1e-9:
            return k
    return None


PER_CAMERA = "regression:clean_accuracy[per camera]"


def _per_camera_checks(cand: dict | None, blessed: dict | None, regression: Regression, margin_of) -> list[dict]:
    """One `regression:clean_accuracy[<camera>]` check per camera both models were measured on.

    Same margin as the overall check on each side's own n; a camera with fewer than
    `min_camera_n` tubelets on either side is skipped (passed, `skipped: true`). Figures
    without `per_camera` (a card written before per-camera accuracy) give one passed
    `not compared` entry instead, never an error.
    """
    tol, z, min_n = regression.accuracy_tol, regression.z, regression.min_camera_n
    if not cand or not blessed:
        side = "the candidate's" if not cand else "the production model's"
        return [
            {
                **_c(
                    PER_CAMERA,
                    "regression",
                    None,
                    None,
                    True,
                    f"not compared: {side} figures have no per-camera accuracy (measured before per-camera checks)",
                ),
                "skipped": True,
            }
        ]
    out = []
    for cam in sorted(set(cand) | set(blessed)):
        name = f"regression:clean_accuracy[{cam}]"
        if cam not in cand or cam not in blessed:
            where = "the production model's" if cam not in blessed else "the candidate's"
            out.append(
                {
                    **_c(name, "regression", None, None, True, f"camera {cam}: not compared, not in {where} figures"),
                    "skipped": True,
                    "camera": cam,
                }
            )
            continue
        a, na = float(cand[cam]["accuracy"]), int(cand[cam]["n"])
        b, nb = float(blessed[cam]["accuracy"]), int(blessed[cam]["n"])
        base = {"camera": cam, "n": na, "blessed_value": b, "blessed_n": nb}
        if min(na, nb) < min_n:
            text = f"camera {cam}: not compared, n {min(na, nb)} < min_camera_n {min_n}"
            out.append({**_c(name, "regression", a, None, True, text), **base, "skipped": True})
            continue
        mg = margin_of(a, na, b, nb)
        text = f"camera {cam} clean accuracy {a:.3f} (n {na}) vs blessed {b:.3f} (n {nb}) - {mg:.3f} ({tol} + {z} SE)"
        out.append({**_c(name, "regression", a, b - mg, a >= b - mg, text), **base, "skipped": False})
    return out


def decide(metrics: dict, thresholds: Thresholds, blessed: dict | None, regression: Regression) -> dict:
    """Judge `metrics` (the gate's figures) against thresholds and the blessed model's metrics.

    Args:
        metrics: needs clean_accuracy, robust_accuracy[threat]["worst"][eps], mean_ce,
            flip_rate, stability_slope, sanity (list of checks); per_camera
            ({camera: {accuracy, n}}, optional) for the per-camera regression checks.
        blessed: the blessed model's metrics (same keys), or None for the first model.
    """
    checks: list[dict] = []
    ca = metrics["clean_accuracy"]
    checks.append(
        _c(
            "clean_accuracy",
            "absolute",
            ca,
            thresholds.clean_accuracy,
            ca >= thresholds.clean_accuracy,
            f"clean accuracy {ca:.3f} >= {thresholds.clean_accuracy}",
        )
    )
    for threat, by_eps in thresholds.robust_accuracy.items():
        curve = metrics["robust_accuracy"].get(threat, {}).get("worst", {})
        for eps, limit in sorted(by_eps.items()):
            k = _eps_key(curve, eps)
            val = curve[k] if k is not None else None
            ok = val is not None and val >= limit
            checks.append(
                _c(
                    f"robust_accuracy[{threat}][{eps}]",
                    "absolute",
                    val,
                    limit,
                    ok,
                    f"{threat} worst-case robust accuracy at eps {eps}: {val} >= {limit}",
                )
            )
    mce = metrics["mean_ce"]
    checks.append(
        _c(
            "mean_ce",
            "absolute",
            mce,
            thresholds.max_mean_ce,
            mce <= thresholds.max_mean_ce,
            f"mean CE {mce:.3f} <= {thresholds.max_mean_ce}",
        )
    )
    fr = metrics["flip_rate"]
    checks.append(
        _c(
            "flip_rate",
            "absolute",
            fr,
            thresholds.max_flip_rate,
            fr <= thresholds.max_flip_rate,
            f"flip rate {fr:.3f} <= {thresholds.max_flip_rate}",
        )
    )
    sl = metrics["stability_slope"]
    checks.append(
        _c(
            "stability_slope",
            "absolute",
            sl,
            thresholds.max_stability_slope,
            sl == sl and sl <= thresholds.max_stability_slope,
            f"stability slope {sl:.3f} <= {thresholds.max_stability_slope}",
        )
    )
    for s in metrics.get("sanity", []):
        checks.append(_c(f"sanity:{s['name']}", "sanity", s["value"], s["limit"], s["passed"], s["detail"]))
    if blessed is not None:
        tol, rel, z = regression.accuracy_tol, regression.relative_tol, regression.z

        def margin_of(p1: float, n1: int | None, p2: float, n2: int | None) -> float:
            """tol + z standard errors of p1 - p2 (binomial); with n unknown, tol alone."""
            if not n1 or not n2:
                return tol
            return tol + z * math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)

        b = blessed["clean_accuracy"]
        mg = margin_of(ca, metrics.get("n_test"), b, blessed.get("n_test"))
        checks.append(
            _c(
                "regression:clean_accuracy",
                "regression",
                ca,
                b - mg,
                ca >= b - mg,
                f"clean accuracy {ca:.3f} vs blessed {b:.3f} - {mg:.3f} ({tol} + {z} SE)",
            )
        )
        checks.extend(_per_camera_checks(metrics.get("per_camera"), blessed.get("per_camera"), regression, margin_of))
        # Robust accuracy is compared at the eps the thresholds name (where the decision is made).
        for threat, by_eps in thresholds.robust_accuracy.items():
            tm = metrics["robust_accuracy"].get(threat, {})
            btm = blessed.get("robust_accuracy", {}).get(threat, {})
            curve, bcurve = tm.get("worst", {}), btm.get("worst", {})
            for eps in sorted(by_eps):
                k, bk = _eps_key(curve, eps), _eps_key(bcurve, eps)
                if k is None or bk is None:
                    continue
                val, bv = curve[k], bcurve[bk]
                mg = margin_of(val, tm.get("n"), bv, btm.get("n"))
                checks.append(
                    _c(
                        f"regression:robust_accuracy[{threat}][{eps}]",
                        "regression",
                        val,
                        bv - mg,
                        val >= bv - mg,
                        f"{threat} robust accuracy at eps {eps}: {val:.3f} vs blessed {bv:.3f} - {mg:.3f} ({tol} + {z} SE)",
                    )
                )
        # mean CE is already relative to the blessed model (1.0 = as good as it).
        checks.append(
            _c(
                "regression:mean_ce",
                "regression",
                mce,
                1.0 + rel,
                mce <= 1.0 + rel,
                f"mean CE relative to blessed {mce:.3f} <= 1 + {rel}",
            )
        )
        for key in ("flip_rate", "stability_slope"):
            v, bv = metrics[key], blessed.get(key)
            if bv is None:
                continue
            lim = bv * (1 + rel) + tol * (key == "flip_rate")
            checks.append(
                _c(
                    f"regression:{key}",
                    "regression",
                    v,
                    lim,
                    v <= lim,
                    f"{key} {v:.3f} vs blessed {bv:.3f} x (1 + {rel})",
                )
            )
    reasons = [
        f"{c['name']}: {c['text']} failed (value {c['value']}, limit {c['limit']})" for c in checks if not c["passed"]
    ]
    return {"passed": not reasons, "reasons": reasons, "checks": checks}
