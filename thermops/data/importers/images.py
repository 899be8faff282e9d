"""Reading thermal frames from image files (PNG, TIFF incl. 16-bit and multi-page, BMP, JPEG).

Every reader returns single-channel integer frames: uint8 for 8-bit display
images, uint16 for 16-bit radiometric counts. Pseudo-colour RGB (e.g. the Seek
"Spectra" palette of thermal-dogs-people) becomes one channel by BT.601 luma,
Y = 0.299 R + 0.587 G + 0.114 B, rounded to uint8. That is a display grey level,
not a temperature: a palette's luma is not even monotonic in scene radiance, so
nothing downstream may read it as one (the camera is calibrated `display8`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from thermops.data.importers.base import IMAGE_SUFFIXES, ImportDataError, natural_key

_LUMA = np.array([0.299, 0.587, 0.114])


def to_single_channel(arr: np.ndarray, where: str) -> np.ndarray:
    """(H, W) or (H, W, C) -> (H, W); equal channels are taken as they are, RGB by luma."""
    if arr.ndim == 2:
        return arr
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        rgb = arr[..., :3]
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
            return np.ascontiguousarray(rgb[..., 0])
        if rgb.dtype != np.uint8:
            raise ImportDataError(f"{where}: pseudo-colour image of dtype {rgb.dtype}; only 8-bit RGB is converted")
        return np.clip(np.rint(rgb.astype(np.float64) @ _LUMA), 0, 255).astype(np.uint8)
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


def read_image(path: str | Path) -> np.ndarray:
    """Frames of one image file as (P, H, W) uint8/uint16 (P > 1 only for multi-page TIFF)."""
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        try:
            arr = tifffile.imread(path)
        except Exception as err:  # tifffile raises many types for broken files
            raise ImportDataError(f"{path}: unreadable TIFF: {err}") from None
        arr = _check_values(np.asarray(arr), str(path))
        if arr.ndim == 3 and arr.shape[2] in (3, 4) and arr.shape[0] > 4:
            arr = to_single_channel(arr, str(path))
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
    arr = to_single_channel(_check_values(arr, str(path)), str(path))
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


def read_sequence(files: list[Path]) -> np.ndarray:
    """Consecutive frames from image files (multi-page TIFF pages in order) as (T, H, W)."""
    stacks = [read_image(f) for f in files]
    shapes = {s.shape[1:] for s in stacks}
    dtypes = {s.dtype for s in stacks}
    if len(shapes) > 1:
        raise ImportDataError(f"{files[0].parent}: frames of one sequence differ in size: {sorted(shapes)}")
    if len(dtypes) > 1:
        raise ImportDataError(f"{files[0].parent}: frames of one sequence mix pixel types {sorted(map(str, dtypes))}")
    return np.concatenate(stacks, axis=0)
