"""The prepared-data contract: tubelets plus their manifest.

A prepared dataset is one folder:

    tubelets.npy   float32 (N, T, H, W), values in the row's `units`
    manifest.csv   one row per tubelet (columns MANIFEST_COLUMNS), row i <-> tubelets[i]
    summary.json   counts per split, label, camera and source

`units` is `celsius` (radiometric camera, counts converted through the
calibration), `counts` (radiometric normalization switched off) or `display8`
(8-bit AGC output, no temperature; `agc` names the display mapping when the
source says it). `source_label` is the object's own kind (`person_walking`,
`parked_car`, `reflection`, ...; `background` for background windows), `box_px`
its apparent size (median longer box side, pixels). Splits are by clip where the
source chose them (the embedded world), by image for still images, otherwise by
track and camera: every `track_id` (globally unique, `<source>/<clip>/<track>`)
lives in one split.
Only the standard library and NumPy are used here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from thermops.io import read_csv

MANIFEST_COLUMNS = [
    "tubelet_id", "camera_id", "calibration_version", "source", "clip_id", "split", "label", "kind",
    "source_label", "track_id", "frame_start", "frame_end", "boxes", "box_px", "distance_m", "window_m",
    "window_px", "units", "agc", "mean", "std", "min", "max", "p01", "p99",
]
SPLITS = ("train", "val", "test")
UNITS = ("celsius", "counts", "display8")
KINDS = ("object", "background")


class PreparedDataError(ValueError):
    """A prepared dataset is missing files or is inconsistent."""


@dataclass(frozen=True)
class PreparedData:
    """Tubelets (memory-mapped) and manifest rows of a prepared dataset."""

    tubelets: np.ndarray
    rows: list[dict[str, str]]

    def indices(self, split: str) -> np.ndarray:
        return np.array([i for i, r in enumerate(self.rows) if r["split"] == split], dtype=np.int64)

    def labels(self, classes: list[str]) -> np.ndarray:
        index = {c: i for i, c in enumerate(classes)}
        unknown = sorted({r["label"] for r in self.rows} - set(index))
        if unknown:
            raise PreparedDataError(f"labels {unknown} are not in the classes {classes}")
        return np.array([index[r["label"]] for r in self.rows], dtype=np.int64)

    def units(self) -> list[str]:
        return [r["units"] for r in self.rows]


def load_prepared(root: str | Path, mmap: bool = True) -> PreparedData:
    """Load a prepared dataset, checking that manifest and array agree."""
    root = Path(root)
    arr_path, man_path = root / "tubelets.npy", root / "manifest.csv"
    for p in (arr_path, man_path):
        if not p.is_file():
            raise PreparedDataError(f"{root}: not a prepared dataset ({p.name} missing)")
    tubelets = np.load(arr_path, mmap_mode="r" if mmap else None, allow_pickle=False)
    rows = read_csv(man_path)
    if tubelets.ndim != 4 or tubelets.shape[0] != len(rows):
        raise PreparedDataError(f"{root}: tubelets.npy has shape {tubelets.shape}, manifest has {len(rows)} rows")
    return PreparedData(tubelets=tubelets, rows=rows)


def row_boxes(row: dict[str, str]) -> list[list[float]]:
    return json.loads(row["boxes"]) if row.get("boxes") else []
