"""From raw clips to tubelets: calibration-aware windows, background samples, splits.

Geometric normalization (a seed of this project): CNNs tolerate translation and
some scale, not perspective. With `geometric` on and the camera geometry known,
the window around an object covers a fixed metric extent (`window_m` metres at
the object's depth), so a person at 20 m and at 200 m reaches the network at
comparable size; a person at 200 m through a 640-pixel, 18-degree lens is only
about 9 pixels tall, and upsampling such a window is what makes it comparable
(THERMAL-FACTS: classify targets a few pixels tall at the far range). Without
geometry (or with `geometric` off) the window is `context` x the box size, as it
always is for real sets of unknown geometry; `box_fraction` of the tracks (chosen
per track, deterministically) are cut that way even where the geometry is known,
so a model also sees objects filling the window the way real crops show them.

Radiometric normalization: counts become degrees Celsius through the camera's
calibration (`radiometric` on); `display8` images keep their grey levels.

Tubelets of tracks shorter than T frames repeat their last frame; a single image
(a one-frame track) becomes T copies of its window, so the network sees a static
tubelet and must rely on appearance alone.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from thermops.camera.calibration import Calibration
from thermops.camera.geometry import PinholeCamera
from thermops.data.raw import Clip, RawDataError, load_frames, read_annotations, read_clips
from thermops.data.prepared import SPLITS
from thermops.model.preprocess import resample, to_model_units


@dataclass(frozen=True)
class PrepareParams:
    """The `prepare` section of params.yaml."""

    frames: int
    size: int
    stride: int
    radiometric: bool
    geometric: bool
    window_m: float
    context: float
    box_fraction: float
    min_window_px: int
    min_box_px: int
    background_per_clip: int
    splits: dict[str, float]
    # Box-relative background windows where the geometry is known: None cuts them around a
    # random 8-32 px "box" (so their metric size grows with range, unlike any object's);
    # [lo, hi] draws the box's metres log-uniform in [lo, hi] instead, so that at every range
    # background windows span the objects' sizes and size alone does not say "background".
    background_m: tuple[float, float] | None

    def __post_init__(self) -> None:
        if set(self.splits) != set(SPLITS):
            raise ValueError(f"splits must name exactly {list(SPLITS)}")
        if abs(sum(self.splits.values()) - 1.0) > 1e-6 or min(self.splits.values()) < 0:
            raise ValueError("split fractions must be non-negative and sum to 1")
        if self.frames < 1 or self.size < 8 or self.stride < 1:
            raise ValueError("frames >= 1, size >= 8 and stride >= 1 are required")
        if not 0.0 <= self.box_fraction <= 1.0:
            raise ValueError("box_fraction must be in [0, 1]")
        if self.background_m is not None and not 0 < self.background_m[0] <= self.background_m[1]:
            raise ValueError(f"background_m {list(self.background_m)} must be [lo, hi] metres with 0 < lo <= hi")


# Background windows flatter than this (in their units) are skipped: a saturated
# display8 sky gives identical all-zero tubelets that only duplicate each other.
FLAT_STD = 1e-3


class PrepareError(ValueError):
    """Raw data cannot be turned into tubelets (mismatched calibration, bad labels, ...)."""


def stable_unit(*parts: str) -> float:
    """A deterministic number in [0, 1) from strings (independent of PYTHONHASHSEED)."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def crop_window(frames: np.ndarray, centers: np.ndarray, side: int, size: int) -> np.ndarray:
    """(T, H, W) frames, (T, 2) centers (x, y), square side in px -> (T, size, size).

    Windows reaching past the border replicate the edge pixels, as a camera
    would show the last row and column rather than an invented background.
    """
    t, h, w = frames.shape
    out = np.empty((t, side, side), dtype=np.float32)
    span = np.arange(side)
    for i in range(t):
        # At most one window beyond the border (as if padded by `side`), edge pixels replicated.
        x0 = min(max(int(round(centers[i, 0] - side / 2)), -side), w)
        y0 = min(max(int(round(centers[i, 1] - side / 2)), -side), h)
        rows = np.clip(y0 + span, 0, h - 1)
        cols = np.clip(x0 + span, 0, w - 1)
        out[i] = frames[i][rows[:, None], cols[None, :]]
    return resample(out, t, size).numpy()


def window_frames(track_frames: list[int], frames: int, stride: int) -> list[list[int]]:
    """Frame indices of the tubelets cut from one track (short tracks repeat their last frame)."""
    if len(track_frames) <= frames:
        return [track_frames + [track_frames[-1]] * (frames - len(track_frames))]
    starts = range(0, len(track_frames) - frames + 1, stride)
    return [track_frames[s : s + frames] for s in starts]


def _stats(x: np.ndarray) -> dict[str, float]:
    p01, p99 = np.percentile(x, [1, 99])
    return {
        "mean": float(x.mean()), "std": float(x.std()), "min": float(x.min()), "max": float(x.max()),
        "p01": float(p01), "p99": float(p99),
    }


def _side_px(cam: PinholeCamera | None, p: PrepareParams, ground: tuple[float, float] | None,
             box_px: float, max_side: int, box_relative: bool = False) -> tuple[int, float | None]:
    """Window side in pixels, at most `max_side`, and the metric extent it covers (None if geometry unknown).

    `box_relative`: this window is `context` x the box even where the geometry is known
    (`prepare.box_fraction`). The cap matters at the lens (drips, birds): there the frame
    is the window, and the extent recorded is what the capped window really covers.
    """
    if cam is not None and ground is not None:
        px_per_m = cam.metric_extent_px(np.array(ground), 1.0)
        metric = p.geometric and not box_relative
        extent_px = p.window_m * px_per_m if metric else p.context * box_px
        side = min(max(p.min_window_px, int(round(extent_px))), max_side)
        return side, side / px_per_m
    return min(max(p.min_window_px, int(round(p.context * box_px))), max_side), None


def extract_clip(
    source: str,
    clip: Clip,
    frames: np.ndarray,
    annotations: list[dict],
    cal: Calibration,
    p: PrepareParams,
    classes: list[str],
    seed: int,
) -> tuple[list[dict], list[np.ndarray]]:
    """Tubelets of one clip: one per window of every track, plus background windows."""
    values, units = to_model_units(frames, cal, "celsius" if p.radiometric else "counts", clip.units)
    cam = PinholeCamera.from_calibration(cal) if cal.geometry.known else None
    tracks: dict[str, list[dict]] = defaultdict(list)
    for a in annotations:
        if a["label"] not in classes:
            raise PrepareError(f"clip {clip.clip_id}: label {a['label']!r} is not one of the classes {classes}")
        tracks[a["track_id"]].append(a)
    rows: list[dict] = []
    arrays: list[np.ndarray] = []
    boxes_all = []
    for track_id in sorted(tracks):
        anns = sorted(tracks[track_id], key=lambda a: a["frame"])
        by_frame = {a["frame"]: a for a in anns}
        for win in window_frames([a["frame"] for a in anns], p.frames, p.stride):
            wa = [by_frame[f] for f in win]
            box_px = float(np.median([max(a["x1"] - a["x0"], a["y1"] - a["y0"]) for a in wa]))
            if box_px < p.min_box_px:
                continue
            ground = None
            if wa[0]["ground_x"] is not None and all(a["ground_x"] is not None for a in wa):
                ground = (float(np.median([a["ground_x"] for a in wa])), float(np.median([a["ground_y"] for a in wa])))
            box_relative = stable_unit(str(seed), "box", source, clip.clip_id, track_id) < p.box_fraction
            side, window_m = _side_px(cam, p, ground, box_px, max(values.shape[1:]), box_relative)
            centers = np.array([[(a["x0"] + a["x1"]) / 2, (a["y0"] + a["y1"]) / 2] for a in wa])
            tub = crop_window(values[win], centers, side, p.size)
            dists = [a["distance_m"] for a in wa if a["distance_m"] is not None]
            rows.append(
                {
                    "tubelet_id": f"{source}/{clip.clip_id}/{track_id}/{win[0]:05d}",
                    "camera_id": clip.camera_id, "calibration_version": clip.calibration_version,
                    "source": source, "clip_id": clip.clip_id, "label": wa[0]["label"], "kind": "object",
                    "source_label": wa[0]["source_label"],
                    "track_id": f"{source}/{clip.clip_id}/{track_id}", "frame_start": win[0], "frame_end": win[-1],
                    "boxes": [[round(a[k], 1) for k in ("x0", "y0", "x1", "y1")] for a in wa],
                    "box_px": round(box_px, 1),
                    "distance_m": float(np.median(dists)) if dists else None, "window_m": window_m,
                    "window_px": side, "units": units, "agc": clip.agc, **_stats(tub),
                }
            )
            arrays.append(tub)
        boxes_all.extend(anns)
    rows_bg, arrays_bg = _background(source, clip, values, units, boxes_all, cam, p, seed)
    return rows + rows_bg, arrays + arrays_bg


def _background(source, clip, values, units, anns, cam, p, seed):
    """Windows with no annotated object in them, at random places below the horizon."""
    rng = np.random.default_rng(int(stable_unit(str(seed), source, clip.clip_id) * 2**32))
    t, h, w = values.shape
    rows, arrays = [], []
    top = 0
    if cam is not None:
        top = int(np.clip(cam.horizon_v() + 4, 0, h - p.min_window_px))
    attempts = 0
    k = 0
    max_attempts = 50 * max(1, p.background_per_clip)
    # Candidate centres drawn at once, their ground points in one (iterative, undistorting) call.
    cands = np.stack([rng.uniform(0, w, max_attempts), rng.uniform(top, h, max_attempts)], axis=1)
    grounds = cam.pixel_to_ground(cands) if cam is not None and p.background_per_clip else None
    while k < p.background_per_clip and attempts < max_attempts:
        cx, cy = cands[attempts]
        ground = None
        if grounds is not None:
            g = grounds[attempts]
            if not np.all(np.isfinite(g)):
                attempts += 1
                continue
            ground = (float(g[0]), float(g[1]))
        attempts += 1
        box_px = rng.uniform(8, 32)
        if p.background_m is not None and ground is not None and not p.geometric:
            lo, hi = np.log(p.background_m)
            box_px = float(np.exp(rng.uniform(lo, hi))) * cam.metric_extent_px(np.array(ground), 1.0)
        side, window_m = _side_px(cam, p, ground, box_px, min(h, w))
        f0 = int(rng.integers(0, max(1, t - p.frames + 1)))
        win = window_frames(list(range(f0, min(t, f0 + p.frames))), p.frames, p.stride)[0]
        x0, y0, x1, y1 = cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2
        if any(a["frame"] in win and a["x0"] < x1 and a["x1"] > x0 and a["y0"] < y1 and a["y1"] > y0 for a in anns):
            continue
        tub = crop_window(values[win], np.tile([cx, cy], (len(win), 1)), side, p.size)
        if float(tub.std()) < FLAT_STD:  # saturated sky or a blank border: no information, and duplicates
            continue
        rows.append(
            {
                "tubelet_id": f"{source}/{clip.clip_id}/bg{k}/{win[0]:05d}", "camera_id": clip.camera_id,
                "calibration_version": clip.calibration_version, "source": source, "clip_id": clip.clip_id,
                "label": "nuisance", "kind": "background", "source_label": "background",
                "track_id": f"{source}/{clip.clip_id}/bg{k}",
                "frame_start": win[0], "frame_end": win[-1], "boxes": [[round(v, 1) for v in (x0, y0, x1, y1)]],
                "box_px": None, "distance_m": float(np.hypot(*ground)) if ground else None, "window_m": window_m,
                "window_px": side, "units": units, "agc": clip.agc, **_stats(tub),
            }
        )
        arrays.append(tub)
        k += 1
    return rows, arrays


def rank_split(units: list[str], fractions: dict[str, float], seed: int) -> dict[str, str]:
    """Split a group of units (tracks, or still images) by a seeded, stable ranking: unit -> split.

    A unit's split depends only on the group's unit set and the seed (never on the
    order the units were read), so the same images get the same split whichever
    other sources are prepared with them.
    """
    ranked = sorted(set(units), key=lambda u: stable_unit(str(seed), u))
    n = len(ranked)
    n_train = int(round(fractions["train"] * n))
    n_val = int(round(fractions["val"] * n))
    if n >= 3:  # keep every split populated when the group allows it
        n_train = min(max(n_train, 1), n - 2)
        n_val = min(max(n_val, 1), n - n_train - 1)
    return {u: "train" if i < n_train else "val" if i < n_train + n_val else "test" for i, u in enumerate(ranked)}


def still_image_splits(still: dict[str, list[str]], fractions: dict[str, float], seed: int) -> dict[str, str]:
    """Split of every still image: `still` maps camera -> its still clips (`<source>/<clip_id>`).

    A single image holds many one-frame tracks that share its scene and its moment;
    they go together, by image, stratified by camera, so no image feeds both
    training and test.
    """
    out: dict[str, str] = {}
    for cam in sorted(still):
        out.update(rank_split([f"clip:{c}" for c in still[cam]], fractions, seed))
    return {u.removeprefix("clip:"): sp for u, sp in out.items()}


def assign_splits(
    rows: list[dict], fractions: dict[str, float], seed: int, still_clips: frozenset[str] = frozenset()
) -> None:
    """Split by track, stratified by (camera, label): every track lives in one split.

    Rows that already carry a split (a source's own clip-disjoint splits) keep it.
    A single image (a clip of one frame, `still_clips` holding `<source>/<clip_id>`)
    holds many one-frame tracks that share its scene and its moment; they are split
    together, by image, stratified by camera (`still_image_splits`).
    """
    free = [r for r in rows if not r.get("split")]
    still: dict[str, list[str]] = defaultdict(list)
    tracks: dict[tuple[str, str], list[str]] = defaultdict(list)
    for r in free:
        clip = f"{r['source']}/{r['clip_id']}"
        if clip in still_clips:
            still[r["camera_id"]].append(clip)
        else:
            tracks[(r["camera_id"], r["label"])].append(r["track_id"])
    split_of = {f"clip:{k}": v for k, v in still_image_splits(still, fractions, seed).items()}
    for key in sorted(tracks):
        split_of.update(rank_split(tracks[key], fractions, seed))
    for r in free:
        clip = f"{r['source']}/{r['clip_id']}"
        r["split"] = split_of[f"clip:{clip}" if clip in still_clips else r["track_id"]]


def raw_folders(raw_root: Path, sources: list[str]) -> list[tuple[str, Path]]:
    """(source name, raw dataset folder) for every selected source."""
    out = []
    for s in sources:
        if s == "synthetic":
            base = raw_root / "synthetic"
            folders = sorted(q for q in base.glob("*") if (q / "clips.csv").is_file()) if base.is_dir() else []
            if not folders:
                raise PrepareError(f"{base}: no synthetic raw data (run the synthesize stage)")
            out.extend(("synthetic", q) for q in folders)
        else:
            q = raw_root / "imported" / s
            if not (q / "clips.csv").is_file():
                raise PrepareError(f"{q}: source {s!r} is selected in data.sources but was not imported")
            out.append((s, q))
    return out


def extract_all(
    folders: list[tuple[str, Path]],
    calibrations: dict[str, Calibration],
    p: PrepareParams,
    classes: list[str],
    seed: int,
    keep_splits: frozenset[str] | None = None,
) -> tuple[list[dict], np.ndarray]:
    """All tubelets of all raw folders, split, sorted by id: (manifest rows, (N, T, H, W) array).

    `keep_splits` (e.g. {"test"}): keep only rows of these splits. Still images of
    other splits are not even cut (their split is known from the clip list alone),
    which makes scoring a still-image set's test split cheap.
    """
    rows: list[dict] = []
    arrays: list[np.ndarray] = []
    work: list[tuple[str, Path, Clip, list[dict]]] = []
    still: dict[str, list[str]] = defaultdict(list)
    for source, folder in folders:
        anns_by_clip: dict[str, list[dict]] = defaultdict(list)
        for a in read_annotations(folder):
            anns_by_clip[a["clip_id"]].append(a)
        for clip in read_clips(folder):
            cal = calibrations.get(clip.camera_id)
            if cal is None:
                raise PrepareError(f"{folder}: clip {clip.clip_id}: no calibration file for camera {clip.camera_id!r}")
            if cal.version != clip.calibration_version:
                raise PrepareError(
                    f"{folder}: clip {clip.clip_id} was recorded with calibration {clip.calibration_version!r} "
                    f"but data/calibration/{clip.camera_id}.yaml is version {cal.version!r}; re-run its import"
                )
            if clip.n_frames == 1 and not clip.split:
                still[clip.camera_id].append(f"{source}/{clip.clip_id}")
            work.append((source, folder, clip, anns_by_clip.get(clip.clip_id, [])))
    still_split = still_image_splits(still, p.splits, seed)
    for source, folder, clip, anns in work:
        fixed = clip.split or still_split.get(f"{source}/{clip.clip_id}", "")
        if keep_splits is not None and fixed and fixed not in keep_splits:
            continue
        try:
            frames = load_frames(folder, clip)
        except RawDataError as err:
            raise PrepareError(str(err)) from None
        r, a = extract_clip(source, clip, frames, anns, calibrations[clip.camera_id], p, classes, seed)
        for row in r:
            row["split"] = fixed
        rows.extend(r)
        arrays.extend(a)
    if not rows:
        raise PrepareError("no tubelets: the selected sources hold no usable tracks")
    assign_splits(rows, p.splits, seed)
    if keep_splits is not None:
        keep = [i for i, r in enumerate(rows) if r["split"] in keep_splits]
        rows, arrays = [rows[i] for i in keep], [arrays[i] for i in keep]
        if not rows:
            raise PrepareError(f"no tubelets in the splits {sorted(keep_splits)}")
    order = sorted(range(len(rows)), key=lambda i: rows[i]["tubelet_id"])
    if len({r["tubelet_id"] for r in rows}) != len(rows):
        raise PrepareError("duplicate tubelet ids (two sources or clips with the same name?)")
    return [rows[i] for i in order], np.stack([arrays[i] for i in order]).astype(np.float32)
