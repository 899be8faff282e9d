"""The bento's build files and the service's settings from params: the CPU-only bentofile,
GPU resources, threads, access logging.

The CPU variant cannot be containerized here (no route to PyTorch's index): what is
checked is what the package step builds from it, which is what `bentoml containerize`
or scripts/image/bento_image.sh would install from.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from tests.serving_helpers import (
    ROOT,
    bento_env,
    make_gated_model,
    package_in_subprocess,
    small_package_params,
    write_params,
)

CPU_ONLY = {("python", "extra_index_url"), ("envs", "UV_INDEX_STRATEGY")}


def _load(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def test_the_cpu_bentofile_is_the_bentofile_plus_the_cpu_index():
    main, cpu = _load("bentofile.yaml"), _load("bentofile.cpu.yaml")
    assert cpu["python"]["extra_index_url"] == ["https://download.pytorch.org/whl/cpu"]
    assert {"name": "UV_INDEX_STRATEGY", "value": "unsafe-best-match"} in cpu["envs"]
    cpu["python"].pop("extra_index_url")
    cpu["envs"] = [e for e in cpu["envs"] if e["name"] != "UV_INDEX_STRATEGY"]
    assert cpu == main  # include list, pins, service: all the same


def test_a_bento_from_the_cpu_bentofile_installs_torch_from_the_cpu_index(tmp_path):
    paths = make_gated_model(tmp_path)
    home = tmp_path / "bentoml"
    proc = package_in_subprocess(
        paths,
        home,
        tmp_path / "bento.json",
        write_params(tmp_path / "params.yaml", small_package_params()),
        "bentofile.cpu.yaml",
    )
    assert proc.returncode == 0, proc.stderr
    name, version = json.loads((tmp_path / "bento.json").read_text())["bento_tag"].split(":")
    bento = home / "bentos" / name / version
    reqs = (bento / "env" / "python" / "requirements.txt").read_text().splitlines()
    assert reqs[0] == "--extra-index-url https://download.pytorch.org/whl/cpu" and "torch==2.14.1" in reqs
    docker = (bento / "env" / "docker" / "Dockerfile").read_text()
    assert "ENV UV_INDEX_STRATEGY" in docker
    assert docker.index("ENV UV_INDEX_STRATEGY") < docker.index("pip install -r")


def _service_config(tmp_home, **changes) -> dict:
    """service.py's BentoML config for the given package params, imported in a fresh process."""
    params = small_package_params(**changes).to_dict()
    args = {"model_tag": "thermops-test:0", "input_frames": 8, "input_size": 32, **params}
    code = (
        "import json; from bentoml._internal.utils.args import set_arguments; "
        f"set_arguments({args!r}); import service; print(json.dumps(service.ThermopsClassifier.config))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=bento_env(tmp_home),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("gpus", [0, 1])
def test_resources_workers_and_logging_come_from_params(tmp_path, gpus):
    config = _service_config(tmp_path, gpus=gpus, workers=3, access_log=gpus == 1)
    assert config.get("resources") == ({"gpu": 1} if gpus else None)
    assert config["workers"] == 3
    assert config["logging"]["access"]["enabled"] is (gpus == 1)
    # the gateway answers capacity; BentoML's own limit (a 429 in another shape) stays off
    assert "max_concurrency" not in config["traffic"]
