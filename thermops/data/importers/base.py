"""Shared types of the importers: boxes, per-image annotations, params and errors."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

# Single-channel image files the frame readers accept, by suffix (lower case).
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm")
DROP = "drop"  # class_map value that drops a source class (e.g. DontCare)


class ImportDataError(ValueError):
    """A source dataset cannot be imported: unreadable, inconsistent or unmapped."""


@dataclass(frozen=True)
class SourceBox:
    """One labelled box in one image, in absolute pixels (x1, y1 exclusive)."""

    source_label: str
    x0: float
    y0: float
    x1: float
    y1: float


@dataclass(frozen=True)
class ImageLabels:
    """The boxes of one image file; `size` = (width, height) stated by the annotation, if any."""

    path: str
    boxes: tuple[SourceBox, ...]
    size: tuple[int, int] | None = None


@dataclass(frozen=True)
class SourceParams:
    """One entry of `ingest.sources` in params.yaml (paths relative to `root`).

    Attributes:
        format: voc | yolo | coco | frames | video.
        root: folder of the source set (e.g. ../shared/data/real/hit-uav).
        camera_id: camera of every clip (needs data/calibration/<camera_id>.yaml).
        items: image folders (voc/yolo/coco), frame folders (frames, one clip each)
            or video files (video, one clip each).
        cameras: one camera id per item (frames/video); empty = `camera_id` for all.
        annotations: voc: folder of XML files; coco: the JSON file; yolo: unused
            (labels sit in the sibling `labels/` folder of each `images/` folder).
        variant: `standard`, or a known non-standard layout (`hit-uav` COCO file).
        names: YOLO class id -> source class name.
        class_map: source class name -> thermops class, or `drop`.
        sequence: the images of each item are consecutive frames of one clip
            (boxes are then linked into tracks by IoU); otherwise one clip per image.
        fps: frame rate of sequences; 0 for still images (no time axis).
        autolabel: `bgsub` makes boxes by background subtraction (fixed camera,
            frames/video only); `none` imports frames without boxes.
        autolabel_class: thermops class of auto-labelled boxes.
        absent_frames: frame indices with no object by a human check (no auto box there).
        frame_range: item -> [start, stop) frames to import (frames/video), e.g. to cut
            a sequence where the fixed camera moved and background subtraction fails.
        copy: license/README files copied into the imported folder.
        palette: how pseudo-colour RGB images become one channel: `luma` or a named
            colour ramp (`spectra`); empty = `ingest.rgb_to_gray`.
    """

    format: Literal["voc", "yolo", "coco", "frames", "video"]
    root: str
    camera_id: str = ""
    items: list[str] = field(default_factory=list)
    cameras: list[str] = field(default_factory=list)
    annotations: str = ""
    variant: Literal["standard", "hit-uav"] = "standard"
    names: list[str] = field(default_factory=list)
    class_map: dict[str, str] = field(default_factory=dict)
    sequence: bool = False
    fps: float = 0.0
    autolabel: Literal["none", "bgsub"] = "none"
    autolabel_class: str = "person"
    absent_frames: list[int] = field(default_factory=list)
    frame_range: dict[str, list[int]] = field(default_factory=dict)
    copy: list[str] = field(default_factory=list)
    palette: Literal["", "luma", "spectra"] = ""


@dataclass(frozen=True)
class IngestParams:
    """The `ingest` section of params.yaml.

    Attributes:
        iou_link: minimum IoU to continue a track into the next frame.
        max_gap: frames a track may miss and still be continued.
        box_tolerance_px: boxes may overshoot the image by this much (then clipped);
            beyond it a box is an error.
        rgb_to_gray: how a pseudo-colour RGB image becomes one channel, unless its source
            names a `palette`: `luma` (BT.601) or a colour ramp's position (`spectra`).
        bgsub_threshold: grey levels above the median background that count as foreground
            (hot objects only: at night a person is warmer than the scene).
        bgsub_min_area_px: smallest foreground blob that becomes a box.
        bgsub_max_objects: largest blobs kept per frame.
        sources: the importable sets, by name (`data.sources` selects among them).
    """

    iou_link: float
    max_gap: int
    box_tolerance_px: float
    rgb_to_gray: Literal["luma", "spectra"]
    bgsub_threshold: float
    bgsub_min_area_px: int
    bgsub_max_objects: int
    sources: dict[str, SourceParams]


def safe_id(name: str) -> str:
    """A clip id from a file name: only [A-Za-z0-9._-], other runs become '_'."""
    return re.sub(r"[^A-Za-z0-9._\-]+", "_", name).strip("_") or "clip"


def natural_key(name: str) -> list:
    """Sort key that orders 'f2' before 'f10'."""
    return [int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", name)]
