"""Torch datasets over the prepared-data contract (`thermops.data.prepared`).

Every tubelet goes through `thermops.model.preprocess.prepare_batch` once, when the
dataset is built: the model input is then a fixed (N, 1, T, H, W) float tensor,
the same one the gate and the service compute from the model card's `InputSpec`.
The prepared sets are small (a few thousand 8 x 32 x 32 tubelets), so holding the
inputs in memory is cheaper than re-normalizing every epoch.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from thermops.data.prepared import PreparedData, PreparedDataError, load_prepared
from thermops.io import hash_files
from thermops.learn.warmstart import camera_fingerprints
from thermops.model.preprocess import InputSpec, geometry_features, prepare_batch


class TubeletDataset(Dataset):
    """Model inputs (N, 1, T, H, W), optional geometry features (N, G), optional camera pixels
    across each window (N,) and labels (N,).

    Items are `(x, [geo], [px], y)`, or without `y` when unlabelled: `geo` when the dataset has
    geometry features (`thermops.model.preprocess.geometry_features`), `px` when it has window
    sizes (the manifest's `window_px`, which the range augmentation reads: `thermops.learn.augment.far`).
    `unpack` takes a labelled batch apart.
    """

    def __init__(
        self,
        inputs: torch.Tensor,
        labels: torch.Tensor | None = None,
        geo: torch.Tensor | None = None,
        px: torch.Tensor | None = None,
    ):
        if labels is not None and len(labels) != len(inputs):
            raise ValueError(f"{len(labels)} labels for {len(inputs)} inputs")
        if geo is not None and (geo.ndim != 2 or len(geo) != len(inputs)):
            raise ValueError(f"geometry features of shape {tuple(geo.shape)} for {len(inputs)} inputs")
        if px is not None and (px.ndim != 1 or len(px) != len(inputs) or not bool((px > 0).all())):
            raise ValueError(f"window sizes of shape {tuple(px.shape)} for {len(inputs)} inputs: one positive px each")
        self.inputs = inputs
        self.labels = labels
        self.geo = geo
        self.px = px

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i):
        item = (self.inputs[i],)
        item += () if self.geo is None else (self.geo[i],)
        item += () if self.px is None else (self.px[i],)
        return item if self.labels is None else (*item, self.labels[i])

    def subset(self, idx: np.ndarray | torch.Tensor) -> TubeletDataset:
        """The rows `idx` as a new dataset (shares nothing mutable with this one)."""
        idx = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        return TubeletDataset(
            self.inputs[idx],
            None if self.labels is None else self.labels[idx],
            None if self.geo is None else self.geo[idx],
            None if self.px is None else self.px[idx],
        )


def unpack(
    batch: tuple[torch.Tensor, ...],
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
    """A labelled batch `(x, [geo], [px], y)` -> `(x, geo or None, px or None, y)`: geometry features
    are (N, G), window sizes (N,)."""
    x, *mid, y = batch
    geo = next((t for t in mid if t.ndim == 2), None)
    px = next((t for t in mid if t.ndim == 1), None)
    if len(mid) > 2 or (len(mid) == 2 and (geo is None or px is None)):
        raise ValueError(f"a batch is (x, [geo (N, G)], [px (N,)], y), got shapes {[tuple(t.shape) for t in batch]}")
    return x, geo, px, y


def row_window_px(data: PreparedData, idx: np.ndarray) -> torch.Tensor:
    """(len(idx),) camera pixels across the windows of rows `idx` (manifest `window_px`).

    Raises PreparedDataError naming the first row whose `window_px` is not a positive number."""
    out = np.empty(len(idx), dtype=np.float32)
    for j, i in enumerate(idx):
        r = data.rows[int(i)]
        try:
            out[j] = float(r["window_px"])
        except (KeyError, TypeError, ValueError):
            out[j] = float("nan")
        if not out[j] > 0:
            raise PreparedDataError(
                f"row {int(i)} (camera {r.get('camera_id')}, track {r.get('track_id')}): "
                f"window_px {r.get('window_px')!r} is not a positive pixel count"
            )
    return torch.as_tensor(out)


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


SPLIT_MODES = ("prepared", "range", "camera")


@dataclass(frozen=True)
class SplitParams:
    """params `split`: which rows train, validate and test (re-split at load time from manifest columns).

    Attributes:
        mode: `prepared`: the prepare step's track-disjoint random split. `range` (unseen
            ranges): per (camera, label), tracks are ranked by their median `distance_m`; the
            nearest `near_fraction` train (their prepared `val` rows validate), the farthest
            `far_fraction` test, the band between is left out; rows without a distance are
            left out. `camera` (unseen camera): every row of `heldout_camera` tests; the
            other cameras' prepared `val` rows validate and all their other rows train.
        near_fraction, far_fraction: the `range` mode's shares of each group's tracks.
        heldout_camera: the `camera` mode's test camera.
    """

    mode: str
    near_fraction: float
    far_fraction: float
    heldout_camera: str

    def __post_init__(self):
        if self.mode not in SPLIT_MODES:
            raise ValueError(f"split.mode {self.mode!r} is not one of {list(SPLIT_MODES)}")
        if not (0 < self.near_fraction and 0 < self.far_fraction and self.near_fraction + self.far_fraction <= 1):
            raise ValueError(
                f"split.near_fraction {self.near_fraction} and far_fraction {self.far_fraction} must be > 0 "
                "and sum to at most 1"
            )


def split_rows(rows: list[dict[str, str]], split: SplitParams | None) -> list[str | None]:
    """The split ('train' | 'val' | 'test' | None: left out) of every manifest row under `split`."""
    if split is None or split.mode == "prepared":
        return [r["split"] for r in rows]
    if split.mode == "camera":
        cams = sorted({r["camera_id"] for r in rows})
        if split.heldout_camera not in cams:
            raise PreparedDataError(
                f"split.heldout_camera {split.heldout_camera!r} is not in the data's cameras {cams}"
            )
        if len(cams) < 2:
            raise PreparedDataError(f"split.mode camera needs at least two cameras, the data has {cams}")
        return [
            "test" if r["camera_id"] == split.heldout_camera else ("val" if r["split"] == "val" else "train")
            for r in rows
        ]
    dist: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        d = r.get("distance_m")
        if d not in (None, "", "None") and math.isfinite(float(d)):
            dist[r["track_id"]].append(float(d))
    groups: dict[tuple[str, str], list[tuple[float, str]]] = defaultdict(list)
    seen = set()
    for r in rows:
        t = r["track_id"]
        if t in dist and t not in seen:
            seen.add(t)
            groups[(r["camera_id"], r["label"])].append((float(sorted(dist[t])[len(dist[t]) // 2]), t))
    band: dict[str, str] = {}
    for key in sorted(groups):
        ranked = [t for _, t in sorted(groups[key])]
        n = len(ranked)
        n_near = int(round(split.near_fraction * n))
        n_far = int(round(split.far_fraction * n))
        for i, t in enumerate(ranked):
            band[t] = "near" if i < n_near else "far" if i >= n - n_far else "mid"
    out: list[str | None] = []
    for r in rows:
        b = band.get(r["track_id"])
        out.append("test" if b == "far" else ("val" if r["split"] == "val" else "train") if b == "near" else None)
    return out


@dataclass
class PreparedSplits:
    """Labelled train/val/test datasets of one prepared folder, plus its lineage."""

    train: TubeletDataset
    val: TubeletDataset
    test: TubeletDataset
    classes: list[str]
    calibrations: dict[str, str]
    data_info: dict


def row_geometry(data: PreparedData, idx: np.ndarray, spec: InputSpec) -> torch.Tensor | None:
    """(len(idx), G) geometry features of rows `idx` from their manifest `window_m` / `window_px`, or None
    when the input spec has none."""
    if not spec.geometry:
        return None
    out = []
    for i in idx:
        r = data.rows[int(i)]
        wm = r.get("window_m")
        wm = float(wm) if wm not in (None, "", "None") else None
        out.append(geometry_features(wm, float(r["window_px"]), spec))
    return torch.as_tensor(np.asarray(out, dtype=np.float32)).reshape(len(idx), len(spec.geometry))


def load_splits(
    root: str | Path, classes: list[str], spec: InputSpec, split: SplitParams | None = None
) -> PreparedSplits:
    """Load a prepared folder as labelled splits; `calibrations` are those of train+val rows.

    `split` re-splits the rows (`split_rows`); None keeps the prepared split.
    Raises PreparedDataError when a split is empty or a label is not in `classes`.
    """
    root = Path(root)
    data = load_prepared(root)
    labels = torch.as_tensor(data.labels(classes))
    assigned = split_rows(data.rows, split)
    sets = {}
    for name in ("train", "val", "test"):
        idx = np.array([i for i, a in enumerate(assigned) if a == name], dtype=np.int64)
        if len(idx) == 0:
            raise PreparedDataError(f"{root}: split {name!r} is empty" + (f" under {split}" if split else ""))
        sets[name] = TubeletDataset(
            model_inputs(data, idx, spec),
            labels[torch.as_tensor(idx)],
            row_geometry(data, idx, spec),
            row_window_px(data, idx),
        )
    calibrations: dict[str, str] = {}
    for r, a in zip(data.rows, assigned):
        if a in ("train", "val"):
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
            s: dict(sorted(Counter(r["label"] for r, a in zip(data.rows, assigned) if a == s).items()))
            for s in ("train", "val", "test")
        },
        "split": "prepared" if split is None else split.mode,
        "per_camera": camera_fingerprints(data, assigned),  # what a warm retrain compares (thermops.learn.warmstart)
    }
    if split is not None and split.mode != "prepared":
        info["split_params"] = {
            "mode": split.mode,
            **(
                {"heldout_camera": split.heldout_camera}
                if split.mode == "camera"
                else {"near_fraction": split.near_fraction, "far_fraction": split.far_fraction}
            ),
        }
    return PreparedSplits(sets["train"], sets["val"], sets["test"], list(classes), calibrations, info)


def load_unlabeled(
    root: str | Path,
    spec: InputSpec,
    split: SplitParams | None = None,
    unlabeled: str | Path | None = None,
) -> tuple[TubeletDataset, dict]:
    """Pretraining tubelets, never their labels: the prepared rows that train under `split`, plus every
    tubelet of an unlabeled folder (the `unlabeled` step's output) when given. Items are `(x, px)`:
    px, the camera pixels across each window, is what the range augmentation reads."""
    root = Path(root)
    data = load_prepared(root)
    idx = np.array([i for i, a in enumerate(split_rows(data.rows, split)) if a == "train"], dtype=np.int64)
    if len(idx) == 0:
        raise PreparedDataError(f"{root}: no training rows" + (f" under {split}" if split else ""))
    parts = [model_inputs(data, idx, spec)]
    sizes = [row_window_px(data, idx)]
    info = {
        "prepared": str(root),
        "prepared_hash": hash_files([root]),
        "n_labelled_pool": int(len(idx)),
        "sources": sorted({data.rows[i]["source"] for i in idx}),
    }
    if unlabeled is not None:
        extra = load_prepared(unlabeled)
        if extra.tubelets.shape[0] == 0:
            raise PreparedDataError(f"{unlabeled}: no unlabeled tubelets")
        parts.append(model_inputs(extra, np.arange(len(extra.rows)), spec))
        sizes.append(row_window_px(extra, np.arange(len(extra.rows))))
        info["unlabeled_hash"] = hash_files([Path(unlabeled)])
        info["n_unlabeled"] = len(extra.rows)
        info["sources"] = sorted(set(info["sources"]) | {r["source"] for r in extra.rows})
    x = torch.cat(parts)
    info["n"] = int(len(x))
    return TubeletDataset(x, px=torch.cat(sizes)), info


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
