"""Linking per-frame boxes into tracks by IoU (greedy-optimal assignment per frame)."""

from __future__ import annotations

import numpy as np


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes a (N, 4) and b (M, 4) as `x0 y0 x1 y1` -> (N, M)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def link_tracks(frames: list[list[tuple[str, list[float]]]], min_iou: float, max_gap: int) -> list[list[int]]:
    """Track ids for the boxes of consecutive frames.

    Args:
        frames: per frame, its boxes as (label, [x0, y0, x1, y1]).
        min_iou: a box continues a track only at IoU >= min_iou with the track's last box.
        max_gap: frames a track may be unseen and still continue.

    Returns:
        per frame, one track id per box (ids 0, 1, ... in order of first appearance).
        A track never changes label; each box joins at most one track and vice versa
        (Hungarian assignment on IoU, so the result does not depend on box order).
    """
    from scipy.optimize import linear_sum_assignment

    active: list[dict] = []  # {"id", "label", "box", "last"}
    next_id = 0
    out: list[list[int]] = []
    for t, boxes in enumerate(frames):
        active = [tr for tr in active if t - tr["last"] <= max_gap + 1]
        ids = [-1] * len(boxes)
        if boxes and active:
            score = iou(np.array([b for _, b in boxes]), np.array([tr["box"] for tr in active]))
            same = np.array([[lab == tr["label"] for tr in active] for lab, _ in boxes])
            score = np.where(same, score, 0.0)
            rows, cols = linear_sum_assignment(-score)
            for r, c in zip(rows, cols):
                if score[r, c] >= min_iou:
                    ids[r] = active[c]["id"]
                    active[c].update(box=boxes[r][1], last=t)
        for i, (lab, box) in enumerate(boxes):
            if ids[i] < 0:
                ids[i] = next_id
                active.append({"id": next_id, "label": lab, "box": box, "last": t})
                next_id += 1
        out.append(ids)
    return out
