"""COCO JSON, plus explicitly selected non-standard variants.

Standard COCO: top-level `images` (`id`, `file_name`, `width`, `height`),
`annotations` (`image_id`, `category_id`, `bbox` = [x, y, w, h]) and
`categories` (`id`, `name`). The HIT-UAV file (variant `hit-uav`) differs: the
key is `annotation`, images use `filename`, and category ids are 0-based. A
variant is never guessed: reading the HIT-UAV file as standard COCO fails with
a message naming the option.
"""

from __future__ import annotations

import json
from pathlib import Path

from thermops.data.importers.base import ImageLabels, ImportDataError, SourceBox

VARIANTS = {
    "standard": {"annotations": "annotations", "file_name": "file_name"},
    "hit-uav": {"annotations": "annotation", "file_name": "filename"},
}
# HIT-UAV's 0-based category ids (its MANIFEST), used if the file lacks `categories`.
HIT_UAV_CATEGORIES = {0: "Person", 1: "Car", 2: "Bicycle", 3: "OtherVehicle", 4: "DontCare"}


def read_coco(json_path: Path, image_dir: Path, variant: str = "standard") -> list[ImageLabels]:
    """One ImageLabels per image listed in the JSON (images on disk not listed are ignored)."""
    if not json_path.is_file():
        raise ImportDataError(f"{json_path}: COCO file not found")
    try:
        data = json.loads(json_path.read_text())
    except json.JSONDecodeError as err:
        raise ImportDataError(f"{json_path}: not valid JSON: {err}") from None
    keys = VARIANTS[variant]
    if not isinstance(data, dict) or "images" not in data:
        raise ImportDataError(f"{json_path}: no top-level 'images' list")
    if keys["annotations"] not in data:
        hint = ""
        if variant == "standard" and "annotation" in data:
            hint = (" (it has 'annotation' instead: this is the non-standard HIT-UAV layout;"
                    " set `variant: hit-uav` for this source in params.yaml ingest.sources)")
        raise ImportDataError(f"{json_path}: no top-level '{keys['annotations']}' key{hint}")
    cats = {int(c["id"]): str(c["name"]) for c in data.get("categories", [])}
    if not cats and variant == "hit-uav":
        cats = dict(HIT_UAV_CATEGORIES)
    by_image: dict[int, list[SourceBox]] = {}
    images: dict[int, tuple[Path, tuple[int, int]]] = {}
    for im in data["images"]:
        if keys["file_name"] not in im:
            raise ImportDataError(f"{json_path}: image {im.get('id')} has no '{keys['file_name']}' (variant {variant})")
        images[int(im["id"])] = (image_dir / im[keys["file_name"]], (int(im["width"]), int(im["height"])))
    for i, a in enumerate(data[keys["annotations"]]):
        where = f"{json_path}: annotation {a.get('id', i)}"
        img_id, cat = int(a["image_id"]), int(a["category_id"])
        if img_id not in images:
            raise ImportDataError(f"{where}: image_id {img_id} not in images")
        if cat not in cats:
            raise ImportDataError(f"{where}: category_id {cat} not in categories {sorted(cats)}")
        x, y, w, h = (float(v) for v in a["bbox"])
        by_image.setdefault(img_id, []).append(SourceBox(cats[cat], x, y, x + w, y + h))
    out = []
    for img_id, (path, size) in sorted(images.items(), key=lambda kv: kv[1][0].name):
        if not path.is_file():
            raise ImportDataError(f"{json_path}: image file {path} listed but missing")
        out.append(ImageLabels(path=str(path), boxes=tuple(by_image.get(img_id, [])), size=size))
    return out
