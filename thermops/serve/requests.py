"""Request parsing, validation and calibration for the BentoML service.

The service (`service.py`) stays a thin shell over these functions, so that
every check on a request can be tested in-process and the same checks answer
in the served process. The model-input preprocessing itself is
`thermops.model.preprocess.prepare_batch` (shared with training and the gate);
this module only turns what a client sends into tubelets in the units the
model was trained on.

Shapes: a request carries one tubelet (T, H, W); the batchable model call takes
(N, 1, T, S, S) with T, S from the model's `InputSpec`.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from thermops.camera.calibration import Calibration
from thermops.model.preprocess import InputSpec, prepare_batch, to_model_units

MIN_SIDE = 8  # smallest H, W the service accepts (the prepare step's min_window_px)
# Numeric dtypes a tubelet may come in; bool, complex, object and strings are refused.
ACCEPTED_KINDS = ("u", "i", "f")


class TubeletError(ValueError):
    """A request's tubelet is malformed (shape, dtype, values, file format)."""


class PayloadTooLarge(TubeletError):
    """A request's tubelet exceeds the service's size limits."""


class UnsupportedMedia(TubeletError):
    """An upload is neither an .npy array nor a TIFF."""


@dataclass(frozen=True)
class PackageParams:
    """The `package` section of params.yaml: store names, batching and request limits.

    Attributes:
        model_name: name of the entry in the BentoML model store.
        bento_name: name of the bento (the service name).
        batching: route /classify through the adaptively batched model call (false: call
            the model per request; cheaper on a small CPU host, see docs/serving.md).
        max_batch_size: largest adaptive batch of tubelets for one model call.
        max_latency_ms: the batcher's latency budget; a request that cannot meet it gets a 503.
        max_frames: largest T accepted.
        max_side: largest H or W accepted.
        max_elements: largest T * H * W accepted.
        max_upload_bytes: largest uploaded file (.npy / .tiff).
        max_request_bytes: largest HTTP request body (JSON or multipart); 413 beyond.
        workers: server worker processes (1: registered cameras live in the worker).
        max_concurrency: requests in flight before the server answers 503.
        timeout_s: per-request timeout.
    """

    model_name: str
    bento_name: str
    batching: bool
    max_batch_size: int
    max_latency_ms: int
    max_frames: int
    max_side: int
    max_elements: int
    max_upload_bytes: int
    max_request_bytes: int
    workers: int
    max_concurrency: int
    timeout_s: int

    def __post_init__(self) -> None:
        if self.max_batch_size < 2:
            raise ValueError("max_batch_size must be at least 2 (BentoML rejects 1)")
        if min(self.max_latency_ms, self.max_frames, self.max_elements, self.max_upload_bytes) <= 0:
            raise ValueError("limits must be positive")
        if self.max_side < MIN_SIDE:
            raise ValueError(f"max_side must be at least {MIN_SIDE}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- parsing


def parse_npy(data: bytes) -> np.ndarray:
    """Decode an .npy file (no pickles: object arrays are refused)."""
    if not data.startswith(b"\x93NUMPY"):
        raise TubeletError("upload is not an .npy file (missing the \\x93NUMPY magic)")
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as err:
        # object arrays need pickles; numpy says so in a ValueError
        raise TubeletError(f"unreadable .npy file: {err}") from None
    except (EOFError, OSError) as err:
        raise TubeletError(f"truncated or corrupt .npy file: {err}") from None
    if not isinstance(arr, np.ndarray):
        raise TubeletError(".npy upload must hold one array")
    return arr


def parse_tiff(data: bytes) -> np.ndarray:
    """Decode a (multi-page) TIFF: one page per frame -> (T, H, W)."""
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            arr = tif.asarray()
    except Exception as err:  # tifffile raises many kinds on a broken file
        raise TubeletError(f"truncated or corrupt TIFF file: {type(err).__name__}: {err}") from None
    arr = np.asarray(arr)
    if arr.ndim == 2:  # a single page is one frame
        arr = arr[None]
    return arr


def parse_upload(data: bytes, filename: str | None = None, content_type: str | None = None) -> np.ndarray:
    """Decode an uploaded tubelet: `.npy` or multi-page 16-bit (or 8-bit) TIFF, by content."""
    if not data:
        raise TubeletError("upload is empty")
    if data.startswith(b"\x93NUMPY"):
        return parse_npy(data)
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return parse_tiff(data)
    name = filename or "upload"
    raise UnsupportedMedia(
        f"{name}: unsupported file type (content type {content_type or 'unknown'}); "
        "send an .npy array or a multi-page TIFF"
    )


def parse_json_tubelet(data: Any) -> np.ndarray:
    """Turn a JSON nested list into an array, refusing ragged or non-numeric lists."""
    try:
        arr = np.asarray(data, dtype=np.float64)
    except (ValueError, TypeError) as err:
        raise TubeletError(f"tubelet is not a regular (T, H, W) array of numbers: {err}") from None
    return arr


# --------------------------------------------------------------------------- validation


def validate_tubelet(arr: np.ndarray, limits: PackageParams) -> np.ndarray:
    """Check shape (T, H, W), size limits, dtype and finiteness; return float64 (T, H, W)."""
    if not isinstance(arr, np.ndarray):
        raise TubeletError(f"tubelet must be an array, got {type(arr).__name__}")
    if arr.dtype.kind not in ACCEPTED_KINDS:
        raise TubeletError(f"tubelet dtype {arr.dtype} is not numeric; send integer or float values")
    if arr.ndim != 3:
        raise TubeletError(f"tubelet must have shape (T, H, W), got {arr.ndim} dimension(s) {tuple(arr.shape)}")
    t, h, w = arr.shape
    if t < 1:
        raise TubeletError("tubelet has no frames (T = 0)")
    if h < MIN_SIDE or w < MIN_SIDE:
        raise TubeletError(f"tubelet frames are {h} x {w} pixels; at least {MIN_SIDE} x {MIN_SIDE} needed")
    if t > limits.max_frames:
        raise PayloadTooLarge(f"tubelet has {t} frames; at most {limits.max_frames} accepted")
    if max(h, w) > limits.max_side:
        raise PayloadTooLarge(f"tubelet frames are {h} x {w} pixels; at most {limits.max_side} per side accepted")
    if arr.size > limits.max_elements:
        raise PayloadTooLarge(f"tubelet has {arr.size} values; at most {limits.max_elements} accepted")
    out = arr.astype(np.float64, copy=False)
    finite = np.isfinite(out)
    if not finite.all():
        bad = int((~finite).sum())
        raise TubeletError(f"tubelet has {bad} non-finite value(s) (NaN or inf)")
    return out


# --------------------------------------------------------------------------- model input


def check_camera_range(arr: np.ndarray, cal: Calibration) -> None:
    """Refuse values the camera cannot produce (0 .. 2^bit_depth - 1)."""
    top = 2**cal.radiometry.bit_depth - 1
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0 or hi > top:
        raise TubeletError(
            f"values span [{lo:g}, {hi:g}] but camera {cal.camera_id!r} "
            f"({cal.radiometry.mode}, {cal.radiometry.bit_depth}-bit) gives 0..{top}"
        )


def model_input(arr: np.ndarray, cal: Calibration, radiometric: str, spec: InputSpec) -> tuple[np.ndarray, str]:
    """One validated (T, H, W) tubelet -> float32 (1, 1, T', S, S) network input and its units.

    `radiometric` is the card's radiometric units (`celsius` or `counts`); the
    conversion is `thermops.model.preprocess.to_model_units`, the one prepare uses.
    """
    check_camera_range(arr, cal)
    values, units = to_model_units(arr, cal, radiometric)
    if not np.isfinite(values).all():
        raise TubeletError(f"values give no finite temperature through camera {cal.camera_id!r}'s calibration")
    x = prepare_batch(torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))[None], units, spec)
    return x.numpy().astype(np.float32, copy=False), units


def softmax_scores(logits: np.ndarray, classes: list[str]) -> list[dict[str, float]]:
    """(N, C) logits -> one {class: probability} per row."""
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    return [{c: float(row[i]) for i, c in enumerate(classes)} for row in p]
