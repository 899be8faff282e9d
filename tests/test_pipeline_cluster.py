"""What a cluster run needs and leaves behind: pinned image, object store, registry, production
registry as an argument, export and serving-image tasks, submit --wait/caching, secrets.

Compiled specs are checked (kfp.local ignores images, secrets and caching); submission runs
against the loopback KFP REST stand-in (tests/kfp_standin.py, not a KFP server); the git
token test runs a real `git clone` against a local HTTP server that demands credentials.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kfp_standin import KfpStandIn  # noqa: E402
from pipeline_helpers import copy_repo, load_spec, make_toy_repo, task_inputs  # noqa: E402

from pipeline.pipeline import ClusterConfigError, check_pinned  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PINNED = "registry.example.org/thermops@sha256:" + "ab" * 32
BUILDER = "quay.io/buildah/stable@sha256:" + "cd" * 32


def _cli(*args: str, cwd: Path = ROOT, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_only_a_digest_or_a_content_tag_is_pinned():
    for good in (PINNED, "localhost:5000/thermops:0123456789ab", "ghcr.io/x/thermops:" + "f" * 40):
        assert check_pinned(good) == good
    for bad, needle in (
        ("", "is not set"),
        ("ghcr.io/thermops/thermops:latest", "is not pinned"),
        ("ghcr.io/thermops/thermops", "is not pinned"),
        ("localhost:5000/thermops", "is not pinned"),
        ("ghcr.io/thermops/thermops:v1.2", "is not pinned"),
        ("ghcr.io/thermops/thermops:0123456789ab-dirty", "is not pinned"),
        ("ghcr.io/thermops/thermops@sha256:abc", "is not pinned"),
    ):
        with pytest.raises(ClusterConfigError, match=needle):
            check_pinned(bad)


@pytest.fixture(scope="module")
def cluster_repo(tmp_path_factory):
    """A copy of the project configured for a cluster: S3 store, registry, pinned builder."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["production"]["store"] = "s3://thermops-models/prod"
    params["kubeflow"]["serving_image"] = {"registry": "registry.example.org/thermops", "builder": BUILDER}
    return copy_repo(ROOT, tmp_path_factory.mktemp("cluster") / "repo", params)


def test_compiling_for_a_cluster_refuses_what_a_cluster_cannot_use(tmp_path, cluster_repo):
    out = str(tmp_path / "p.yaml")
    proc = _cli("compile", "--out", out)  # the project as shipped: kubeflow.image unset
    assert proc.returncode == 1 and proc.stderr.startswith("error: kubeflow.image is not set"), proc.stderr
    proc = _cli("compile", "--out", out, "--image", "ghcr.io/thermops/thermops:latest")
    assert proc.returncode == 1 and "is not pinned" in proc.stderr and "latest" in proc.stderr
    proc = _cli("compile", "--out", out, "--image", PINNED)  # pinned, but the store is a local folder
    assert proc.returncode == 1 and "production.store is '.dvc-storage/production'" in proc.stderr, proc.stderr
    params = yaml.safe_load((cluster_repo / "params.yaml").read_text())
    params["kubeflow"]["serving_image"]["registry"] = ""
    broken = copy_repo(cluster_repo, tmp_path / "no-registry", params)
    proc = _cli("--root", str(broken), "compile", "--out", out, "--image", PINNED)
    assert proc.returncode == 1 and "serving_image.registry is not set" in proc.stderr, proc.stderr
    assert not Path(out).exists()
    # kfp.local and in-image tests only
    proc = _cli("compile", "--out", out, "--local")
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def cluster_spec(cluster_repo, tmp_path_factory):
    out = tmp_path_factory.mktemp("spec") / "pipeline.yaml"
    proc = _cli("--root", str(cluster_repo), "compile", "--out", str(out), "--image", PINNED)
    assert proc.returncode == 0, proc.stderr
    return load_spec(out)


def _all_tasks(spec: dict) -> dict:
    tasks = dict(spec["root"]["dag"]["tasks"])
    for comp in spec["components"].values():
        tasks.update(comp.get("dag", {}).get("tasks", {}))
    return tasks


def _executor(spec: dict, task: dict) -> str:
    return spec["components"][task["componentRef"]["name"]]["executorLabel"]


def test_a_compiled_run_is_pinned_and_its_artifacts_leave_the_cluster(cluster_spec, cluster_repo):
    spec, platform = cluster_spec
    tasks = _all_tasks(spec)
    ex = spec["deploymentSpec"]["executors"]
    stage_tasks = {k: t for k, t in tasks.items() if not k.startswith("condition") and k != "serving-image"}
    images = {ex[_executor(spec, t)]["container"]["image"] for t in stage_tasks.values()}
    assert images == {PINNED}
    # the serving image: built after the export, inside the gate's condition, by the pinned builder
    (img_key,) = [k for k in tasks if k.startswith("serving-image")]
    img = tasks[img_key]
    assert img["taskInfo"]["name"] == "serving_image_task"
    assert img["inputs"]["artifacts"]["bento_archive"]["taskOutputArtifact"]["producerTask"] == "package"
    container = ex[_executor(spec, img)]["container"]
    assert container["image"] == BUILDER
    assert "registry.example.org/thermops" in container["args"] and "buildah" in container["command"][2]
    k8s = platform["deploymentSpec"]["executors"]
    assert k8s[_executor(spec, img)]["secretAsEnv"][0]["secretName"] == "thermops-registry"
    # the package task exports to the store: it gets the store and its credentials (by secret name only)
    pkg = tasks["package"]
    assert pkg["inputs"]["parameters"]["production__store"]["componentInputParameter"].endswith("production__store")
    assert spec["root"]["inputDefinitions"]["parameters"]["production__store"]["defaultValue"] == (
        "s3://thermops-models/prod"
    )
    assert k8s[_executor(spec, pkg)]["secretAsEnv"][0]["secretName"] == "thermops-store"
    assert "bento_archive" in spec["components"][pkg["componentRef"]["name"]]["outputDefinitions"]["artifacts"]
    assert "secret_access_key" not in json.dumps(spec)


def test_the_production_registry_travels_as_an_argument_of_the_baseline_task_only(cluster_spec, cluster_repo):
    spec, _ = cluster_spec
    params = spec["root"]["inputDefinitions"]["parameters"]
    from pipeline.task import decode_file

    registry_bytes = (cluster_repo / "deploy" / "production.json").read_bytes()
    assert decode_file(params["file__deploy_production_json"]["defaultValue"]) == registry_bytes
    readers = [k for k, t in task_inputs(spec).items() if "file__deploy_production_json" in t["params"]]
    assert readers == ["baseline"]
    assert task_inputs(spec)["gate"]["artifacts"]["models_baseline"] == "baseline"


def test_a_promotion_changes_the_baseline_argument_not_the_data_hash(cluster_repo):
    from pipeline import datahash
    from pipeline.graph import build_graph
    from thermops.config import load_params

    params = load_params(cluster_repo / "params.yaml")
    graph = build_graph(cluster_repo, params)
    before = datahash.embedded_hash(graph, params)
    assert "baseline" not in {s.name for s in datahash.data_stages(graph, params)}
    reg = cluster_repo / "deploy" / "production.json"
    saved = reg.read_text()
    try:
        reg.write_text(saved.replace('"current": null', '"current": null ') + " ")
        assert datahash.embedded_hash(graph, params) == before
    finally:
        reg.write_text(saved)


# ------------------------------------------------------------------------------ submit


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return make_toy_repo(tmp_path_factory.mktemp("toy") / "repo")


@pytest.mark.parametrize(
    ("states", "code", "final"),
    [
        (["PENDING", "RUNNING", "RUNNING", "SUCCEEDED"], 0, "SUCCEEDED"),
        (["RUNNING", "FAILED"], 3, "FAILED"),
        (["RUNNING", "CANCELED"], 4, "CANCELED"),
    ],
)
def test_submit_wait_follows_the_run_and_exits_with_its_state(toy, states, code, final):
    with KfpStandIn(run_states=states) as kfp:
        proc = _cli("--root", str(toy), "submit", "--host", kfp.url, "--wait", "--poll", "0.05", timeout=240)
        assert proc.returncode == code, (proc.stdout, proc.stderr)
        lines = proc.stdout.splitlines()
        run_id = next(ln for ln in lines if ln.startswith("run id: ")).removeprefix("run id: ")
        assert f"url: {kfp.url}/#/runs/details/{run_id}" in lines
        seen = [ln.split(": ", 1)[1] for ln in lines if ln.startswith(f"run {run_id}: ")]
        assert seen[: len(dict.fromkeys(states))] == list(dict.fromkeys(states))  # every change, in order
        assert lines[-1] == f"run {run_id} finished: {final}"
        if final == "FAILED":
            assert "stand-in: task gate_task failed" in proc.stdout


def test_submit_wait_gives_up_after_its_timeout(toy):
    with KfpStandIn(run_states=["RUNNING"]) as kfp:
        proc = _cli("--root", str(toy), "submit", "--host", kfp.url, "--wait", "--poll", "0.05", "--timeout", "1")
    assert proc.returncode == 5 and "RUNNING" in proc.stdout, proc.stdout


@pytest.mark.parametrize("switch", ["--no-caching", "--caching"])
def test_the_run_wide_caching_switch_reaches_every_task(toy, switch):
    with KfpStandIn() as kfp:
        proc = _cli("--root", str(toy), "submit", "--host", kfp.url, switch)
        assert proc.returncode == 0, proc.stderr
        (run,) = kfp.posted("/apis/v2beta1/runs")
    spec = run.body["pipeline_spec"]
    spec = spec.get("pipeline_spec", spec)  # with a platform spec the body nests both
    tasks = dict(spec["root"]["dag"]["tasks"])
    for comp in spec["components"].values():
        tasks.update(comp.get("dag", {}).get("tasks", {}))
    executing = [t for t in tasks.values() if "condition" not in t["componentRef"]["name"]]
    assert len(executing) == 6  # the two generators, prep, train, gate and package (inside the condition)
    flags = {t.get("cachingOptions", {}).get("enableCache", False) for t in executing}
    assert flags == {switch == "--caching"}


def test_submit_refuses_an_unpinned_image_before_sending(toy):
    with KfpStandIn() as kfp:
        proc = _cli("--root", str(toy), "submit", "--host", kfp.url, "--image", "ghcr.io/x/thermops:latest")
        assert proc.returncode == 1 and "is not pinned" in proc.stderr
        assert kfp.posted("/apis/v2beta1/runs") == []


# ------------------------------------------------------------------------------ secrets

FAKE_TOKEN = "ghp_FAKEfakeFAKEfake0123456789thermops"


class _AuthServer:
    """A local HTTP server that demands Basic credentials for everything and records what it got."""

    def __init__(self) -> None:
        seen = self.seen = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                seen.append((self.path, self.headers.get("Authorization")))
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="thermops-test"')
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/thermops.git"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_the_git_token_goes_through_askpass_and_never_into_a_url_or_a_log(monkeypatch, capfd):
    from pipeline.task import run_fetch_task

    server = _AuthServer()
    monkeypatch.setenv("GIT_TOKEN", FAKE_TOKEN)
    spec = json.dumps({"stages": ["gen@cam_a"], "outputs": [], "project_root": str(ROOT)})
    try:
        with pytest.raises(RuntimeError) as err:
            run_fetch_task(spec, {"git_rev": "0" * 40, "data_repo": server.url, "dvc_remote": "", "data_hash": "h"})
    finally:
        server.close()
    printed = capfd.readouterr()
    assert "git clone" in str(err.value) and server.url in str(err.value)  # the URL as given: no credentials in it
    for text in (str(err.value), printed.out, printed.err):
        assert FAKE_TOKEN not in text
    # git got the token from the askpass helper and sent it as Basic credentials
    sent = [a for _, a in server.seen if a]
    assert sent and base64.b64decode(sent[-1].split()[1]).decode() == f"x-access-token:{FAKE_TOKEN}"
    assert os.environ["GIT_TOKEN"] == FAKE_TOKEN  # the task's own environment is left as it was


def test_redact_hides_every_secret_value():
    from pipeline.task import _secret_values, redact

    env = {
        "GIT_TOKEN": FAKE_TOKEN,
        "AWS_SECRET_ACCESS_KEY": "s3cr3tvalue",
        "HOME": "/root",
        "REGISTRY_PASSWORD": "pw12",
    }
    text = f"fatal: https://x:{FAKE_TOKEN}@h/r.git s3cr3tvalue pw12 /root"
    assert redact(text, _secret_values(env)) == "fatal: https://x:***@h/r.git *** *** /root"
