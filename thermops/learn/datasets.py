"""Torch datasets over the prepared-data contract (`thermops.data.prepared`).

Every tubelet goes through `thermops.model.preprocess.prepare_batch` once, when the
dataset is built: the model input is then a fixed (N, 1, T, H, W) float tensor,
the same one the gate and the service compute from the model card's `InputSpec`.
The prepared sets are small (a few thousand 8 x 32 x 32 tubelets), so holding the
inputs in memory is cheaper than re-normalizing every epoch.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from thermops.data.prepared import PreparedData, PreparedDataError, load_prepared
from thermops.io import hash_files
from thermops.model.preprocess import InputSpec, prepare_batch


class TubeletDataset(Dataset):
    """Model inputs (N, 1, T, H, W) with optional labels (N,); items are (x, y) or (x,)."""

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor | None = None):
        if labels is not None and len(labels) != len(inputs):
            raise ValueError(f"{len(labels)} labels for {len(inputs)} inputs")
        self.inputs = inputs
        self.labels = labels

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i: int):
        if self.labels is None:
            return (self.inputs[i],)
        return self.inputs[i], self.labels[i]

    def subset(self, idx: np.ndarray | torch.Tensor) -> TubeletDataset:
        """The rows `idx` as a new dataset (shares nothing mutable with this one)."""
        idx = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        return TubeletDataset(self.inputs[idx], None if self.labels is None else self.labels[idx])


def model_inputs(data: PreparedData, idx: np.ndarray, spec: InputSpec, chunk: int = 512) -> torch.Tensor:
    """Rows `idx` of the prepared tubelets -> (len(idx), 1, T, H, W) network input."""
    units = data.units()
    out = []
    for s in range(0, len(idx), chunk):
        part = idx[s : s + chunk]
        arr = np.ascontiguousarray(data.tubelets[part], dtype=np.float32)
        out.append(prepare_batch(arr, [units[i] for i in part], spec))
    if not out:
        return torch.zeros((0, 1, spec.frames, spec.size, spec.size))
    x = torch.cat(out)
    if not torch.isfinite(x).all():
        bad = [
            data.rows[int(idx[i])]["tubelet_id"]
            for i in torch.nonzero(~torch.isfinite(x).flatten(1).all(1)).flatten()[:5]
        ]
        raise PreparedDataError(f"non-finite model input for tubelets {bad}")
    return x


@dataclass
class PreparedSplits:
    """Labelled train/val/test datasets of one prepared folder, plus its lineage."""

    train: TubeletDataset
    val: TubeletDataset
    test: TubeletDataset
    classes: list[str]
    calibrations: dict[str, str]
    data_info: dict


def load_splits(root: str | Path, classes: list[str], spec: InputSpec) -> PreparedSplits:
    """Load a prepared folder as labelled splits; `calibrations` are those of train+val rows.

    Raises PreparedDataError when a split is empty or a label is not in `classes`.
    """
    root = Path(root)
    data = load_prepared(root)
    labels = torch.as_tensor(data.labels(classes))
    sets = {}
    for split in ("train", "val", "test"):
        idx = data.indices(split)
        if len(idx) == 0:
            raise PreparedDataError(f"{root}: split {split!r} is empty")
        sets[split] = TubeletDataset(model_inputs(data, idx, spec), labels[torch.as_tensor(idx)])
    calibrations: dict[str, str] = {}
    for r in data.rows:
        if r["split"] in ("train", "val"):
            seen = calibrations.setdefault(r["camera_id"], r["calibration_version"])
            if seen != r["calibration_version"]:  # several versions of one camera: keep them all, sorted
                calibrations[r["camera_id"]] = ",".join(sorted(set(seen.split(",")) | {r["calibration_version"]}))
    info = {
        "prepared": str(root),
        "prepared_hash": hash_files([root]),
        "sources": sorted({r["source"] for r in data.rows}),
        "units": sorted({r["units"] for r in data.rows}),  # the service converts input to these
        "n": {s: len(sets[s]) for s in ("train", "val", "test")},
        "n_per_label": {
            s: dict(sorted(Counter(r["label"] for r in data.rows if r["split"] == s).items()))
            for s in ("train", "val", "test")
        },
    }
    return PreparedSplits(sets["train"], sets["val"], sets["test"], list(classes), calibrations, info)


def load_unlabeled(root: str | Path, spec: InputSpec, split: str = "train") -> tuple[TubeletDataset, dict]:
    """The `split` tubelets without labels (the manifest's label column is never read)."""
    root = Path(root)
    data = load_prepared(root)
    idx = data.indices(split)
    if len(idx) == 0:
        raise PreparedDataError(f"{root}: split {split!r} is empty")
    info = {
        "prepared": str(root),
        "prepared_hash": hash_files([root]),
        "n": int(len(idx)),
        "sources": sorted({r["source"] for r in data.rows}),
    }
    return TubeletDataset(model_inputs(data, idx, spec)), info


def stratified_fraction(labels: torch.Tensor, fraction: float, seed: int, min_per_class: int = 2) -> np.ndarray:
    """Indices of a class-stratified `fraction` of `labels` (at least `min_per_class` each), sorted."""
    rng = np.random.default_rng(seed)
    y = labels.numpy()
    keep = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        k = min(len(idx), max(min_per_class, int(round(fraction * len(idx)))))
        keep.append(rng.choice(idx, size=k, replace=False))
    return np.sort(np.concatenate(keep))
