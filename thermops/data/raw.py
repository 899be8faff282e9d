"""The raw data format shared by the embedded world and every importer.

A raw dataset is one folder:

    clips.csv          one row per clip (columns CLIP_COLUMNS)
    annotations.csv    one row per object per frame (columns ANNOTATION_COLUMNS)
    frames/<clip_id>.npy   (T, H, W) uint16 counts (radiometric) or uint8 (display8)

A clip may name its `split` (train, val, test): the embedded world renders its
splits as separate clips, so no scene, hour or object is shared between them;
empty means `prepare` splits the clip's tracks. `agc` says how 8-bit frames were
made from the sensor's counts (`linear`, `plateau`, `gamma`, `clipped`, with
`-inverted` for black-hot); empty for raw counts or when a real set does not say.

Boxes are absolute pixels `x0 y0 x1 y1` (x1, y1 exclusive). `track_id` is unique
within a clip; `label` is already a thermops class (importers map source names
through params and keep the original in `source_label`). `distance_m`,
`ground_x`, `ground_y` are empty when the camera geometry is unknown.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from thermops.io import read_csv, write_csv

CLIP_COLUMNS = [
    "clip_id", "camera_id", "calibration_version", "source", "n_frames", "height", "width",
    "dtype", "units", "fps", "time_of_day_h", "weather", "ambient_c", "split", "agc",
]
ANNOTATION_COLUMNS = [
    "clip_id", "frame", "track_id", "label", "source_label", "x0", "y0", "x1", "y1",
    "ground_x", "ground_y", "distance_m",
]
UNITS = ("counts", "display8")
SPLITS = ("train", "val", "test")


class RawDataError(ValueError):
    """A raw dataset is missing files or violates the format."""


@dataclass(frozen=True)
class Clip:
    """One clip's metadata row (frames are loaded lazily)."""

    clip_id: str
    camera_id: str
    calibration_version: str
    source: str
    n_frames: int
    height: int
    width: int
    dtype: str
    units: str
    fps: float
    time_of_day_h: float | None
    weather: str
    ambient_c: float | None
    split: str = ""  # a split chosen by the source (the embedded world's clip-disjoint splits); "" = by track
    agc: str = ""  # how 8-bit frames were made (linear, plateau, gamma, clipped[-inverted]); "" = counts or unknown


def _opt_float(v: str) -> float | None:
    return float(v) if v not in ("", None) else None


def write_raw(root: Path, clips: list[dict], annotations: list[dict], frames: dict[str, np.ndarray]) -> None:
    """Write a raw dataset into `root` (normally an `atomic_dir`)."""
    (root / "frames").mkdir(parents=True, exist_ok=True)
    for clip in clips:
        arr = frames[clip["clip_id"]]
        if arr.ndim != 3:
            raise RawDataError(f"clip {clip['clip_id']}: frames must be (T, H, W), got shape {arr.shape}")
        np.save(root / "frames" / f"{clip['clip_id']}.npy", arr, allow_pickle=False)
    annotations = sorted(annotations, key=lambda a: (a["clip_id"], int(a["frame"]), str(a["track_id"])))
    clips = [{"split": "", "agc": "", **c} for c in clips]  # the two optional columns
    bad = sorted({c["split"] for c in clips} - {"", *SPLITS})
    if bad:
        raise RawDataError(f"clip split(s) {bad} not in {SPLITS}")
    write_csv(root / "clips.csv", sorted(clips, key=lambda c: c["clip_id"]), CLIP_COLUMNS)
    write_csv(root / "annotations.csv", annotations, ANNOTATION_COLUMNS)


def read_clips(root: str | Path) -> list[Clip]:
    root = Path(root)
    path = root / "clips.csv"
    if not path.is_file():
        raise RawDataError(f"{root}: not a raw dataset (no clips.csv)")
    rows = read_csv(path)
    clips = []
    for i, r in enumerate(rows):
        try:
            clips.append(
                Clip(
                    clip_id=r["clip_id"], camera_id=r["camera_id"], calibration_version=r["calibration_version"],
                    source=r["source"], n_frames=int(r["n_frames"]), height=int(r["height"]), width=int(r["width"]),
                    dtype=r["dtype"], units=r["units"], fps=float(r["fps"]),
                    time_of_day_h=_opt_float(r["time_of_day_h"]), weather=r["weather"],
                    ambient_c=_opt_float(r["ambient_c"]),
                    split=r.get("split") or "",  # older raw folders have neither column
                    agc=r.get("agc") or "",
                )
            )
        except (KeyError, ValueError) as err:
            raise RawDataError(f"{path}: row {i + 2}: {err}") from None
        if clips[-1].units not in UNITS:
            raise RawDataError(f"{path}: row {i + 2}: units {clips[-1].units!r} not in {UNITS}")
        if clips[-1].split not in ("", *SPLITS):
            raise RawDataError(f"{path}: row {i + 2}: split {clips[-1].split!r} not in {SPLITS} (or empty)")
    return clips


def read_annotations(root: str | Path) -> list[dict]:
    """Annotation rows with numeric fields converted (distance etc. None when unknown)."""
    path = Path(root) / "annotations.csv"
    if not path.is_file():
        raise RawDataError(f"{root}: no annotations.csv")
    out = []
    for i, r in enumerate(read_csv(path)):
        try:
            out.append(
                {
                    "clip_id": r["clip_id"], "frame": int(r["frame"]), "track_id": r["track_id"],
                    "label": r["label"], "source_label": r["source_label"],
                    "x0": float(r["x0"]), "y0": float(r["y0"]), "x1": float(r["x1"]), "y1": float(r["y1"]),
                    "ground_x": _opt_float(r["ground_x"]), "ground_y": _opt_float(r["ground_y"]),
                    "distance_m": _opt_float(r["distance_m"]),
                }
            )
        except (KeyError, ValueError) as err:
            raise RawDataError(f"{path}: row {i + 2}: {err}") from None
    return out


def load_frames(root: str | Path, clip: Clip) -> np.ndarray:
    """(T, H, W) frames of one clip, checked against its metadata row."""
    path = Path(root) / "frames" / f"{clip.clip_id}.npy"
    if not path.is_file():
        raise RawDataError(f"{path}: frames of clip {clip.clip_id} missing")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise RawDataError(f"{path}: unreadable frames: {err}") from None
    if arr.shape != (clip.n_frames, clip.height, clip.width):
        raise RawDataError(
            f"{path}: shape {arr.shape} does not match clips.csv ({clip.n_frames}, {clip.height}, {clip.width})"
        )
    return arr
