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

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from thermops.camera.calibration import Calibration
from thermops.model.preprocess import InputSpec, prepare_batch, to_model_units
from thermops.serve.decoders import (  # noqa: F401  (the request-level API, re-exported)
    MIN_SIDE,
    check_dtype,
    check_shape,
    parse_json_tubelet,
    parse_npy,
    parse_tiff,
    parse_upload,
)
from thermops.serve.errors import PayloadTooLarge, TubeletError, UnsupportedMedia  # noqa: F401

DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class PackageParams:
    """The `package` section of params.yaml: store names, the model call, limits, capacity, state.

    Every field becomes a bento argument (service.py derives its arguments from this class).

    Attributes:
        model_name: name of the entry in the BentoML model store.
        bento_name: name of the bento (the service name).
        max_batch_size: most tubelets one model call takes; the in-process batcher sends what
            has queued while the previous call ran (1: no batching).
        max_frames: largest T accepted.
        max_side: largest H or W accepted.
        max_elements: largest T * H * W accepted.
        max_upload_bytes: largest uploaded file (.npy / TIFF part of a multipart body).
        max_request_bytes: largest multipart body; 413 beyond.
        max_json_bytes: largest JSON body of /classify; 413 beyond (JSON numbers cost ~30 bytes
            of memory each once parsed, so this bounds the parse too).
        workers: server worker processes (registered cameras are shared through `state_dir`).
        max_concurrency: model requests in flight per worker; above it 503 with Retry-After.
        max_inflight_bytes: request body bytes in flight per worker; above it 503 with Retry-After.
        retry_after_s: the Retry-After of a 503.
        timeout_s: per-request deadline; a request still unanswered gets a 503.
        torch_threads: intra-op threads of torch per worker.
        device: `auto` (CUDA when present), `cpu` or `cuda` (refuse to start without one).
        gpus: GPUs requested per service (BentoML `resources`); 0 on CPU hosts.
        state_dir: writable folder for the service's state (registered cameras), shared by
            its workers; a relative path is under BentoML's home ($BENTOML_HOME or ~/bentoml).
        register_token_env: environment variable holding the bearer token /register_camera
            needs (a Kubernetes secret on the cluster); unset: registration is switched off.
        max_registered_cameras: most cameras registered at run time.
        access_log: BentoML's per-request access log at INFO (errors are logged once at WARNING
            either way, and /metrics counts every request).
    """

    model_name: str
    bento_name: str
    max_batch_size: int
    max_frames: int
    max_side: int
    max_elements: int
    max_upload_bytes: int
    max_request_bytes: int
    max_json_bytes: int
    workers: int
    max_concurrency: int
    max_inflight_bytes: int
    retry_after_s: int
    timeout_s: int
    torch_threads: int
    device: str
    gpus: int
    state_dir: str
    register_token_env: str
    max_registered_cameras: int
    access_log: bool

    def __post_init__(self) -> None:
        positive = (
            "max_batch_size max_frames max_elements max_upload_bytes max_request_bytes max_json_bytes "
            "workers max_concurrency max_inflight_bytes retry_after_s timeout_s torch_threads"
        ).split()
        bad = [k for k in positive if getattr(self, k) <= 0]
        if bad:
            raise ValueError(f"package params {', '.join(bad)} must be positive")
        if self.max_side < MIN_SIDE:
            raise ValueError(f"max_side must be at least {MIN_SIDE}")
        if self.max_upload_bytes > self.max_request_bytes:
            raise ValueError("max_upload_bytes must not exceed max_request_bytes (the upload is part of the body)")
        if max(self.max_request_bytes, self.max_json_bytes) > self.max_inflight_bytes:
            raise ValueError("max_inflight_bytes must hold at least one largest request")
        if self.device not in DEVICES:
            raise ValueError(f"device {self.device!r} is not one of {DEVICES}")
        if self.gpus < 0 or self.max_registered_cameras < 0:
            raise ValueError("gpus and max_registered_cameras must not be negative")
        if not self.state_dir or not self.register_token_env:
            raise ValueError("state_dir and register_token_env must be set")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- validation


def check_tubelet(arr: np.ndarray, limits: PackageParams) -> np.ndarray:
    """Check shape (T, H, W), size limits, dtype and finiteness; return `arr` itself (no copy)."""
    if not isinstance(arr, np.ndarray):
        raise TubeletError(f"tubelet must be an array, got {type(arr).__name__}")
    check_dtype(arr.dtype)
    check_shape(arr.shape, limits)
    if arr.dtype.kind == "f":  # integers are always finite
        finite = np.isfinite(arr)
        if not finite.all():
            bad = int((~finite).sum())
            raise TubeletError(f"tubelet has {bad} non-finite value(s) (NaN or inf)")
    return arr


def validate_tubelet(arr: np.ndarray, limits: PackageParams) -> np.ndarray:
    """`check_tubelet`, then the values as float64 (T, H, W)."""
    return check_tubelet(arr, limits).astype(np.float64, copy=False)


# --------------------------------------------------------------------------- model input


def check_camera_range(arr: np.ndarray, cal: Calibration) -> None:
    """Refuse values the camera cannot produce (0 .. 2^bit_depth - 1)."""
    top = 2**cal.radiometry.bit_depth - 1
    if arr.dtype.kind == "u" and np.iinfo(arr.dtype).max <= top:
        return  # an unsigned type narrower than the camera: in range by construction
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
