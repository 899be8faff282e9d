"""The alternative the issue names: the model as a separate BentoML service (`bentoml.depends`).

Measured against the in-process batcher of service.py (benchmarks/RESULTS.md, "Batching:
in-process batcher vs a separate model service"), not shipped. `Front` has the routes of
the thermops service and does the same decoding, validation and preprocessing; `Model`
is a batchable service (BentoML's adaptive batching) that runs the model in its own
process, called through BentoML's service-to-service client. Serve it from the
repository root with the bento's arguments:

    bentoml serve benchmarks.depends_service:Front --arg model_tag=... (every package arg)
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import bentoml
import numpy as np
from pydantic import create_model

from thermops.serve.errors import ServeError
from thermops.serve.requests import (
    PackageParams,
    check_camera_range,
    model_input,
    parse_json_tubelet,
    parse_upload,
    validate_tubelet,
)
from thermops.serve.schema import CameraId, JsonTubelet, Prediction

hints = typing.get_type_hints(PackageParams)
fields = {f.name: (hints[f.name], ...) for f in dataclasses.fields(PackageParams)}
ARGS = bentoml.use_arguments(
    create_model("ServeArgs", model_tag=(str, ...), input_frames=(int, ...), input_size=(int, ...), **fields)
)
LIMITS = PackageParams(**{f.name: getattr(ARGS, f.name) for f in dataclasses.fields(PackageParams)})


@bentoml.service(name="thermops-model", workers=1, traffic={"timeout": 60}, logging={"access": {"enabled": False}})
class Model:
    """The model alone, adaptively batched by BentoML."""

    model_ref = bentoml.models.BentoModel(ARGS.model_tag)

    def __init__(self) -> None:
        import torch

        from thermops.model.card import load_model_dir

        torch.set_num_threads(LIMITS.torch_threads)
        self.torch = torch
        self.model, _ = load_model_dir(Path(self.model_ref.path))
        self.model.eval()

    @bentoml.api(batchable=True, max_batch_size=LIMITS.max_batch_size, max_latency_ms=10_000)
    def infer(self, x: np.ndarray) -> np.ndarray:
        """(N, 1, T, S, S) float32 -> (N, C) probabilities."""
        with self.torch.inference_mode():
            logits = self.model(self.torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()
        z = np.exp(logits - logits.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)


@bentoml.service(name="thermops-front", workers=1, traffic={"timeout": 60}, logging={"access": {"enabled": False}})
class Front:
    """The thermops routes, calling the model service."""

    model = bentoml.depends(Model)
    model_ref = bentoml.models.BentoModel(ARGS.model_tag)

    def __init__(self) -> None:
        from thermops.model.card import input_spec_from_card, load_card, radiometric_units
        from thermops.serve.cameras import CameraRegistry

        path = Path(self.model_ref.path)
        card = load_card(path)
        self.spec = input_spec_from_card(card)
        self.classes = list(card["classes"])
        self.radiometric = radiometric_units(card)
        self.cameras = CameraRegistry.from_dir(path / "calibration")

    async def _answer(self, arr_fn, camera_id: str) -> Prediction:
        try:
            cal = self.cameras.get(camera_id)
            arr = validate_tubelet(arr_fn(), LIMITS)
            check_camera_range(arr, cal)
            x, units = model_input(arr, cal, self.radiometric, self.spec)
        except ServeError as err:
            raise bentoml.exceptions.InvalidArgument(str(err)) from None
        probs = np.asarray(await self.model.to_async.infer(x))[0]
        return Prediction(
            label=self.classes[int(np.argmax(probs))],
            scores={c: float(p) for c, p in zip(self.classes, probs)},
            camera_id=camera_id,
            calibration_version=cal.version,
            units=units,
            model_version="depends",
        )

    @bentoml.api
    async def classify(self, tubelet: JsonTubelet, camera_id: CameraId) -> Prediction:
        return await self._answer(lambda: parse_json_tubelet(tubelet, LIMITS), camera_id)

    @bentoml.api
    async def classify_upload(self, file: Path, camera_id: CameraId) -> Prediction:
        data = Path(file).read_bytes()
        return await self._answer(lambda: parse_upload(data, LIMITS), camera_id)
