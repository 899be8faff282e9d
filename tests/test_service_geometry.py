"""The service serves classifiers that take window geometry (`input.geometry`).

In-process: a request's window (`window_px`, `ground_px`) gives the metres `prepare` gives
for the same window (`thermops.data.extract._side_px`) and the features the offline
inference path builds (`thermops.learn.datasets.row_geometry`); bad geometry is refused
naming its field; the model runner keeps each job's features on its own row in a batch.

Served for real (`bentoml serve` on 127.0.0.1, a bento the package step built from a geometry
model): answers equal the offline path (`thermops.learn.engine.predict(model, x, geo=...)`);
under concurrent batched requests every answer is its own request's (a probe classifier whose
label is a function of metric_scale alone); bad geometry gets a 4xx naming the field before
the tubelet is decoded. Before this change every request to such a bento failed (503
model_error, "this classifier takes (1, 3) geometry features, got None").
"""

from __future__ import annotations

import json
import math
import types
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import torch
from params_helpers import from_params
from serving_payloads import multipart, npy_bytes

from tests.serving_helpers import (
    CLASSES,
    Server,
    counts_tubelet,
    display8_calibration,
    display8_tubelet,
    make_gated_model,
    package_in_subprocess,
    radiometric_calibration,
    schemathesis_run,
    small_package_params,
    write_params,
)
from thermops.camera.geometry import PinholeCamera
from thermops.data.extract import PrepareParams, _side_px
from thermops.learn.datasets import row_geometry
from thermops.learn.engine import predict
from thermops.model.card import input_spec_from_card, load_model_dir, radiometric_units
from thermops.model.network import ModelConfig, TubeletClassifier
from thermops.model.preprocess import InputSpec, prepare_batch, to_model_units
from thermops.serve.batcher import Job, ModelRunner
from thermops.serve.errors import GeometryError, is_error_body
from thermops.serve.windows import request_window

GEOMETRY = ("metric_scale", "pixel_scale", "known")
GEO_SPEC = from_params(InputSpec, "input", frames=8, size=32, geometry=GEOMETRY)
PLAIN_SPEC = from_params(InputSpec, "input", frames=8, size=32, geometry=())
CAM = radiometric_calibration()
D8 = display8_calibration()
CAMERAS = {"cam-lin": CAM, "cam-d8": D8}
PINHOLE = PinholeCamera.from_calibration(CAM)
TIMEOUT = 60

# The probe: label = the class whose centre K is nearest to metric_scale, i.e. bins of
# metric_scale with edges -0.75, 0.5, 1.5 (unknown geometry, metric_scale 0, is class 1).
K = np.array([-1.5, 0.0, 1.0, 2.0])
EDGES = np.array([-0.75, 0.5, 1.5])
PROBE_SCALE = 3.0


def probe_label(metric_scale: float) -> str:
    return CLASSES[int(np.searchsorted(EDGES, metric_scale, side="right"))]


def probe_model(seed: int = 0) -> TubeletClassifier:
    """A tiny geometry classifier whose logits are 3 * (m^2 - (m - K_c)^2) + 0.1 * P_c * pixel_scale plus
    its (untrained, nearly constant) image term: the label depends on the metric scale m alone (the
    other terms stay below the margins the requests keep from the bin edges), the scores on m and
    pixel_scale, so that any two requests of the tests get different scores."""
    torch.manual_seed(seed)
    cfg = from_params(ModelConfig, "model", size="tiny", embed_dim=32)
    model = TubeletClassifier(cfg, len(CLASSES), geo_dim=len(GEOMETRY)).eval()
    with torch.no_grad():
        first, second = model.geo[0], model.geo[2]
        first.weight.zero_()
        first.bias.zero_()
        first.weight[0, 0] = 1.0  # hidden 0, 1 = relu(m), relu(-m)
        first.weight[1, 0] = -1.0
        second.weight.zero_()
        second.bias.zero_()
        second.weight[0, 0] = 1.0  # embedding 0 = relu(m) - relu(-m) = m
        second.weight[0, 1] = -1.0
        first.weight[2, 1] = 1.0  # embedding 1 = pixel_scale, the same way
        first.weight[3, 1] = -1.0
        second.weight[1, 2] = 1.0
        second.weight[1, 3] = -1.0
        d = cfg.embed_dim
        model.head.weight[:, :d] *= 0.2  # the image term: present, small
        model.head.weight[:, d:] = 0.0
        model.head.weight[:, d] = torch.as_tensor(PROBE_SCALE * 2 * K, dtype=torch.float32)
        model.head.weight[:, d + 1] = torch.tensor([0.0, 0.1, -0.1, 0.05])
        model.head.bias.copy_(torch.as_tensor(-PROBE_SCALE * K**2, dtype=torch.float32))
    return model


def ground_px_at(range_m: float, lateral_m: float = 0.0) -> list[float]:
    """The pixel of a ground point of the test camera (how a client finds an object's foot)."""
    g = PINHOLE.ground_point_at_range(range_m, lateral_m)
    uv, _ = PINHOLE.project(np.array([[g[0], g[1], 0.0]]))
    return [float(uv[0, 0]), float(uv[0, 1])]


def prepare_window(range_m: float, window_m: float, lateral_m: float = 0.0) -> tuple[int, float]:
    """(window_px, window_m) of a geometric window that `prepare` cuts at that ground point."""
    p = from_params(PrepareParams, "prepare", geometric=True, window_m=window_m, box_fraction=0.0)
    ground = tuple(PINHOLE.ground_point_at_range(range_m, lateral_m))
    side, metres = _side_px(PINHOLE, p, ground, 10.0, max(CAM.geometry.image_width, CAM.geometry.image_height))
    return side, metres


def offline_features(rows: list[dict], spec: InputSpec = GEO_SPEC) -> torch.Tensor:
    """The offline inference path's features (`row_geometry`) of manifest-like rows."""
    return row_geometry(types.SimpleNamespace(rows=rows), np.arange(len(rows)), spec)


def offline_scores(model, card, tubelets, cams, rows) -> list[dict[str, float]]:
    """Class probabilities through the offline path: the shared preprocessing and `predict(..., geo=)`."""
    spec = input_spec_from_card(card)
    xs = []
    for arr, cal in zip(tubelets, cams):
        values, units = to_model_units(arr, cal, radiometric_units(card))
        xs.append(prepare_batch(torch.from_numpy(values.astype(np.float32))[None], units, spec))
    logits = predict(model, torch.cat(xs), torch.device("cpu"), geo=offline_features(rows, spec))
    probs = torch.softmax(logits, dim=1).numpy()
    return [dict(zip(card["classes"], map(float, p))) for p in probs]


# ------------------------------------------------------------------ in process


@pytest.mark.parametrize(
    "range_m, window_m, lateral_m", [(15, 4.0, 0.0), (40, 4.0, -3.0), (90, 1.5, 6.0), (150, 8.0, 0)]
)
def test_window_metres_are_prepares(range_m, window_m, lateral_m):
    """The ground point's pixel and prepare's window side give prepare's metres and its row's features."""
    side, metres = prepare_window(range_m, window_m, lateral_m)
    w = request_window(GEO_SPEC, CAM, float(side), ground_px_at(range_m, lateral_m))
    assert w is not None and w.known and w.window_px == side
    assert w.window_m == pytest.approx(metres, rel=1e-6)
    expected = offline_features([{"window_m": metres, "window_px": side}])[0].numpy()
    np.testing.assert_allclose(w.features, expected, rtol=0, atol=1e-6)
    assert w.describe()["features"]["known"] == 1.0


def test_unknown_geometry_without_ground_point_or_on_a_display8_camera():
    """As training marks such rows: metric_scale 0, known 0, pixel_scale from window_px."""
    expected = offline_features([{"window_m": None, "window_px": 48}])[0].numpy()
    for cal, ground in ((CAM, None), (D8, [100.0, 200.0]), (D8, None)):
        w = request_window(GEO_SPEC, cal, 48.0, ground)
        assert w is not None and not w.known and w.window_m is None
        np.testing.assert_allclose(w.features, expected, atol=1e-7)
    assert expected[0] == 0 and expected[2] == 0 and expected[1] == pytest.approx(math.log(48 / 32))


def test_a_model_without_geometry_ignores_the_fields():
    for window_px, ground in ((None, None), (48.0, [1.0, 2.0]), (1e9, [-5.0, 1e6])):
        assert request_window(PLAIN_SPEC, CAM, window_px, ground) is None


@pytest.mark.parametrize(
    "window_px, ground, field, code, fragment",
    [
        (None, [192.0, 200.0], "window_px", "missing_geometry", "send window_px"),
        (385.0, None, "window_px", "invalid_geometry", "outside 1..384"),
        (0.5, None, "window_px", "invalid_geometry", "outside 1..384"),
        (float("nan"), None, "window_px", "invalid_geometry", "finite"),
        (48.0, [-0.5, 200.0], "ground_px", "invalid_geometry", "outside the 384 x 288 image"),
        (48.0, [100.0, 288.5], "ground_px", "invalid_geometry", "outside the 384 x 288 image"),
        (48.0, [192.0, 10.0], "ground_px", "invalid_geometry", "above the horizon"),
        (48.0, [192.0, float("inf")], "ground_px", "invalid_geometry", "finite"),
        (48.0, [192.0], "ground_px", "invalid_geometry", "two numbers"),
    ],
)
def test_bad_geometry_is_refused_naming_the_field(window_px, ground, field, code, fragment):
    with pytest.raises(GeometryError) as err:
        request_window(GEO_SPEC, CAM, window_px, ground)
    assert err.value.status == 422 and err.value.field == field and err.value.code == code
    assert fragment in err.value.message


def test_the_runner_keeps_each_jobs_features_on_its_row():
    """A batch of 12 jobs with different tubelets and geometry: each row's probabilities equal that
    job run alone, and the label is its own geometry's (the probe); the traced model is used."""
    model = probe_model()
    runner = ModelRunner(model, "cpu", GEO_SPEC)
    assert runner.traced
    rng = np.random.default_rng(0)
    ms = np.tile([-1.3, 0.0, 1.0, 1.9], 3) + rng.uniform(-0.15, 0.15, 12)  # each >= 0.25 from a bin edge
    jobs = []
    for i, m in enumerate(ms):
        geo = np.array([m, rng.uniform(-1, 1), 1.0], np.float32)
        jobs.append(Job(counts_tubelet(seed=i).astype(np.float64), CAM, "celsius", geo=geo))
    order = rng.permutation(len(jobs))
    batch = runner([jobs[i] for i in order])
    for k, i in enumerate(order):
        alone = runner([jobs[i]])[0]
        np.testing.assert_allclose(batch[k], alone, atol=1e-5)
        assert CLASSES[int(np.argmax(batch[k]))] == probe_label(ms[i])
    # a job without features (never built by the service) is refused alone, its neighbours answered
    lost = Job(counts_tubelet(seed=99).astype(np.float64), CAM, "celsius", geo=None)
    out = runner([jobs[0], lost, jobs[1]])
    assert isinstance(out[1], GeometryError) and isinstance(out[0], np.ndarray) and isinstance(out[2], np.ndarray)


# ------------------------------------------------------------------ served


@pytest.fixture(scope="module")
def geo_served(tmp_path_factory):
    """(server, model, card) for a bento the package step built from the probe geometry model."""
    root = tmp_path_factory.mktemp("geo-packaged")
    paths = make_gated_model(root, geometry=GEOMETRY, model=probe_model())
    home = root / "bentoml"
    out = root / "models" / "bento.json"
    proc = package_in_subprocess(paths, home, out, write_params(root / "params.yaml", small_package_params()))
    assert proc.returncode == 0, proc.stderr[-3000:]
    tag = json.loads(out.read_text())["bento_tag"]
    server = Server(tag, home, root, tmp_path_factory.mktemp("geo-serve") / "serve.log")
    try:
        server.wait_ready()
        model, card = load_model_dir(paths["model"])
        yield server, model, card
    finally:
        server.stop()


def _post(server: Server, route: str, **kw) -> requests.Response:
    return requests.post(server.url + route, timeout=TIMEOUT, **kw)


def _classify(server, arr, camera_id, upload=False, **geometry) -> requests.Response:
    if upload:
        data = {"camera_id": camera_id, **{k: json.dumps(v) for k, v in geometry.items()}}
        return _post(server, "/classify_upload", files={"file": ("t.npy", npy_bytes(arr))}, data=data)
    return _post(server, "/classify", json={"tubelet": arr.tolist(), "camera_id": camera_id, **geometry})


def _error(resp: requests.Response) -> dict:
    body = resp.json()
    assert is_error_body(body), body
    return body["error"]


def _requests(n: int, seed: int = 0) -> list[dict]:
    """n requests of the test camera over the probe's four bins: tubelet, camera, geometry fields,
    the manifest row prepare would write for the window, and the probe's label."""
    rng = np.random.default_rng(seed)
    out = []
    targets = [-1.3, None, 1.0, 1.9]  # metric_scale per bin; None: no ground point (unknown, bin 1)
    for i in range(n):
        target = targets[i % 4]
        rng_m = float(rng.uniform(30, 110))
        if target is None:
            side, metres, fields = 10 + 3 * i, None, {}  # distinct sides: distinct pixel_scale
        else:
            side, metres = prepare_window(rng_m, 4.0 * math.exp(target + rng.uniform(-0.15, 0.15)))
            fields = {"ground_px": ground_px_at(rng_m)}
        fields["window_px"] = float(side)
        row = {"window_m": metres, "window_px": side}
        m = 0.0 if metres is None else math.log(metres / 4.0)
        out.append(
            dict(
                tubelet=counts_tubelet(h=20 + i % 7, w=24, seed=100 + i), camera="cam-lin", fields=fields, row=row, m=m
            )
        )
    return out


def _assert_answer(resp, expected: dict[str, float], req: dict):
    assert resp.status_code == 200, resp.text
    body = resp.json()
    for c, p in expected.items():
        assert body["scores"][c] == pytest.approx(p, rel=1e-3, abs=1e-12), (c, body, req["fields"])
    assert body["label"] == max(expected, key=expected.get) == probe_label(req["m"])
    geo = body["geometry"]
    assert geo["window_px"] == req["row"]["window_px"] and geo["known"] == (req["row"]["window_m"] is not None)
    if geo["known"]:
        assert geo["window_m"] == pytest.approx(req["row"]["window_m"], rel=1e-6)
        assert geo["features"]["metric_scale"] == pytest.approx(req["m"], abs=1e-5)
    else:
        assert geo["window_m"] is None and geo["features"] == pytest.approx(
            {"metric_scale": 0.0, "pixel_scale": math.log(req["row"]["window_px"] / 32), "known": 0.0}
        )


def test_metadata_states_the_geometry_contract(geo_served):
    server = geo_served[0]
    meta = _post(server, "/metadata", json={}).json()
    assert meta["input"]["geometry"] == list(GEOMETRY)
    contract = meta["request_geometry"]
    assert contract["takes_geometry"] is True and contract["features"] == list(GEOMETRY)
    assert contract["window_px"].startswith("required") and contract["ground_px"].startswith("optional")
    assert _post(server, "/stats", json={}).json()["traced"] is True  # the traced model takes the features too


def test_served_geometry_model_equals_the_offline_path(geo_served):
    """JSON and multipart, known and unknown geometry, a display8 camera of unknown geometry."""
    server, model, card = geo_served
    reqs = _requests(8, seed=1)
    d8 = display8_tubelet(seed=5)
    reqs.append(
        dict(tubelet=d8, camera="cam-d8", fields={"window_px": 40.0, "ground_px": [100.0, 200.0]},
             row={"window_m": None, "window_px": 40}, m=0.0)
    )  # fmt: skip
    expected = offline_scores(
        model, card, [r["tubelet"] for r in reqs], [CAMERAS[r["camera"]] for r in reqs], [r["row"] for r in reqs]
    )
    for i, (req, exp) in enumerate(zip(reqs, expected)):
        resp = _classify(server, req["tubelet"], req["camera"], upload=i % 2 == 1, **req["fields"])
        _assert_answer(resp, exp, req)


def test_concurrent_batched_requests_each_get_their_own_geometry(geo_served):
    """64 requests from 16 threads, four geometry bins interleaved, JSON and multipart: every answer
    carries its own request's label (a function of its metric_scale alone) and the offline scores of
    its own tubelet and features, while the model saw batches of several clients."""
    server, model, card = geo_served
    reqs = _requests(64, seed=2)
    expected = offline_scores(model, card, [r["tubelet"] for r in reqs], [CAM] * len(reqs), [r["row"] for r in reqs])
    assert {probe_label(r["m"]) for r in reqs} == set(CLASSES)
    # the check can see a misaligned batch: any two requests' expected scores differ by > 1 % in a class
    table = np.log(np.array([[e[c] for c in CLASSES] for e in expected]))
    gaps = np.abs(table[:, None] - table[None]).max(axis=2) + np.eye(len(table))
    assert gaps.min() > 1e-2, gaps.min()
    before = _post(server, "/stats", json={}).json()["batch_sizes"]
    with ThreadPoolExecutor(16) as pool:
        resps = list(pool.map(lambda i: _classify(server, reqs[i]["tubelet"], "cam-lin", i % 3 == 0, **reqs[i]["fields"]),
                              range(len(reqs))))  # fmt: skip
    for resp, exp, req in zip(resps, expected, reqs):
        _assert_answer(resp, exp, req)
    after = _post(server, "/stats", json={}).json()["batch_sizes"]
    calls = {int(k): v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}
    assert sum(k * v for k, v in calls.items()) == len(reqs), calls
    assert max(calls) > 1, calls


@pytest.mark.parametrize("upload", [False, True], ids=["json", "multipart"])
@pytest.mark.parametrize(
    "fields, status, field, fragment",
    [
        ({}, 422, "window_px", "send window_px"),
        ({"ground_px": [192.0, 200.0]}, 422, "window_px", "send window_px"),
        ({"window_px": 385.0}, 422, "window_px", "outside 1..384"),
        ({"window_px": 0.0}, 400, "window_px", "greater than or equal to 1"),
        ({"window_px": -8.0}, 400, "window_px", "greater than or equal to 1"),
        ({"window_px": 48.0, "ground_px": [400.0, 200.0]}, 422, "ground_px", "outside the 384 x 288 image"),
        ({"window_px": 48.0, "ground_px": [192.0, 5.0]}, 422, "ground_px", "above the horizon"),
        ({"window_px": 48.0, "ground_px": [192.0]}, 400, "ground_px", "at least 2 items"),
        ({"window_px": True}, 400, "window_px", "valid number"),
    ],
    ids=["missing", "ground-only", "oversize", "zero", "negative", "outside", "horizon", "one-coordinate", "boolean"],
)
def test_bad_geometry_4xx_names_the_field_before_the_tubelet_is_decoded(
    geo_served, upload, fields, status, field, fragment
):
    """The tubelet sent is itself bad (non-finite values in the upload, values past the camera's
    14 bits in the JSON array): the answer is the geometry's error, so the geometry was checked
    before the tubelet was decoded."""
    server = geo_served[0]
    bad = np.full((4, 16, 16), np.nan, np.float32) if upload else np.full((4, 16, 16), 1e9)
    resp = _classify(server, bad, "cam-lin", upload=upload, **fields)
    assert resp.status_code == status, resp.text
    err = _error(resp)
    assert err["field"] == field and fragment in err["message"], err
    # with good geometry the same tubelet gets its own error: it was the geometry that answered above
    again = _classify(server, bad, "cam-lin", upload=upload, window_px=48.0)
    assert again.status_code == 400 and _error(again)["field"] == ("file" if upload else "tubelet"), again.text


def test_multipart_with_a_stray_part_is_still_refused(geo_served):
    body, headers = multipart(
        [("file", npy_bytes(counts_tubelet()), "t.npy"), ("camera_id", b"cam-lin", None), ("window_m", b"4", None)]
    )
    resp = _post(geo_served[0], "/classify_upload", data=body, headers=headers)
    assert resp.status_code == 400 and "unexpected multipart part 'window_m'" in _error(resp)["message"]


def test_the_openapi_schema_documents_the_geometry_fields_and_422(geo_served):
    spec = requests.get(geo_served[0].url + "/docs.json", timeout=TIMEOUT).json()
    text = json.dumps(spec)
    for route in ("/classify", "/classify_upload"):
        op = spec["paths"][route]["post"]
        assert "422" in op["responses"], op["responses"].keys()
    assert "window_px" in text and "ground_px" in text and "below the horizon" in text
    assert "GeometryUsed" in spec["components"]["schemas"]


def test_schemathesis_on_the_geometry_model_finds_no_server_error(geo_served, tmp_path):
    """Fuzzed window geometry (missing, out of range, off the image, above the horizon) against the
    geometry model: zero 5xx, every answer documented (422 included)."""
    server = geo_served[0]
    tested = schemathesis_run(server.url, tmp_path, max_examples=25)
    for route in ("/classify", "/classify_upload"):
        assert f"POST {route}" in tested, f"schemathesis did not exercise {route}: {sorted(tested)}"
    assert not any(tested.values()), tested
    assert server.alive()
