"""The thermops BentoML service: calibration-aware tubelet classification.

Endpoints (all POST, JSON answers):

    /classify          {"tubelet": [[[...]]] (T, H, W), "camera_id": "..."}   JSON array
    /classify_upload   multipart: file=<.npy or multi-page TIFF>, camera_id=...
    /register_camera   {"calibration": {...}}  a display8 camera, usable at once
    /metadata          lineage, gate summary, validated envelope, classes, cameras
    /stats             batch sizes the model has seen (adaptive batching at work)
    /parse_only        the JSON route without the model (framework cost, for benchmarks)
    /infer             the batchable model call: N packed float32 (1, T, S, S) tubelets -> (N, C) logits
    /healthz /livez /readyz /metrics   from BentoML; /readyz is 200 only once the model is loaded

Each per-request API validates its tubelet (shape, dtype, finiteness, size, camera)
and maps it to the model's input through the camera's calibration and the shared
`thermops.model.preprocess.prepare_batch`, then calls the batchable `/infer`; so a bad
request is answered 4xx on its own and never reaches, or fails, a batch.
Knobs arrive as bento arguments that the package step sets from params.yaml.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import dataclasses
import json
import os
import threading
import typing
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any

import bentoml
import numpy as np
from bentoml.exceptions import BentoMLException, InvalidArgument, NotFound, ServiceUnavailable
from pydantic import BaseModel, BeforeValidator, Field, create_model

from thermops.model.card import radiometric_units
from thermops.serve.cameras import CameraConflict, CameraRegistry, UnknownCamera
from thermops.serve.requests import (
    PackageParams,
    PayloadTooLarge,
    TubeletError,
    UnsupportedMedia,
    model_input,
    parse_json_tubelet,
    parse_upload,
    softmax_scores,
    validate_tubelet,
)

PROXY_RETRIES = 4


def _serve_args() -> type[BaseModel]:
    """Bento arguments (`bentoml build/serve --arg k=v`): the packaged model's tag and input
    size, plus every field of the `package` params section, taken from `PackageParams` itself
    so that the two cannot disagree. The package step sets them all from params.yaml."""
    hints = typing.get_type_hints(PackageParams)
    package = {f.name: (hints[f.name], ...) for f in dataclasses.fields(PackageParams)}
    return create_model("ServeArgs", model_tag=(str, ...), input_frames=(int, ...), input_size=(int, ...), **package)


ServeArgs = _serve_args()
ARGS = bentoml.use_arguments(ServeArgs)
LIMITS = PackageParams(**{f.name: getattr(ARGS, f.name) for f in dataclasses.fields(PackageParams)})

Tubelet = Annotated[list[list[list[float]]], Field(description="one tubelet (T, H, W): T >= 1, H, W >= 8")]


def _check_packed(value: Any) -> list[str]:
    """Validate /infer's input before it can join a batch: every item must decode to one
    float32 (1, T, S, S) tubelet, else a ValueError (a 400 for that request alone)."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("expected a list of base64 strings")
    for i, item in enumerate(value):
        try:
            raw = base64.b64decode(item, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"item {i} is not valid base64") from None
        if len(raw) != PACKED_BYTES:
            raise ValueError(
                f"item {i} holds {len(raw)} bytes; a float32 (1, {ARGS.input_frames}, {ARGS.input_size}, "
                f"{ARGS.input_size}) tubelet is {PACKED_BYTES} bytes"
            )
    return value


# The batched model call carries each normalized tubelet as base64 of its float32 bytes:
# BentoML's in-service proxy speaks JSON, and encoding plus parsing a (1, 1, 8, 32, 32) tubelet
# as a JSON list takes ~10 ms on the dev box vs ~0.4 ms as one base64 string (json + numpy).
PACKED_SHAPE = (1, ARGS.input_frames, ARGS.input_size, ARGS.input_size)
PACKED_BYTES = 4 * int(np.prod(PACKED_SHAPE))
PackedBatch = Annotated[
    list[str],
    BeforeValidator(_check_packed),
    Field(description=f"base64 of little-endian float32 arrays of shape {PACKED_SHAPE}, one per tubelet"),
]


def pack(x: np.ndarray) -> list[str]:
    """(N, 1, T, S, S) float32 -> N base64 strings (the /infer wire format)."""
    x = np.ascontiguousarray(x, dtype="<f4")
    return [base64.b64encode(row.tobytes()).decode("ascii") for row in x]


def unpack(items: list[str]) -> np.ndarray:
    """N base64 strings -> (N, 1, T, S, S) float32."""
    if not items:
        return np.zeros((0, *PACKED_SHAPE), dtype=np.float32)
    buf = b"".join(base64.b64decode(s) for s in items)
    return np.frombuffer(buf, dtype="<f4").reshape(len(items), *PACKED_SHAPE).astype(np.float32)


class Prediction(BaseModel):
    """One classified tubelet."""

    label: str
    scores: dict[str, float]
    camera_id: str
    calibration_version: str
    units: str
    model_version: str


class RequestGuard:
    """ASGI middleware that answers malformed or oversized bodies before BentoML parses them.

    A body larger than `max_bytes` (announced or streamed) gets a 413; a multipart
    body without a boundary, or one that does not parse, gets a 400 (BentoML's own
    form parsing would turn those into 500s). The body is buffered (it is bounded)
    and replayed to the application.
    """

    def __init__(self, app: Any, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    @staticmethod
    async def _reply(send: Any, status: int, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        limit_msg = f"request body exceeds the limit of {self.max_bytes} bytes"
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await self._reply(send, 413, limit_msg)
        chunks, total = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunk = msg.get("body", b"")
            total += len(chunk)
            if total > self.max_bytes:
                return await self._reply(send, 413, limit_msg)
            chunks.append(chunk)
            if not msg.get("more_body"):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect

        ctype = headers.get(b"content-type", b"").decode("latin-1")
        if ctype.split(";")[0].strip().lower() == "multipart/form-data":
            if "boundary=" not in ctype:
                return await self._reply(send, 400, "multipart/form-data request without a boundary")
            from starlette.requests import Request

            probe_sent = False

            async def probe() -> dict:
                nonlocal probe_sent
                if not probe_sent:
                    probe_sent = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return {"type": "http.disconnect"}

            try:
                form = await Request(scope, probe).form()
                await form.close()
            except Exception as err:  # starlette/python-multipart raise several kinds
                return await self._reply(
                    send, 400, f"malformed multipart body: {type(err).__name__}: {ascii(str(err))}"
                )
        await self.app(scope, replay, send)


def _client_error(err: Exception) -> BentoMLException:
    """Map a validation error to the 4xx it deserves, with its message."""
    # Messages may quote client input; lone surrogates would make the JSON answer unencodable (a 500).
    err = type(err)(str(err).encode("utf-8", "backslashreplace").decode("utf-8"))
    if isinstance(err, PayloadTooLarge):
        return BentoMLException(str(err), error_code=HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
    if isinstance(err, UnsupportedMedia):
        return BentoMLException(str(err), error_code=HTTPStatus.UNSUPPORTED_MEDIA_TYPE)
    if isinstance(err, CameraConflict):
        return BentoMLException(str(err), error_code=HTTPStatus.CONFLICT)
    if isinstance(err, UnknownCamera):
        return NotFound(str(err))
    return InvalidArgument(str(err))


@bentoml.service(
    name=ARGS.bento_name,
    workers=ARGS.workers,
    traffic={"timeout": ARGS.timeout_s, "max_concurrency": ARGS.max_concurrency},
)
class ThermopsClassifier:
    """Classifies thermal tubelets from registered cameras (see the module docstring)."""

    # Resolved to the stored model (its .path, .tag, .info) on instances.
    model_ref = bentoml.models.BentoModel(ARGS.model_tag)

    def __init__(self) -> None:
        import torch

        from thermops.model.card import input_spec_from_card, load_model_dir

        self._ready = False
        path = Path(self.model_ref.path)
        self.model, self.card = load_model_dir(path)  # torch.load(..., weights_only=True)
        self.spec = input_spec_from_card(self.card)
        if (self.spec.frames, self.spec.size) != (ARGS.input_frames, ARGS.input_size):
            raise RuntimeError(
                f"bento arguments say input {ARGS.input_frames}x{ARGS.input_size} "
                f"but the model card says {self.spec.frames}x{self.spec.size}"
            )
        self.classes = list(self.card["classes"])
        self.radiometric = radiometric_units(self.card)
        self.cameras = CameraRegistry.from_dir(path / "calibration")
        self.metadata_ = dict(self.model_ref.info.metadata)
        self.version = str(self.model_ref.tag)
        self.batch_sizes: collections.Counter[int] = collections.Counter()
        self.proxy_retries = 0
        self._stats_lock = threading.Lock()
        self._torch = torch
        self._ready = True

    def __is_ready__(self) -> bool:
        return self._ready

    # ------------------------------------------------------------------ model call

    def _forward(self, x: np.ndarray) -> np.ndarray:
        with self._stats_lock:
            self.batch_sizes[int(x.shape[0])] += 1
        if x.shape[0] == 0:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        # Callers of /infer are not validated like /classify's; keep garbage from becoming NaN JSON.
        x = np.nan_to_num(np.asarray(x, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        with self._torch.inference_mode():
            return self.model(self._torch.from_numpy(x)).numpy().astype(np.float32)

    @bentoml.api(batchable=True, max_batch_size=ARGS.max_batch_size, max_latency_ms=ARGS.max_latency_ms)
    def infer(self, x: PackedBatch) -> list[list[float]]:
        """N packed normalized tubelets (see `pack`) -> (N, C) logits, batched across requests."""
        return self._forward(unpack(x)).tolist()

    # ------------------------------------------------------------------ per-request APIs

    def _prepare(self, arr: np.ndarray, camera_id: str) -> tuple[np.ndarray, Any, str]:
        try:
            cal = self.cameras.get(camera_id)
            tubelet = validate_tubelet(arr, LIMITS)
            x, units = model_input(tubelet, cal, self.radiometric, self.spec)
        except (TubeletError, UnknownCamera) as err:
            raise _client_error(err) from None
        return x, cal, units

    async def _infer_batched(self, packed: list[str]) -> list[list[float]]:
        """Call /infer through BentoML's in-process proxy, so that the request joins a batch.

        Under concurrency the proxy's in-process connection is sometimes dropped
        (aiohttp ServerDisconnectedError / ClientOSError, seen with 16 clients on 2 cores);
        /infer is idempotent, so retry, and answer 503 (retry later), never 500.
        """
        import aiohttp

        for attempt in range(PROXY_RETRIES):
            try:
                return await self.to_async.infer(packed)
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as err:
                with self._stats_lock:
                    self.proxy_retries += 1
                if attempt == PROXY_RETRIES - 1:
                    raise ServiceUnavailable(f"model call failed after {PROXY_RETRIES} tries: {err}") from None
                await asyncio.sleep(0.01 * (attempt + 1))
        raise AssertionError("unreachable")

    async def _classify(self, arr_fn: Any, camera_id: str) -> Prediction:
        def prepare() -> tuple[np.ndarray, Any, str]:
            try:
                arr = arr_fn()
            except TubeletError as err:
                raise _client_error(err) from None
            return self._prepare(arr, camera_id)

        # Parsing and preprocessing are CPU work: keep them off the event loop.
        x, cal, units = await asyncio.to_thread(prepare)
        if ARGS.batching:
            logits = np.asarray(await self._infer_batched(pack(x)), dtype=np.float32)
        else:
            logits = await asyncio.to_thread(self._forward, x)
        scores = softmax_scores(logits, self.classes)[0]
        return Prediction(
            label=max(scores, key=scores.get),
            scores=scores,
            camera_id=camera_id,
            calibration_version=cal.version,
            units=units,
            model_version=self.version,
        )

    @bentoml.api
    async def classify(self, tubelet: Tubelet, camera_id: str) -> Prediction:
        """Classify one tubelet sent as a JSON array (T, H, W) in the camera's raw values."""
        return await self._classify(lambda: parse_json_tubelet(tubelet), camera_id)

    @bentoml.api
    async def classify_upload(self, file: Path, camera_id: str) -> Prediction:
        """Classify one tubelet uploaded as an .npy array or a multi-page TIFF (T, H, W)."""

        def read() -> np.ndarray:
            size = os.path.getsize(file)
            if size > LIMITS.max_upload_bytes:
                raise PayloadTooLarge(f"upload of {size} bytes exceeds the limit of {LIMITS.max_upload_bytes} bytes")
            return parse_upload(Path(file).read_bytes(), Path(file).name)

        return await self._classify(read, camera_id)

    @bentoml.api
    def parse_only(self, tubelet: Tubelet, camera_id: str) -> dict[str, Any]:
        """The /classify path without the model: parse, validate, calibrate, preprocess."""
        try:
            arr = parse_json_tubelet(tubelet)
        except TubeletError as err:
            raise _client_error(err) from None
        x, cal, units = self._prepare(arr, camera_id)
        return {"shape": list(x.shape), "calibration_version": cal.version, "units": units}

    @bentoml.api
    def register_camera(self, calibration: dict[str, Any]) -> dict[str, Any]:
        """Register a display8 camera (unknown geometry allowed) for immediate use."""
        try:
            cal, replaced = self.cameras.register(calibration)
        except TubeletError as err:
            raise _client_error(err) from None
        return {
            "camera_id": cal.camera_id,
            "calibration_version": cal.version,
            "units": cal.units,
            "replaced": replaced,
        }

    @bentoml.api
    def metadata(self) -> dict[str, Any]:
        """Lineage, gate summary, validated envelope, classes, input contract and cameras."""
        m = self.metadata_
        return {
            "model_version": self.version,
            "classes": self.classes,
            "input": self.spec.to_dict(),
            "radiometric_units": self.radiometric,
            "lineage": {k: m.get(k) for k in ("git_revision", "package_git_revision", "data_version", "calibrations")},
            "gate": m.get("gate", {}),
            "envelope": m.get("envelope", {}),
            "cameras": self.cameras.describe(),
            "limits": LIMITS.to_dict(),
            "batching": ARGS.batching,
        }

    @bentoml.api
    def stats(self) -> dict[str, Any]:
        """Model calls by batch size since start: {batch_size: count}."""
        with self._stats_lock:
            return {
                "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
                "proxy_retries": self.proxy_retries,
            }


ThermopsClassifier.add_asgi_middleware(RequestGuard, max_bytes=LIMITS.max_request_bytes)
