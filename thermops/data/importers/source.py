"""Importing one source set (any format) into the raw format, checked against its calibration."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from thermops.camera.calibration import Calibration, CalibrationError, load_calibration
from thermops.data.importers.base import (
    DROP, VIDEO_SUFFIXES, ImportDataError, IngestParams, SourceParams, safe_id,
)
from thermops.data.importers.images import list_images, read_image, read_sequence
from thermops.data.importers.tracks import link_tracks
from thermops.io import hash_files, write_json
from thermops.data.raw import write_raw


@dataclass
class _Clip:
    clip_id: str
    camera_id: str
    frames: np.ndarray  # (T, H, W)
    boxes: list[list[tuple[str, list[float]]]]  # per frame: (source_label, box)
    fps: float
    sequence: bool
    inputs: list[Path] = field(default_factory=list)
    auto: bool = False


def _root(spec: SourceParams, name: str) -> Path:
    root = Path(spec.root)
    if not root.is_dir():
        raise ImportDataError(f"source {name}: root folder {root} not found")
    return root


def _items(spec: SourceParams, name: str, default: list[str]) -> list[str]:
    items = spec.items or default
    if not items:
        raise ImportDataError(f"source {name}: `items` is empty")
    return items


def _camera_for(spec: SourceParams, name: str, i: int) -> str:
    if spec.cameras:
        if len(spec.cameras) != len(_items(spec, name, [])):
            raise ImportDataError(f"source {name}: `cameras` must have one entry per item")
        return spec.cameras[i]
    if not spec.camera_id:
        raise ImportDataError(f"source {name}: no camera_id")
    return spec.camera_id


def _annotated_clips(name: str, spec: SourceParams, palette: str) -> list[_Clip]:
    """Clips from a labelled image set (VOC, YOLO, COCO); pseudo-colour images become grey by `palette`."""
    from thermops.data.importers.coco import read_coco
    from thermops.data.importers.voc import read_voc
    from thermops.data.importers.yolo import labels_path, read_yolo

    root = _root(spec, name)
    items = _items(spec, name, ["images"])
    if spec.autolabel != "none":
        raise ImportDataError(f"source {name}: autolabel is only for unlabelled frames/video sources")
    clips: list[_Clip] = []
    for i, item in enumerate(items):
        folder = root / item
        camera = _camera_for(spec, name, i)
        cache: dict[Path, np.ndarray] = {}
        if spec.format == "coco":
            if not spec.annotations:
                raise ImportDataError(f"source {name}: COCO needs `annotations` (the JSON file)")
            labels = read_coco(root / spec.annotations, folder, spec.variant)
            extra = [root / spec.annotations]
        else:
            images = list_images(folder)
            if spec.format == "voc":
                if not spec.annotations:
                    raise ImportDataError(f"source {name}: VOC needs `annotations` (the XML folder)")
                labels = read_voc(images, root / spec.annotations)
                extra = [root / spec.annotations / f"{p.stem}.xml" for p in images]
            else:
                cache = {p: read_image(p, palette) for p in images}
                sizes = {p: (a.shape[2], a.shape[1]) for p, a in cache.items()}
                labels = read_yolo(images, list(spec.names), sizes)
                extra = [labels_path(p) for p in images]
        if spec.variant != "standard" and spec.format != "coco":
            raise ImportDataError(f"source {name}: variant {spec.variant!r} applies to COCO only")
        arrays = [
            cache[Path(lab.path)] if Path(lab.path) in cache else read_image(Path(lab.path), palette) for lab in labels
        ]
        for lab, arr in zip(labels, arrays):
            if arr.shape[0] != 1:
                raise ImportDataError(f"{lab.path}: multi-page image in a labelled set")
            if lab.size is not None and lab.size != (arr.shape[2], arr.shape[1]):
                size = (arr.shape[2], arr.shape[1])
                raise ImportDataError(f"{lab.path}: annotation says size {lab.size}, image is {size}")
        per_frame = [[(b.source_label, [b.x0, b.y0, b.x1, b.y1]) for b in lab.boxes] for lab in labels]
        inputs = [Path(lab.path) for lab in labels] + extra
        if spec.sequence:
            if len({a.shape for a in arrays}) > 1 or len({a.dtype for a in arrays}) > 1:
                raise ImportDataError(f"{folder}: frames of one sequence differ in size or pixel type")
            frames = np.concatenate(arrays, axis=0)
            clips.append(_Clip(safe_id(Path(item).name if len(items) > 1 else name), camera, frames, per_frame,
                               spec.fps, True, inputs))
        else:
            prefix = f"{safe_id(item.split('/')[0])}_" if len(items) > 1 else ""
            for lab, arr, boxes in zip(labels, arrays, per_frame):
                clips.append(_Clip(prefix + safe_id(Path(lab.path).stem), camera, arr, [boxes], 0.0, False, []))
            clips[-1].inputs = inputs
    return clips


def _unlabelled_clips(name: str, spec: SourceParams, params: IngestParams) -> list[_Clip]:
    """Clips from frame folders or video files, boxes by auto-labelling or none."""
    from thermops.data.importers.autolabel import bgsub_boxes
    from thermops.data.importers.video import read_video

    root = _root(spec, name)
    items = _items(spec, name, [])
    clips: list[_Clip] = []
    for i, item in enumerate(items):
        path = root / item
        camera = _camera_for(spec, name, i)
        if spec.format == "frames":
            files = list_images(path)
            frames, fps, inputs = read_sequence(files, spec.palette or params.rgb_to_gray), spec.fps, files
        else:
            if path.suffix.lower() not in VIDEO_SUFFIXES:
                raise ImportDataError(f"{path}: not a video file ({', '.join(VIDEO_SUFFIXES)})")
            frames, fps = read_video(path)
            fps, inputs = spec.fps or fps, [path]
        if item in spec.frame_range:
            r = spec.frame_range[item]
            if len(r) != 2 or not 0 <= r[0] < r[1] <= frames.shape[0]:
                raise ImportDataError(f"source {name}: frame_range {r} of {item} outside its {frames.shape[0]} frames")
            frames = frames[r[0] : r[1]]
        boxes: list[list[tuple[str, list[float]]]] = [[] for _ in range(frames.shape[0])]
        if spec.autolabel == "bgsub":
            if frames.shape[0] < 3:
                raise ImportDataError(f"{path}: background subtraction needs at least 3 frames, got {frames.shape[0]}")
            found = bgsub_boxes(frames, params.bgsub_threshold, params.bgsub_min_area_px, params.bgsub_max_objects,
                                set(spec.absent_frames))
            boxes = [[("auto:bgsub", b) for b in fb] for fb in found]
        clips.append(_Clip(safe_id(Path(item).stem), camera, frames, boxes, fps, True, list(inputs),
                           auto=spec.autolabel != "none"))
    return clips


def _check_frames(clip: _Clip, cal: Calibration, where: str) -> str:
    """Frames must match the calibration's image size and pixel type; returns the raw units."""
    t, h, w = clip.frames.shape
    g = cal.geometry
    if (w, h) != (g.image_width, g.image_height):
        raise ImportDataError(f"{where}: frames are {w}x{h}, calibration {cal.camera_id} says "
                              f"{g.image_width}x{g.image_height}")
    if cal.radiometry.mode == "display8":
        if clip.frames.dtype != np.uint8:
            raise ImportDataError(f"{where}: {clip.frames.dtype} frames but calibration {cal.camera_id} "
                                  "is display8 (uint8)")
        return "display8"
    if clip.frames.dtype != np.uint16:
        raise ImportDataError(f"{where}: {clip.frames.dtype} frames but calibration {cal.camera_id} is radiometric "
                              f"(needs uint16 counts)")
    top = int(clip.frames.max())
    if top >= 2**cal.radiometry.bit_depth:
        raise ImportDataError(f"{where}: count {top} exceeds the {cal.radiometry.bit_depth}-bit depth of "
                              f"calibration {cal.camera_id}")
    return "counts"


def _check_box(box: list[float], w: int, h: int, tol: float, where: str) -> list[float]:
    x0, y0, x1, y1 = box
    if not all(np.isfinite(box)):
        raise ImportDataError(f"{where}: box {box} is not finite")
    if x0 < -tol or y0 < -tol or x1 > w + tol or y1 > h + tol:
        raise ImportDataError(f"{where}: box {[round(v, 2) for v in box]} outside the {w}x{h} image")
    x0, y0, x1, y1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(w)), min(y1, float(h))
    if x1 <= x0 or y1 <= y0:
        raise ImportDataError(f"{where}: empty box {[round(v, 2) for v in box]}")
    return [x0, y0, x1, y1]


def import_source(name: str, spec: SourceParams, params: IngestParams, classes: list[str],
                  calibration_dir: Path, out: Path) -> dict:
    """Import one source set into the raw dataset folder `out` (normally inside an atomic_dir).

    Args:
        name: the source name (`data.sources` entry); recorded in clips.csv `source`.
        spec: its `ingest.sources.<name>` params.
        params: the whole `ingest` section (linking and auto-labelling knobs).
        classes: the thermops classes; every class_map value must be one of them or `drop`.
        calibration_dir: folder of `<camera_id>.yaml`; every camera needs one.
        out: target folder (created).

    Returns:
        a summary: clips, frames, boxes per thermops class and per source label, cameras.
    """
    bad = sorted({v for v in spec.class_map.values() if v != DROP and v not in classes})
    if bad:
        raise ImportDataError(f"source {name}: class_map maps to {bad}, not thermops classes {classes} or '{DROP}'")
    if spec.autolabel != "none" and spec.autolabel_class not in classes:
        raise ImportDataError(f"source {name}: autolabel_class {spec.autolabel_class!r} not in {classes}")
    if spec.format in ("voc", "yolo", "coco"):
        clips = _annotated_clips(name, spec, spec.palette or params.rgb_to_gray)
    else:
        clips = _unlabelled_clips(name, spec, params)
    ids = [c.clip_id for c in clips]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ImportDataError(f"source {name}: clip ids collide after sanitizing file names: {dupes[:5]}")

    cals: dict[str, Calibration] = {}
    clip_rows, ann_rows, frames = [], [], {}
    label_counts: dict[str, int] = {}
    source_counts: dict[str, int] = {}
    for clip in clips:
        if clip.camera_id not in cals:
            path = calibration_dir / f"{clip.camera_id}.yaml"
            if not path.is_file():
                raise ImportDataError(f"source {name}: camera {clip.camera_id} has no calibration file {path}")
            try:
                cals[clip.camera_id] = load_calibration(path)
            except CalibrationError as err:
                raise ImportDataError(f"source {name}: {err}") from None
        cal = cals[clip.camera_id]
        where = f"source {name}, clip {clip.clip_id}"
        units = _check_frames(clip, cal, where)
        t, h, w = clip.frames.shape
        mapped: list[list[tuple[str, str, list[float]]]] = []
        for f, fb in enumerate(clip.boxes):
            keep = []
            for src_label, box in fb:
                if clip.auto:
                    label = spec.autolabel_class
                elif src_label in spec.class_map:
                    label = spec.class_map[src_label]
                else:
                    raise ImportDataError(
                        f"{where}: class {src_label!r} is not mapped; add it to "
                        f"ingest.sources.{name}.class_map (a thermops class or '{DROP}')"
                    )
                source_counts[src_label] = source_counts.get(src_label, 0) + 1
                if label == DROP:
                    continue
                keep.append((label, src_label, _check_box(box, w, h, params.box_tolerance_px, f"{where}, frame {f}")))
            mapped.append(keep)
        if clip.sequence:
            track_ids = link_tracks([[(lab, b) for lab, _, b in fb] for fb in mapped], params.iou_link, params.max_gap)
        else:  # a still image: every box is its own one-frame track
            track_ids = [list(range(len(fb))) for fb in mapped]
        for f, (fb, tids) in enumerate(zip(mapped, track_ids)):
            for (label, src_label, (x0, y0, x1, y1)), tid in zip(fb, tids):
                ann_rows.append({
                    "clip_id": clip.clip_id, "frame": f, "track_id": str(tid), "label": label,
                    "source_label": src_label, "x0": x0, "y0": y0, "x1": x1, "y1": y1,
                    "ground_x": None, "ground_y": None, "distance_m": None,
                })
                label_counts[label] = label_counts.get(label, 0) + 1
        clip_rows.append({
            "clip_id": clip.clip_id, "camera_id": clip.camera_id, "calibration_version": cal.version,
            "source": name, "n_frames": t, "height": h, "width": w, "dtype": str(clip.frames.dtype),
            "units": units, "fps": float(clip.fps), "time_of_day_h": None, "weather": "", "ambient_c": None,
        })
        frames[clip.clip_id] = clip.frames

    write_raw(out, clip_rows, ann_rows, frames)
    root = Path(spec.root)
    unknown_ranges = sorted(set(spec.frame_range) - set(spec.items))
    if unknown_ranges:
        raise ImportDataError(f"source {name}: frame_range names {unknown_ranges}, not items")
    for rel in spec.copy:
        src = root / rel
        if not src.is_file():
            raise ImportDataError(f"source {name}: file to copy {src} not found")
        shutil.copy2(src, out / src.name)
    inputs = sorted({p for c in clips for p in c.inputs})
    summary = {
        "source": name, "format": spec.format, "variant": spec.variant, "root": str(root),
        "palette": spec.palette or params.rgb_to_gray,
        "clips": len(clip_rows), "frames": int(sum(r["n_frames"] for r in clip_rows)),
        "boxes": len(ann_rows), "boxes_per_class": dict(sorted(label_counts.items())),
        "boxes_per_source_label": dict(sorted(source_counts.items())),
        "tracks": len({(a["clip_id"], a["track_id"]) for a in ann_rows}),
        "cameras": {c: cals[c].version for c in sorted(cals)},
        "auto_labelled": spec.autolabel != "none", "input_sha256": hash_files(inputs, root) if inputs else "",
    }
    write_json(out / "import.json", summary)
    return summary
