"""Helpers for the package and service tests: a small gated model dir, calibrations, a server.

Until the real gated model exists, the tests build an untrained `TubeletClassifier`
with a card whose gate section is fake but well formed, and package it with the
real package step.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from params_helpers import from_params
from process_helpers import stop_group
from serving_payloads import counts_tubelet, display8_tubelet  # noqa: F401  (re-exported)

from thermops.camera.calibration import Agc, Calibration, Geometry, Radiometry, write_calibration
from thermops.io import write_json
from thermops.model.card import make_card, save_model_dir
from thermops.model.network import ModelConfig, TubeletClassifier
from thermops.model.preprocess import InputSpec
from thermops.serve.requests import PackageParams

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["person", "vehicle", "animal", "nuisance"]
SPEC = from_params(InputSpec, "input", frames=8, size=32)


def radiometric_calibration(camera_id: str = "cam-lin", version: str = "v1") -> Calibration:
    """A 14-bit linear radiometric camera with known geometry."""
    return Calibration(
        camera_id=camera_id,
        version=version,
        valid_from=dt.date(2026, 1, 1),
        geometry=Geometry(
            image_width=384,
            image_height=288,
            fx=600.0,
            fy=600.0,
            cx=192.0,
            cy=144.0,
            height_m=6.0,
            pitch_deg=12.0,
            min_range_m=10.0,
            max_range_m=200.0,
        ),
        radiometry=Radiometry(mode="linear", bit_depth=14, gain_counts_per_k=40.0, offset_counts=7000.0, netd_mk=50.0),
    )


def display8_calibration(camera_id: str = "cam-d8", version: str = "d1") -> Calibration:
    """An 8-bit AGC camera with unknown geometry."""
    return Calibration(
        camera_id=camera_id,
        version=version,
        valid_from=dt.date(2026, 1, 1),
        geometry=Geometry(known=False, image_width=320, image_height=240),
        radiometry=Radiometry(mode="display8", bit_depth=8),
        agc=Agc(mode="unknown"),
    )


def make_gated_model(
    root: Path, passed: bool = True, seed: int = 0, geometry: tuple[str, ...] = (), model: Any = None
) -> dict[str, Path]:
    """Write models/gated, metrics/gate.json and data/calibration under `root`.

    `geometry`: the input spec's geometry features (a classifier that takes window geometry);
    `model`: the classifier to save (default: an untrained tiny one of that spec)."""
    torch.manual_seed(seed)
    cfg = from_params(ModelConfig, "model", size="tiny", embed_dim=32)
    spec = from_params(InputSpec, "input", frames=8, size=32, geometry=tuple(geometry))
    if model is None:
        model = TubeletClassifier(cfg, len(CLASSES), geo_dim=len(spec.geometry))
    model = model.eval()
    cals = [radiometric_calibration(), display8_calibration()]
    cal_dir = root / "data" / "calibration"
    for c in cals:
        write_calibration(c, cal_dir)
    card = make_card(
        classes=CLASSES,
        model_cfg=cfg,
        input_spec=spec,
        calibrations={c.camera_id: c.version for c in cals},
        data={"hash": "0123456789abcdef" * 2, "n_train": 10},
        metrics={"val_macro_f1": 0.5},
        params={"prepare": {"radiometric": True}},
        units=["celsius", "display8"],
        gate={
            "passed": passed,
            "decision": "pass" if passed else "fail",
            "reasons": [] if passed else ["too weak"],
            "metrics": {"clean_macro_f1": 0.5},
        },
        envelope={"pitch_deg": [-3.0, 3.0], "gain_rel": [0.9, 1.1]},
    )
    model_dir = root / "models" / "gated"
    save_model_dir(model_dir, model, card)
    gate_json = root / "metrics" / "gate.json"
    write_json(gate_json, {"passed": passed, "clean_macro_f1": 0.5, **({} if passed else {"reasons": ["too weak"]})})
    return {"model": model_dir, "gate": gate_json, "calibration": cal_dir}


def small_package_params(**changes: Any) -> PackageParams:
    """Package params for tests: small limits (so oversize tests stay cheap), a relative state dir."""
    base = dict(
        model_name="thermops-test",
        bento_name="thermops-test",
        max_batch_size=16,
        max_frames=32,
        max_side=128,
        max_elements=200_000,
        max_upload_bytes=2_000_000,
        max_request_bytes=2_100_000,
        max_json_bytes=4_000_000,
        workers=1,
        max_concurrency=64,
        max_inflight_bytes=32_000_000,
        timeout_s=30,
        state_dir="serve-state",
        register_token_env="THERMOPS_TEST_REGISTER_TOKEN",
        max_registered_cameras=4,
    )
    return from_params(PackageParams, "package", **{**base, **changes})


REGISTER_TOKEN = "test-token-0123456789abcdef"


def bento_env(home: Path) -> dict[str, str]:
    """Environment for a BentoML subprocess with its own store."""
    env = dict(os.environ)
    env.update(
        BENTOML_HOME=str(home),
        BENTOML_DO_NOT_TRACK="true",
        PYTHONUNBUFFERED="1",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        THERMOPS_TEST_REGISTER_TOKEN=REGISTER_TOKEN,
    )
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`bentoml serve <bento>` on 127.0.0.1 as a subprocess; stopped by `stop()`."""

    def __init__(
        self, target: str, home: Path, cwd: Path, log: Path, extra: list[str] | None = None, env: dict | None = None
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._fh = open(log, "wb")
        cmd = [
            sys.executable,
            "-m",
            "bentoml",
            "serve",
            target,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *(extra or []),
        ]
        self.proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env={**bento_env(home), **(env or {})},
            stdout=self._fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 120.0) -> None:
        import requests

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bentoml serve exited with {self.proc.returncode}:\n{self.log.read_text()[-4000:]}")
            if b"Application startup failed" in self.log.read_bytes():
                raise RuntimeError(f"bentoml serve failed to start:\n{self.log.read_text()[-4000:]}")
            try:
                if requests.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"bentoml serve not ready after {timeout} s:\n{self.log.read_text()[-4000:]}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        stop_group(self.proc)
        self._fh.close()


def bento_args(home: Path, bento_tag: str) -> dict[str, Any]:
    """The arguments a built bento serves with (its bento.yaml)."""
    import yaml

    name, version = bento_tag.split(":")
    return yaml.safe_load((home / "bentos" / name / version / "bento.yaml").read_text())["args"]


def source_server(home: Path, bento_tag: str, log: Path, tree: Path = ROOT, **changes: Any) -> Server:
    """`bentoml serve service:ThermopsClassifier` from `tree` (this one by default; another, such as
    an older commit's, imports its own `thermops` first) with the bento's arguments plus `changes`
    (a served bento keeps its own arguments; `--arg` cannot change them)."""
    args = {**bento_args(home, bento_tag), **changes}
    extra = ["--working-dir", str(tree)] + [x for k, v in args.items() for x in ("--arg", f"{k}={v}")]
    env = None if tree == ROOT else {"PYTHONPATH": str(tree)}
    return Server("service:ThermopsClassifier", home, tree, log, extra=extra, env=env)


def worker_rss(server: Server) -> int:
    """Resident bytes of the server's worker processes (the children of `bentoml serve`)."""
    import psutil

    try:
        procs = psutil.Process(server.proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def in_process_scores(model_dir: Path, arr: np.ndarray, camera: Calibration) -> dict[str, float]:
    """The prediction the service must give, computed in-process with the shared functions."""
    from thermops.model.card import input_spec_from_card, load_model_dir, radiometric_units
    from thermops.serve.requests import model_input, softmax_scores

    model, card = load_model_dir(model_dir)
    x, _ = model_input(arr.astype(np.float64), camera, radiometric_units(card), input_spec_from_card(card))
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).numpy()
    return softmax_scores(logits, card["classes"])[0]


def package_in_subprocess(
    paths: dict[str, Path], home: Path, out: Path, params_yaml: Path, bentofile: str = "bentofile.yaml"
) -> subprocess.CompletedProcess:
    """Run the package CLI as dvc would, with its own BENTOML_HOME."""
    cmd = [
        sys.executable,
        "-m",
        "components.package",
        "--params",
        str(params_yaml),
        "--model",
        str(paths["model"]),
        "--gate",
        str(paths["gate"]),
        "--calibration",
        str(paths["calibration"]),
        "--bentofile",
        str(ROOT / bentofile),
        "--out",
        str(out),
    ]
    return subprocess.run(cmd, cwd=ROOT, env=bento_env(home), capture_output=True, text=True, timeout=180)


def write_params(path: Path, params: PackageParams) -> Path:
    """A params.yaml holding only what the package step reads."""
    import yaml

    path.write_text(yaml.safe_dump({"seed": 1, "package": params.to_dict()}, sort_keys=False))
    return path


def jsonable(arr: np.ndarray) -> Any:
    return arr.tolist()


_PACKAGED: dict[str, Any] = {}


def packaged_once(tmp_path_factory) -> tuple[dict[str, Path], Path, dict[str, str]]:
    """One real package run per test session, shared by the package and service tests.

    Returns (paths of the gated model project, BENTOML_HOME, content of bento.json).
    """
    if not _PACKAGED:
        from thermops.io import read_json

        root = tmp_path_factory.mktemp("packaged")
        paths = make_gated_model(root)
        paths["root"] = root
        home = root / "bentoml"
        out = root / "models" / "bento.json"
        proc = package_in_subprocess(paths, home, out, write_params(root / "params.yaml", small_package_params()))
        if proc.returncode != 0:
            raise RuntimeError(f"package step failed:\n{proc.stderr}")
        _PACKAGED.update(paths=paths, home=home, result=read_json(out))
    return _PACKAGED["paths"], _PACKAGED["home"], _PACKAGED["result"]


def schemathesis_run(url: str, tmp_path: Path, max_examples: int) -> dict[str, list[str]]:
    """schemathesis against a live server's OpenAPI document: zero 5xx and every status, content
    type and body as documented; returns {"POST /route": [failure tags]} of the operations it ran
    (asserting that the run itself passed)."""
    import xml.etree.ElementTree as ET

    st = Path(sys.executable).with_name("st")
    report = tmp_path / "junit.xml"
    cmd = [
        str(st),
        "run",
        url + "/docs.json",
        "--checks",
        "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        "--max-examples",
        str(max_examples),
        "--seed",
        "1",
        "-H",
        f"Authorization: Bearer {REGISTER_TOKEN}",  # so that /register_camera's body is fuzzed too
        # One worker: with two, hypothesis (inside schemathesis) describes its strategies' lambdas with
        # ast.parse in two threads at once, and CPython 3.11 (3.11.7 here) can then raise a spurious
        # "SystemError: AST constructor recursion depth mismatch" (as in python/cpython#106905; seen once in CI)
        "--workers",
        "1",
        "--phases",
        "examples,coverage,fuzzing",
        "--report",
        "junit",
        "--report-junit-path",
        str(report),
        "--suppress-health-check",
        "all",
        "--request-timeout",
        "60",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=bento_env(tmp_path / "unused"))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    cases = ET.parse(report).getroot().iter("testcase")
    return {c.get("name"): [e.tag for e in c if e.tag in ("failure", "error")] for c in cases}
