"""Reading thermal frames from image files (PNG, TIFF incl. 16-bit and multi-page, BMP, JPEG).

Every reader returns single-channel integer frames: uint8 for 8-bit display
images, uint16 for 16-bit radiometric counts. Pseudo-colour RGB becomes one
channel in one of two ways (`palette` of the source):

- `luma`: BT.601 luma, Y = 0.299 R + 0.587 G + 0.114 B, rounded to uint8. A
  rainbow palette's luma is not monotonic in scene radiance (Spectra's red is
  darker than its yellow and green), so a warm person can come out darker than
  the grass around them.
- a named palette (`spectra`): each pixel becomes its position along the
  palette's colour ramp (nearest point of the ramp in RGB), 0 = the coldest
  colour, 255 = the hottest: the white-hot grey level the camera's AGC produced
  before colouring. Still a display level, not a temperature (the camera is
  calibrated `display8`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from thermops.data.importers.base import IMAGE_SUFFIXES, ImportDataError, natural_key

_LUMA = np.array([0.299, 0.587, 0.114])

# Colour ramps of pseudo-colour palettes, coldest first (RGB, uint8).
# `spectra`: the Seek "Spectra" palette, read off the on-image colour bar of
# thermal-dogs-people test/images/IMG_0002 4_jpg.rf.6d1c60bf... (columns 0-2,
# median per row, every 8th row from the bottom (cold) to the top (hot)):
# black, navy, blue, teal, green, yellow, orange, red, pink, white.
PALETTES: dict[str, np.ndarray] = {
    "spectra": np.array(
        [
            [5, 0, 6], [6, 0, 31], [0, 0, 48], [3, 5, 59], [1, 6, 72], [11, 7, 84], [5, 8, 103], [4, 15, 104],
            [0, 30, 131], [0, 45, 156], [3, 59, 178], [1, 72, 200], [0, 83, 213], [0, 97, 238], [1, 113, 249],
            [2, 116, 231], [0, 122, 212], [0, 128, 183], [0, 136, 150], [1, 141, 115], [1, 145, 92], [0, 154, 49],
            [0, 158, 11], [0, 168, 3], [41, 174, 1], [78, 185, 9], [116, 193, 0], [143, 202, 0], [164, 215, 0],
            [191, 223, 1], [211, 231, 8], [243, 241, 1], [252, 247, 5], [253, 227, 0], [251, 203, 0],
            [249, 183, 1], [251, 158, 1], [249, 135, 0], [250, 116, 3], [250, 88, 0], [249, 58, 3], [247, 43, 8],
            [255, 41, 20], [244, 79, 49], [252, 97, 97], [244, 129, 110], [253, 153, 143], [255, 173, 177],
            [255, 196, 198], [252, 220, 223], [252, 243, 242], [250, 255, 251],
        ],
        dtype=np.float64,
    ),
}
_LUT_BITS = 5  # the inverse palette is tabulated on a 32 x 32 x 32 RGB grid
_LUTS: dict[str, np.ndarray] = {}


def _palette_lut(name: str) -> np.ndarray:
    """(32, 32, 32) uint8: grey level (position along the ramp) of the nearest ramp colour to each RGB cell."""
    if name not in _LUTS:
        anchors = PALETTES[name]
        # The ramp, densely resampled by arc length so equal grey steps are equal colour steps.
        seg = np.linalg.norm(np.diff(anchors, axis=0), axis=1)
        s = np.concatenate([[0.0], np.cumsum(seg)])
        t = np.linspace(0.0, s[-1], 256)
        ramp = np.stack([np.interp(t, s, anchors[:, c]) for c in range(3)], axis=1)
        step = 2 ** (8 - _LUT_BITS)
        centres = np.arange(2**_LUT_BITS) * step + (step - 1) / 2
        cells = np.stack(np.meshgrid(centres, centres, centres, indexing="ij"), axis=-1).reshape(-1, 3)
        nearest = np.empty(len(cells), dtype=np.int64)
        for i in range(0, len(cells), 4096):
            d = ((cells[i : i + 4096, None, :] - ramp[None]) ** 2).sum(-1)
            nearest[i : i + 4096] = d.argmin(1)
        grey = np.rint(255.0 * nearest / (len(ramp) - 1)).astype(np.uint8)
        _LUTS[name] = grey.reshape((2**_LUT_BITS,) * 3)
    return _LUTS[name]


def to_single_channel(arr: np.ndarray, where: str, palette: str = "luma") -> np.ndarray:
    """(H, W) or (H, W, C) -> (H, W); equal channels are taken as they are, RGB by `palette`.

    `palette`: `luma` (BT.601) or a name in PALETTES (the position along that colour ramp).
    """
    if arr.ndim == 2:
        return arr
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        rgb = arr[..., :3]
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
            return np.ascontiguousarray(rgb[..., 0])
        if rgb.dtype != np.uint8:
            raise ImportDataError(f"{where}: pseudo-colour image of dtype {rgb.dtype}; only 8-bit RGB is converted")
        if palette == "luma":
            return np.clip(np.rint(rgb.astype(np.float64) @ _LUMA), 0, 255).astype(np.uint8)
        if palette not in PALETTES:
            raise ImportDataError(f"{where}: unknown palette {palette!r} (known: luma, {', '.join(PALETTES)})")
        q = rgb >> (8 - _LUT_BITS)
        return _palette_lut(palette)[q[..., 0], q[..., 1], q[..., 2]]
    raise ImportDataError(f"{where}: unsupported image shape {arr.shape}")


def _check_values(arr: np.ndarray, where: str) -> np.ndarray:
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            bad = int((~np.isfinite(arr)).sum())
            raise ImportDataError(f"{where}: {bad} NaN/inf pixel values (float image)")
        raise ImportDataError(f"{where}: float image; only 8-bit display or 16-bit count images are imported")
    if arr.dtype == np.bool_:
        raise ImportDataError(f"{where}: 1-bit image is not a thermal frame")
    if arr.dtype.itemsize > 2 or arr.dtype.kind not in "ui":
        raise ImportDataError(f"{where}: unsupported pixel type {arr.dtype}")
    if arr.dtype.kind == "i":
        if arr.min() < 0:
            raise ImportDataError(f"{where}: negative pixel values")
        arr = arr.astype(np.uint16 if arr.dtype.itemsize == 2 else np.uint8)
    return arr


def read_image(path: str | Path, palette: str = "luma") -> np.ndarray:
    """Frames of one image file as (P, H, W) uint8/uint16 (P > 1 only for multi-page TIFF).

    `palette`: how pseudo-colour RGB becomes one channel (`to_single_channel`).
    """
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        try:
            arr = tifffile.imread(path)
        except Exception as err:  # tifffile raises many types for broken files
            raise ImportDataError(f"{path}: unreadable TIFF: {err}") from None
        arr = _check_values(np.asarray(arr), str(path))
        if arr.ndim == 3 and arr.shape[2] in (3, 4) and arr.shape[0] > 4:
            arr = to_single_channel(arr, str(path), palette)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3:
            raise ImportDataError(f"{path}: unsupported TIFF shape {arr.shape}")
        return arr
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode == "P":
                im = im.convert("RGB")
            arr = np.asarray(im)
    except (OSError, UnidentifiedImageError, SyntaxError) as err:
        raise ImportDataError(f"{path}: unreadable image ({err})") from None
    arr = to_single_channel(_check_values(arr, str(path)), str(path), palette)
    return arr[None]


def list_images(folder: str | Path) -> list[Path]:
    """Image files of a folder in natural order; an empty folder is an error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImportDataError(f"{folder}: folder not found")
    files = sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                   key=lambda p: natural_key(p.name))
    if not files:
        raise ImportDataError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    return files


def read_sequence(files: list[Path], palette: str = "luma") -> np.ndarray:
    """Consecutive frames from image files (multi-page TIFF pages in order) as (T, H, W)."""
    stacks = [read_image(f, palette) for f in files]
    shapes = {s.shape[1:] for s in stacks}
    dtypes = {s.dtype for s in stacks}
    if len(shapes) > 1:
        raise ImportDataError(f"{files[0].parent}: frames of one sequence differ in size: {sorted(shapes)}")
    if len(dtypes) > 1:
        raise ImportDataError(f"{files[0].parent}: frames of one sequence mix pixel types {sorted(map(str, dtypes))}")
    return np.concatenate(stacks, axis=0)
