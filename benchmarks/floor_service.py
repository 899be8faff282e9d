"""The floor: a BentoML service with thermops' routes and request types but no model and no checks.

It parses exactly what the thermops service parses (the same pydantic types for the
JSON tubelet and the camera id; the same multipart upload into a `Path`, whose bytes it
reads) and answers a constant prediction of the same shape. What BentoML costs for
these requests on a machine is what this service costs there; the serving targets
(benchmarks/RESULTS.md) are ratios against it, measured in the same run.

    bentoml serve benchmarks.floor_service:ThermopsFloor --host 127.0.0.1 --port 3001
"""

from __future__ import annotations

from pathlib import Path

import bentoml

from thermops.serve.schema import CameraId, JsonTubelet, Prediction

ANSWER = Prediction(
    label="nuisance",
    scores={"person": 0.1, "vehicle": 0.1, "animal": 0.1, "nuisance": 0.7},
    camera_id="cam-lin",
    calibration_version="v1",
    units="celsius",
    model_version="floor:0",
)


# Worker count and access logging as the thermops service has them by default (params.yaml).
@bentoml.service(name="thermops-floor", workers=1, traffic={"timeout": 60}, logging={"access": {"enabled": False}})
class ThermopsFloor:
    """No model: parse the request, answer a constant."""

    @bentoml.api
    async def classify(self, tubelet: JsonTubelet, camera_id: CameraId) -> Prediction:
        return ANSWER

    @bentoml.api
    async def classify_upload(self, file: Path, camera_id: CameraId) -> Prediction:
        Path(file).read_bytes()
        return ANSWER
