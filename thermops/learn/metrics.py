"""Classification metrics through torchmetrics, and one confusion-matrix object.

The confusion matrix is built once (class labels + a square integer matrix,
rows = actual, columns = predicted) and converted from there both for
`dvc plots` (one `actual,predicted` row per sample, the `confusion` template) and
for a KFP `ClassificationMetrics` artifact (`log_confusion_matrix(categories,
matrix)`), so the two renderings cannot disagree (FIELD-NOTES: KFP fails to render
when shapes or labels are off).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class ConfusionMatrix:
    """labels (K,) and matrix (K, K) of ints: matrix[i][j] = samples of class i predicted as j."""

    labels: list[str]
    matrix: list[list[int]]

    def __post_init__(self):
        k = len(self.labels)
        if len(self.matrix) != k or any(len(r) != k for r in self.matrix):
            raise ValueError(f"confusion matrix must be {k} x {k} for labels {self.labels}")
        if any((not isinstance(v, int)) or v < 0 for r in self.matrix for v in r):
            raise ValueError("confusion matrix entries must be non-negative ints")

    def dvc_rows(self) -> list[dict[str, str]]:
        """One {actual, predicted} row per sample, for the DVC `confusion` plot template."""
        return [
            {"actual": a, "predicted": p}
            for i, a in enumerate(self.labels)
            for j, p in enumerate(self.labels)
            for _ in range(self.matrix[i][j])
        ]

    def log_to_kfp(self, artifact: Any) -> None:
        """Log onto a KFP `ClassificationMetrics` artifact."""
        artifact.log_confusion_matrix(list(self.labels), [list(r) for r in self.matrix])

    def to_dict(self) -> dict:
        return {"labels": list(self.labels), "matrix": [list(r) for r in self.matrix]}


def classification_metrics(
    preds: torch.Tensor, target: torch.Tensor, classes: list[str]
) -> tuple[dict, ConfusionMatrix]:
    """Predicted and true class indices (N,) -> (metrics dict, confusion matrix).

    The dict holds `accuracy` (micro), `macro_f1`, `balanced_accuracy` (macro recall)
    and `per_class` {class: {precision, recall, specificity, f1, support}}.
    """
    from torchmetrics.classification import (
        MulticlassAccuracy,
        MulticlassConfusionMatrix,
        MulticlassF1Score,
        MulticlassPrecision,
        MulticlassRecall,
        MulticlassSpecificity,
    )

    k = len(classes)
    preds, target = preds.detach().cpu().long(), target.detach().cpu().long()
    acc = MulticlassAccuracy(num_classes=k, average="micro")(preds, target)
    bal = MulticlassAccuracy(num_classes=k, average="macro")(preds, target)
    f1m = MulticlassF1Score(num_classes=k, average="macro")(preds, target)
    prec = MulticlassPrecision(num_classes=k, average=None)(preds, target)
    rec = MulticlassRecall(num_classes=k, average=None)(preds, target)
    spec = MulticlassSpecificity(num_classes=k, average=None)(preds, target)
    f1 = MulticlassF1Score(num_classes=k, average=None)(preds, target)
    cm = MulticlassConfusionMatrix(num_classes=k)(preds, target)
    support = torch.bincount(target, minlength=k)
    per_class = {
        c: {
            "precision": float(prec[i]),
            "recall": float(rec[i]),
            "specificity": float(spec[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, c in enumerate(classes)
    }
    metrics = {
        "accuracy": float(acc),
        "balanced_accuracy": float(bal),
        "macro_f1": float(f1m),
        "per_class": per_class,
        "n": int(len(target)),
    }
    return metrics, ConfusionMatrix(list(classes), [[int(v) for v in row] for row in cm.tolist()])


def plot_confusion(cm: ConfusionMatrix, path, title: str = "confusion matrix (test)") -> None:
    """Save the confusion matrix as a PNG (matplotlib imported here: not on the training path)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = torch.tensor(cm.matrix, dtype=torch.float32)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(m.numpy(), cmap="Blues")
    k = len(cm.labels)
    ax.set_xticks(range(k), cm.labels, rotation=45, ha="right")
    ax.set_yticks(range(k), cm.labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    for i in range(k):
        for j in range(k):
            ax.text(
                j, i, cm.matrix[i][j], ha="center", va="center", color="white" if m[i, j] > m.max() / 2 else "black"
            )
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_curves(curves: dict[str, list[float]], path, ylabel: str = "loss", title: str = "") -> None:
    """Save named per-epoch curves as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, ys in curves.items():
        ax.plot(range(1, len(ys) + 1), ys, marker="o", label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
