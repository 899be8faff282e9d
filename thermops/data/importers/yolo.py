"""YOLO txt: `labels/<stem>.txt` beside `images/`, lines `class cx cy w h` normalised to [0, 1]."""

from __future__ import annotations

from pathlib import Path

from thermops.data.importers.base import ImageLabels, ImportDataError, SourceBox


def labels_path(image: Path) -> Path:
    """The YOLO label file of an image: the `images` folder swapped for `labels`."""
    return image.parent.parent / "labels" / f"{image.stem}.txt"


def read_yolo(images: list[Path], names: list[str], sizes: dict[Path, tuple[int, int]]) -> list[ImageLabels]:
    """One ImageLabels per image; `sizes` (width, height) turns normalised boxes into pixels.

    A missing label file is an error; an empty one means the image has no object.
    """
    if not names:
        raise ImportDataError("YOLO source needs `names` (class id -> name) in its params")
    out = []
    for img in images:
        lp = labels_path(img)
        if not lp.is_file():
            raise ImportDataError(f"{img}: no YOLO label file {lp}")
        w, h = sizes[img]
        boxes = []
        for n, line in enumerate(lp.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.split()
            try:
                cls, cx, cy, bw, bh = int(parts[0]), *map(float, parts[1:5])
                if len(parts) != 5:
                    raise ValueError
            except (ValueError, IndexError):
                raise ImportDataError(f"{lp}:{n}: expected 'class cx cy w h', got {line!r}") from None
            if not 0 <= cls < len(names):
                raise ImportDataError(f"{lp}:{n}: class id {cls} outside names {names}")
            x0, y0, x1, y1 = (cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h
            boxes.append(SourceBox(names[cls], x0, y0, x1, y1))
        out.append(ImageLabels(path=str(img), boxes=tuple(boxes), size=None))
    return out
