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


def decide(metrics: dict, thresholds: Thresholds, blessed: dict | None, regression: Regression) -> dict:
    """Judge `metrics` (the gate's figures) against thresholds and the blessed model's metrics.

    Args:
        metrics: needs clean_accuracy, robust_accuracy[threat]["worst"][eps], mean_ce,
            flip_rate, stability_slope, sanity (list of checks).
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
