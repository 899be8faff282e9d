"""The thermops BentoML service: calibration-aware tubelet classification.

Endpoints (all POST, JSON answers):

    /classify          {"tubelet": [[[...]]] (T, H, W), "camera_id": "...",
                        "window_px": 48, "ground_px": [u, v]}   JSON array; geometry optional
    /classify_upload   multipart: file=<.npy or multi-page TIFF>, camera_id=..., window_px=48, ground_px=[u, v]
    /register_camera   {"calibration": {...}}  a display8 camera; needs `Authorization: Bearer <token>`
    /metadata          lineage, gate summary, validated envelope, classes, cameras, limits
    /stats             model calls by batch size, requests in flight, refusals, worker memory
    /healthz /livez /readyz /metrics   from BentoML; /readyz is 200 only once the model is loaded

A request passes the front door first (`thermops.serve.gateway.Gateway`: content type,
size limits, the registration token, capacity, a deadline, the one error shape), then
its API decodes it under the limits (`thermops.serve.decoders`), validates it, maps it
to the model's input through the camera's calibration and the shared
`thermops.model.preprocess.prepare_batch`, and hands it to the in-process batcher
(`thermops.serve.batcher`), which joins concurrent requests into one model call
without delaying a lone one. A model trained with window geometry (`input.geometry`)
needs `window_px` and takes `ground_px` (`thermops.serve.windows`, checked before the
tubelet is decoded); its features travel with the job, row-aligned in every batch.
A bad request is answered 4xx on its own and never reaches, or fails, a batch. Knobs arrive as bento arguments that the package step
sets from params.yaml.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import os
import sys
import threading
import time
import typing
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
from pydantic import BaseModel, create_model
from starlette.responses import JSONResponse

from thermops.model.card import radiometric_units
from thermops.serve.batcher import Batcher, Job, ModelRunner, select_device
from thermops.serve.cameras import CameraRegistry
from thermops.serve.errors import PayloadTooLarge, ServeError, Unavailable
from thermops.serve.gateway import Gateway, RouteSpec, quiet_client_errors
from thermops.serve.requests import (
    PackageParams,
    check_camera_range,
    check_tubelet,
    parse_json_tubelet,
    parse_upload,
)
from thermops.serve.schema import CameraId, GeometryUsed, GroundPx, JsonTubelet, Prediction, Registration, WindowPx
from thermops.serve.windows import Window, request_window

logger = logging.getLogger("thermops.serve")
GIL_SWITCH_INTERVAL_S = 0.001
GC_THRESHOLDS = (20_000, 20, 20)  # CPython's default is (700, 10, 10)
INLINE_VALUES = 32768  # tubelets up to this many values are prepared on the event loop (no thread hop)


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

MODEL_ERRORS = (400, 404, 413, 415, 422, 503)
ROUTES = {
    "/classify": RouteSpec(
        "json", LIMITS.max_json_bytes, model=True, max_values=LIMITS.max_elements + 64, errors=MODEL_ERRORS
    ),
    "/classify_upload": RouteSpec(
        "multipart",
        LIMITS.max_request_bytes,
        model=True,
        parts={"file": "file", "camera_id": "field", "window_px": "field", "ground_px": "field"},
        optional=("window_px", "ground_px"),
        max_file_bytes=LIMITS.max_upload_bytes,
        errors=MODEL_ERRORS,
    ),
    "/register_camera": RouteSpec("json", 65536, auth=True, errors=(400, 401, 403, 409, 413, 415, 503)),
    "/metadata": RouteSpec("json", 4096),
    "/stats": RouteSpec("json", 4096),
}


def _error(err: ServeError) -> JSONResponse:
    """An error answer returned (not raised), so BentoML logs no traceback for a client's mistake."""
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers())


def state_dir() -> Path:
    """`package.state_dir`; a relative one lives under BentoML's home ($BENTOML_HOME, else
    ~/bentoml), which is writable wherever BentoML runs (the bento's own files are not)."""
    path = Path(LIMITS.state_dir).expanduser()
    if path.is_absolute():
        return path
    return Path(os.environ.get("BENTOML_HOME") or Path.home() / "bentoml") / path


class GcTimer:
    """A gc callback: collections and seconds spent in them, for /stats."""

    def __init__(self) -> None:
        self.collections = 0
        self.seconds = 0.0
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.collections += 1
            self.seconds += time.perf_counter() - self._start


def _rss_bytes() -> int:
    """Resident memory of this worker (Linux /proc; 0 elsewhere)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


@bentoml.service(
    name=LIMITS.bento_name,
    workers=LIMITS.workers,
    # The gateway answers capacity (503 + Retry-After) and its own deadline; BentoML's
    # concurrency limit would answer 429 in another shape, and its timeout is a backstop.
    traffic={"timeout": LIMITS.timeout_s + 30},
    logging={"access": {"enabled": LIMITS.access_log}},
    **({"resources": {"gpu": LIMITS.gpus}} if LIMITS.gpus else {}),
)
class ThermopsClassifier:
    """Classifies thermal tubelets from registered cameras (see the module docstring)."""

    # Resolved to the stored model (its .path, .tag, .info) on instances.
    model_ref = bentoml.models.BentoModel(ARGS.model_tag)

    def __init__(self) -> None:
        import torch

        from thermops.model.card import input_spec_from_card, load_model_dir

        self._ready = False
        quiet_client_errors()
        # The event loop and the model thread share the GIL; hand it over in 1 ms, not 5 ms.
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        torch.set_num_threads(LIMITS.torch_threads)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already set in this process
            pass
        path = Path(self.model_ref.path)
        model, self.card = load_model_dir(path)  # torch.load(..., weights_only=True)
        self.spec = input_spec_from_card(self.card)
        if (self.spec.frames, self.spec.size) != (ARGS.input_frames, ARGS.input_size):
            raise RuntimeError(
                f"bento arguments say input {ARGS.input_frames}x{ARGS.input_size} "
                f"but the model card says {self.spec.frames}x{self.spec.size}"
            )
        self.device = select_device(LIMITS.device, torch.cuda.is_available())
        self.runner = ModelRunner(model, self.device, self.spec)
        self.batcher = Batcher(
            self.runner, LIMITS.max_batch_size, max_pending=LIMITS.max_concurrency, retry_after_s=LIMITS.retry_after_s
        )
        self.classes = list(self.card["classes"])
        self.radiometric = radiometric_units(self.card)
        self.cameras = CameraRegistry.from_dir(path / "calibration", state_dir(), LIMITS.max_registered_cameras)

        self.metadata_ = dict(self.model_ref.info.metadata)
        self.version = str(self.model_ref.tag)
        logger.info(
            "model %s on %s, %d torch thread(s), max batch %d, capacity %d requests / %d bytes per worker",
            self.version,
            self.device,
            torch.get_num_threads(),
            LIMITS.max_batch_size,
            LIMITS.max_concurrency,
            LIMITS.max_inflight_bytes,
        )
        # The startup heap (torch, BentoML, the model) is never garbage: keep the collector
        # off it, and collect young objects less often. Measured (32 JSON clients, load 5):
        # 3.7 s of 12 s in the collector, 0.36 s per full collection, 122 answers/s; frozen,
        # lists released and these thresholds: 0.08 s and 192 answers/s (docs/serving.md).
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        self.gc = GcTimer()
        gc.callbacks.append(self.gc)
        self._ready = True

    def __is_ready__(self) -> bool:
        return self._ready

    # ------------------------------------------------------------------ per-request path

    def _job(self, decode: typing.Callable[[], np.ndarray], cal: Any, window: Window | None) -> Job:
        """Decode under the limits, validate, check against the camera: the model thread's job."""
        tubelet = check_tubelet(decode(), LIMITS)
        check_camera_range(tubelet, cal)
        return Job(tubelet, cal, self.radiometric, geo=None if window is None else window.features)

    async def _alone(self) -> bool:
        """Whether this is the only request in flight (and the model idle). Two turns of the
        event loop first, so that requests already waiting in the sockets reach the gateway
        and are counted."""
        if not self.batcher.idle:
            return False
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        gate = Gateway.current
        return gate is not None and gate.inflight <= 1

    async def _answer(
        self,
        decode: typing.Callable[[], np.ndarray],
        camera_id: str,
        field: str,
        values: int,
        window_px: float | None = None,
        ground_px: list[float] | None = None,
    ) -> Prediction | JSONResponse:
        window = None
        try:
            cal = self.cameras.get(camera_id)
            # the window geometry (a few scalars) before anything is decoded; None: the model takes none
            window = request_window(self.spec, cal, window_px, ground_px)
            if values <= INLINE_VALUES:
                job = self._job(decode, cal, window)
            else:  # a large tubelet: keep the event loop free meanwhile
                job = await asyncio.to_thread(self._job, decode, cal, window)
            probs = await self.batcher.submit(job, alone=await self._alone())
        except ServeError as err:
            err.field = err.field or field
            return _error(err)
        except MemoryError:
            logger.error("out of memory on %s", field)
            return _error(
                Unavailable("the worker ran out of memory", retry_after=LIMITS.retry_after_s, code="no_memory")
            )
        except Exception:  # the model call failed: that batch is refused, the worker keeps serving
            logger.exception("model call failed")
            return _error(Unavailable("the model call failed", retry_after=LIMITS.retry_after_s, code="model_error"))
        return Prediction(
            label=self.classes[int(np.argmax(probs))],
            scores={c: float(p) for c, p in zip(self.classes, probs)},
            camera_id=camera_id,
            calibration_version=job.calibration.version,
            units=job.units,
            model_version=self.version,
            geometry=None if window is None else GeometryUsed(**window.describe()),
        )

    @bentoml.api
    async def classify(
        self, tubelet: JsonTubelet, camera_id: CameraId, window_px: WindowPx = None, ground_px: GroundPx = None
    ) -> Prediction:
        """Classify one tubelet sent as a JSON array (T, H, W) in the camera's raw values.

        A model that takes window geometry (/metadata `input.geometry`) needs `window_px` and
        takes `ground_px`; other models ignore both."""
        values = len(tubelet) * (len(tubelet[0]) * len(tubelet[0][0]) if tubelet and tubelet[0] else 1)

        def decode() -> np.ndarray:
            arr = parse_json_tubelet(tubelet, LIMITS)
            # Release the parsed lists now, not when the answer is sent: they would otherwise
            # live through the batch and be scanned by the collector (one list per row).
            tubelet.clear()
            return arr

        return await self._answer(decode, camera_id, "tubelet", values, window_px, ground_px)

    @bentoml.api
    async def classify_upload(
        self, file: Path, camera_id: CameraId, window_px: WindowPx = None, ground_px: GroundPx = None
    ) -> Prediction:
        """Classify one tubelet uploaded as an .npy array or a multi-page TIFF (T, H, W), one page per frame.

        Window geometry as in /classify, as text fields (`ground_px` as the text `[u, v]`)."""
        try:
            size = os.path.getsize(file)
            if size > LIMITS.max_upload_bytes:
                raise PayloadTooLarge(
                    f"upload of {size} bytes exceeds the limit of {LIMITS.max_upload_bytes} bytes", field="file"
                )
        except ServeError as err:
            return _error(err)
        # read only once the camera and the window geometry passed (inside `_answer`)
        return await self._answer(
            lambda: parse_upload(Path(file).read_bytes(), LIMITS), camera_id, "file", size // 2, window_px, ground_px
        )

    @bentoml.api
    def register_camera(self, calibration: dict[str, Any]) -> Registration:
        """Register a display8 camera (unknown geometry allowed) for immediate use by every worker.

        Needs `Authorization: Bearer <token>` (the token in the variable named by
        `package.register_token_env`); at most `package.max_registered_cameras`.
        """
        try:
            cal, replaced = self.cameras.register(calibration)
        except ServeError as err:
            return _error(err)
        except (OSError, RuntimeError) as err:
            logger.error("registration not saved: %s", err)
            return _error(Unavailable(f"registration not saved: {err}", retry_after=LIMITS.retry_after_s))
        logger.info("camera %s registered at calibration %s", cal.camera_id, cal.version)
        return Registration(
            camera_id=cal.camera_id, calibration_version=cal.version, units=cal.units, replaced=replaced
        )

    @bentoml.api
    async def metadata(self) -> dict[str, Any]:
        """Lineage, gate summary, validated envelope, classes, input contract, cameras and limits."""
        m = self.metadata_
        return {
            "model_version": self.version,
            "classes": self.classes,
            "input": self.spec.to_dict(),
            "request_geometry": self._geometry_contract(),
            "radiometric_units": self.radiometric,
            "lineage": {k: m.get(k) for k in ("git_revision", "package_git_revision", "data_version", "calibrations")},
            "gate": m.get("gate", {}),
            "envelope": m.get("envelope", {}),
            "cameras": self.cameras.describe(),
            "camera_state_error": self.cameras.state_error,
            "limits": {k: v for k, v in LIMITS.to_dict().items() if k != "register_token_env"},
            "device": self.device,
        }

    def _geometry_contract(self) -> dict[str, Any]:
        """What /classify and /classify_upload do with the window geometry fields, for clients."""
        if not self.spec.geometry:
            return {
                "takes_geometry": False,
                "window_px": "ignored",
                "ground_px": "ignored",
                "note": "this model takes no window geometry; window_px and ground_px are accepted and ignored",
            }
        return {
            "takes_geometry": True,
            "features": list(self.spec.geometry),
            "window_px": "required: the window's side in camera pixels before resampling, 1 .. the camera's "
            "larger image side",
            "ground_px": "optional: [u, v] ground contact point in camera pixels, inside the image and below the "
            "horizon; gives window_m on cameras of known geometry",
            "note": "without ground_px, or on a camera of unknown geometry, the geometry is unknown "
            "(metric_scale 0, known 0), as training marks such rows",
        }

    @bentoml.api
    async def stats(self) -> dict[str, Any]:
        """This worker since start: model calls by batch size, requests and bytes in flight,
        capacity refusals, tubelets waiting for the model, resident memory."""
        gate = Gateway.current
        return {
            "pid": os.getpid(),
            "threads": {"event_loop": threading.get_native_id(), "model": self.batcher.thread_id},
            "traced": self.runner.traced,
            "batch_sizes": self.runner.stats(),
            **self.runner.timing(),
            "pending": self.batcher.pending,
            "inline_calls": self.batcher.inline_calls,
            "inflight": gate.inflight if gate else None,
            "inflight_bytes": gate.inflight_bytes if gate else None,
            "refused": gate.refused if gate else None,
            "latency": gate.latency() if gate else None,
            "gc": {"collections": self.gc.collections, "seconds": round(self.gc.seconds, 4)},
            "rss_bytes": _rss_bytes(),
        }


ThermopsClassifier.add_asgi_middleware(
    Gateway,
    routes=ROUTES,
    max_concurrency=LIMITS.max_concurrency,
    max_inflight_bytes=LIMITS.max_inflight_bytes,
    retry_after_s=LIMITS.retry_after_s,
    timeout_s=LIMITS.timeout_s,
    token_env=LIMITS.register_token_env,
)
