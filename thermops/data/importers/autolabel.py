"""Auto-labelling a fixed camera by background subtraction (for sequences without annotations).

The camera does not move, so the per-pixel median over the sequence is the empty
scene wherever an object keeps moving. Foreground = (frame - median) above a
threshold (grey levels), cleaned by a 3x3 opening; the largest connected blobs
become boxes. It is a weak labeller: the boxes are marked `auto:bgsub` in
`source_label`, and an object that stands still for half the sequence vanishes
into the background.
"""

from __future__ import annotations

import numpy as np


def bgsub_boxes(frames: np.ndarray, threshold: float, min_area_px: int, max_objects: int,
                absent: set[int] = frozenset()) -> list[list[list[float]]]:
    """Per frame of (T, H, W) frames, up to `max_objects` boxes [x0, y0, x1, y1] (largest first)."""
    from scipy import ndimage

    x = frames.astype(np.float32)
    background = np.median(x, axis=0)
    out: list[list[list[float]]] = []
    for t in range(x.shape[0]):
        if t in absent:
            out.append([])
            continue
        mask = (x[t] - background) > threshold  # hot objects: warmer than the scene
        mask = ndimage.binary_opening(mask, structure=np.ones((3, 3), bool))
        lab, n = ndimage.label(mask)
        boxes = []
        if n:
            areas = ndimage.sum(mask, lab, index=np.arange(1, n + 1))
            slices = ndimage.find_objects(lab)
            for k in np.argsort(-areas, kind="stable")[:max_objects]:
                if areas[k] < min_area_px:
                    break
                sy, sx = slices[k]
                boxes.append([float(sx.start), float(sy.start), float(sx.stop), float(sy.stop)])
        out.append(boxes)
    return out
