"""Figures of a classifier on labelled tubelets: pure NumPy, checkable by hand.

Two views of the same predictions:

- the 4-class view: accuracy, balanced accuracy (mean recall over the classes
  present), macro-F1 over the classes present, per-class precision / recall /
  F1 / support and the confusion matrix (rows actual, columns predicted);
- the person-vs-rest view (the perimeter alarm): the decision is the argmax
  (person iff the model's most likely class is person), scored by balanced
  accuracy (the mean of person recall and rest specificity, so a set's class
  mix does not move it), with its normal-approximation standard error, and the
  threshold-free AUROC of the person probability (Mann-Whitney, ties count 1/2).

Standard errors: a proportion p over n independent tubelets has SE
sqrt(p (1 - p) / n); balanced accuracy averages two proportions, so its SE is
sqrt(TPR (1 - TPR) / n_pos + TNR (1 - TNR) / n_neg) / 2. Tubelets cut from one
track or one image are not independent, so these are lower bounds.
"""

from __future__ import annotations

import math

import numpy as np


def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den else None


def auroc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve of `scores` for the boolean `positive` (None without both kinds).

    The Mann-Whitney statistic: the chance that a random positive scores above a
    random negative, ties counting one half.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    # Average ranks over ties (1-based).
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = 0.5 * (i + j) + 1.0
        i = j + 1
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_curve(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) at every distinct threshold, from (0, 0) to (1, 1)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(positive, dtype=bool)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    tp, fp = np.cumsum(y), np.cumsum(~y)
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # end of each group of tied scores
    n_pos, n_neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    return np.r_[0.0, fp[last] / n_neg], np.r_[0.0, tp[last] / n_pos]


def binary_scores(p_positive: np.ndarray, is_positive: np.ndarray, predicted_positive: np.ndarray) -> dict:
    """Person-vs-rest figures: counts, recall, specificity, precision, balanced accuracy (+ SE), AUROC."""
    y = np.asarray(is_positive, dtype=bool)
    yhat = np.asarray(predicted_positive, dtype=bool)
    tp, fn = int((y & yhat).sum()), int((y & ~yhat).sum())
    fp, tn = int((~y & yhat).sum()), int((~y & ~yhat).sum())
    tpr, tnr = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    ba = se = None
    if tpr is not None and tnr is not None:
        ba = 0.5 * (tpr + tnr)
        se = 0.5 * math.sqrt(tpr * (1 - tpr) / (tp + fn) + tnr * (1 - tnr) / (tn + fp))
    return {
        "n_pos": tp + fn,
        "n_neg": tn + fp,
        "tp": tp,
        "fn": fn,
        "fp": fp,
        "tn": tn,
        "recall": tpr,
        "specificity": tnr,
        "precision": _ratio(tp, tp + fp),
        "accuracy": _ratio(tp + tn, len(y)),
        "balanced_accuracy": ba,
        "balanced_accuracy_se": se,
        "auroc": auroc(p_positive, y),
    }


def multiclass_scores(pred: np.ndarray, target: np.ndarray, classes: list[str]) -> dict:
    """4-class figures over the classes present in `target` (absent classes: support 0, no recall)."""
    pred = np.asarray(pred, dtype=np.int64)
    target = np.asarray(target, dtype=np.int64)
    k = len(classes)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (target, pred), 1)
    per_class = {}
    recalls, f1s = [], []
    for i, c in enumerate(classes):
        support = int(cm[i].sum())
        predicted = int(cm[:, i].sum())
        recall = _ratio(cm[i, i], support)
        precision = _ratio(cm[i, i], predicted)
        f1 = None
        if support:
            denom = support + predicted
            f1 = 2.0 * cm[i, i] / denom if denom else 0.0
            recalls.append(recall)
            f1s.append(f1)
        per_class[c] = {"support": support, "recall": recall, "precision": precision, "f1": f1}
    n = int(cm.sum())
    acc = _ratio(np.trace(cm), n)
    return {
        "n": n,
        "accuracy": acc,
        "accuracy_se": math.sqrt(acc * (1 - acc) / n) if n else None,
        "balanced_accuracy": float(np.mean(recalls)) if recalls else None,
        "macro_f1": float(np.mean(f1s)) if f1s else None,
        "per_class": per_class,
        "confusion": {"labels": list(classes), "matrix": cm.tolist()},
    }


def score(probs: np.ndarray, target: np.ndarray, classes: list[str], positive: str) -> dict:
    """Both views of (N, C) class probabilities against true class indices (N,).

    Returns {"n", "n_per_label", <multiclass figures>, "recall": {class: recall},
    "<positive>_vs_rest": <binary figures>}.
    """
    probs = np.asarray(probs, dtype=np.float64)
    target = np.asarray(target, dtype=np.int64)
    if probs.ndim != 2 or probs.shape[1] != len(classes) or len(probs) != len(target):
        raise ValueError(f"probs {probs.shape} and target {target.shape} do not fit {len(classes)} classes")
    if positive not in classes:
        raise ValueError(f"positive class {positive!r} is not one of {classes}")
    pos = classes.index(positive)
    pred = probs.argmax(1)
    multi = multiclass_scores(pred, target, classes)
    return {
        "n": multi["n"],
        "n_per_label": {c: multi["per_class"][c]["support"] for c in classes},
        "accuracy": multi["accuracy"],
        "accuracy_se": multi["accuracy_se"],
        "balanced_accuracy": multi["balanced_accuracy"],
        "macro_f1": multi["macro_f1"],
        "recall": {c: multi["per_class"][c]["recall"] for c in classes},
        "per_class": multi["per_class"],
        "confusion": multi["confusion"],
        f"{positive}_vs_rest": binary_scores(probs[:, pos], target == pos, pred == pos),
    }


def bins_of(values: list[float | None], edges: list[float]) -> list[str | None]:
    """Label of the bin [edges[i], edges[i+1]) of each value ("25-50"), None when unknown or outside."""
    out: list[str | None] = []
    for v in values:
        label = None
        if v is not None and math.isfinite(v):
            for lo, hi in zip(edges[:-1], edges[1:]):
                if lo <= v < hi:
                    label = f"{lo:g}-{hi:g}"
                    break
        out.append(label)
    return out
