"""Pascal VOC XML: one file per image, `<object><name>` and absolute `<bndbox>` pixels."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from thermops.data.importers.base import ImageLabels, ImportDataError, SourceBox


def _num(node: ET.Element, tag: str, where: str) -> float:
    el = node.find(tag)
    if el is None or el.text is None:
        raise ImportDataError(f"{where}: <{tag}> missing")
    try:
        return float(el.text)
    except ValueError:
        raise ImportDataError(f"{where}: <{tag}> is not a number: {el.text!r}") from None


def read_voc_file(xml_path: Path, image_path: Path) -> ImageLabels:
    """Boxes of one VOC annotation file (coordinates taken as given, x1/y1 exclusive)."""
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as err:
        raise ImportDataError(f"{xml_path}: not valid XML: {err}") from None
    size = None
    s = root.find("size")
    if s is not None:
        size = (int(_num(s, "width", str(xml_path))), int(_num(s, "height", str(xml_path))))
    boxes = []
    for i, obj in enumerate(root.findall("object")):
        where = f"{xml_path}: object {i}"
        name = obj.findtext("name")
        bb = obj.find("bndbox")
        if not name or bb is None:
            raise ImportDataError(f"{where}: <name> or <bndbox> missing")
        boxes.append(SourceBox(name.strip(), *(_num(bb, t, where) for t in ("xmin", "ymin", "xmax", "ymax"))))
    return ImageLabels(path=str(image_path), boxes=tuple(boxes), size=size)


def read_voc(images: list[Path], annotations: Path) -> list[ImageLabels]:
    """One ImageLabels per image; every image needs `<annotations>/<stem>.xml`."""
    if not annotations.is_dir():
        raise ImportDataError(f"{annotations}: VOC annotation folder not found")
    out = []
    for img in images:
        xml_path = annotations / f"{img.stem}.xml"
        if not xml_path.is_file():
            raise ImportDataError(f"{img}: no VOC annotation {xml_path}")
        out.append(read_voc_file(xml_path, img))
    return out
