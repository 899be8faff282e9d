"""The Kubeflow pipeline generated from dvc.yaml, on a toy project (seconds).

Checks the compiled spec (not the SDK calls: kfp.local ignores resources, retries,
caching and secrets), a local end-to-end run through both gate branches, the data
hash as a pipeline argument and KFP's cache inputs, DVC/KFP parity on the toy
stages, and submission against a loopback stand-in of the KFP REST API.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kfp_standin import KfpStandIn  # noqa: E402
from pipeline_helpers import (  # noqa: E402
    directly_changed,
    git,
    kubeflow_section,
    load_spec,
    make_toy_repo,
    resolved_inputs,
    task_inputs,
    toy_params,
)

from pipeline.codegen import encode_param  # noqa: E402
from pipeline.graph import build_graph  # noqa: E402
from pipeline.pipeline import compile_pipeline  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOY_STAGES = ["gen@cam_a", "gen@cam_b", "prep", "train", "gate", "package"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    """The toy project, git and DVC initialized."""
    return make_toy_repo(tmp_path_factory.mktemp("toy") / "repo")


@pytest.fixture(scope="module")
def toy_spec(toy, tmp_path_factory):
    """(spec, platform spec) of the toy pipeline compiled with DVC data (fetch task)."""
    out = tmp_path_factory.mktemp("spec") / "pipeline.yaml"
    compile_pipeline(out, root=toy, data_source="dvc", data_hash="h" * 64, git_rev="c" * 40)
    return load_spec(out)


@pytest.fixture(scope="module")
def toy_spec_embedded(toy, tmp_path_factory):
    """(spec, platform spec) of the toy pipeline with the embedded generator stages."""
    out = tmp_path_factory.mktemp("spec") / "pipeline.yaml"
    compile_pipeline(out, root=toy)
    return load_spec(out)


def _executor(spec: dict, task_key: str) -> str:
    comp = task_inputs(spec)[task_key]["component"]
    return spec["components"][comp]["executorLabel"]


# --------------------------------------------------------------------- graph


def test_graph_resolves_foreach_edges_and_params(toy):
    g = build_graph(toy)
    assert [s.name for s in g.stages] == TOY_STAGES
    # `data/raw` dep of prep covers both foreach outs: two artifact edges
    assert sorted(u for u, _ in g.inputs["prep"]) == ["gen@cam_a", "gen@cam_b"]
    assert {u for u, _ in g.inputs["package"]} == {"train", "gate"}
    assert [s.name for s in g.source_stages()] == ["gen@cam_a", "gen@cam_b"]
    assert g.stage_leaves["prep"] == ["prep"] and g.stage_leaves["train"] == ["seed", "train.lr"]
    assert g.static_deps["gen@cam_a"] == ["step.py", "calib/cam_a.txt"]


def test_every_stage_of_dvc_yaml_is_a_task(toy_spec_embedded):
    spec, _ = toy_spec_embedded
    displays = {t["display"] for t in task_inputs(spec).values()}
    assert displays == {f"{s.replace('@', '_')}_task" for s in TOY_STAGES}
    # each component runs its stage's own command
    for key in task_inputs(spec):
        cmd = json.dumps(spec["deploymentSpec"]["executors"][_executor(spec, key)]["container"])
        assert "run_stage_task" in cmd and "step.py" in cmd


# --------------------------------------------------------------- compiled spec


def test_gpu_node_selector_tolerations_resources(toy_spec):
    spec, platform = toy_spec
    ex = spec["deploymentSpec"]["executors"]
    for key in ("train", "gate"):
        res = ex[_executor(spec, key)]["container"]["resources"]
        assert res["accelerator"]["resourceType"] == "nvidia.com/gpu"
        assert res["accelerator"]["resourceCount"] == "2"
        k8s = platform["deploymentSpec"]["executors"][_executor(spec, key)]
        assert k8s["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
        assert k8s["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert ex[_executor(spec, "train")]["container"]["resources"]["resourceCpuRequest"] == "4"
    for key in ("prep", "package", "fetch"):
        res = ex[_executor(spec, key)]["container"].get("resources", {})
        assert "accelerator" not in res and res["resourceMemoryRequest"] == "1Gi"
        assert "nodeSelector" not in platform["deploymentSpec"]["executors"].get(_executor(spec, key), {})


def test_secrets_retries_caching_and_image(toy_spec):
    spec, platform = toy_spec
    k8s = platform["deploymentSpec"]["executors"]
    fetch = k8s[_executor(spec, "fetch")]["secretAsEnv"][0]
    assert fetch["secretName"] == "toy-dvc-remote"
    assert {e["envVar"]: e["secretKey"] for e in fetch["keyToEnv"]} == {
        "AWS_ACCESS_KEY_ID": "access_key_id",
        "AWS_SECRET_ACCESS_KEY": "secret_access_key",
    }
    reg = k8s[_executor(spec, "package")]["secretAsEnv"][0]
    assert reg["secretName"] == "toy-registry"
    # credentials only as secret references in the platform spec, never in containers
    assert "AWS_SECRET_ACCESS_KEY" not in json.dumps(spec)
    for key in task_inputs(spec):
        assert (
            spec["deploymentSpec"]["executors"][_executor(spec, key)]["container"]["image"]
            == kubeflow_section()["image"]
        )
    tasks = dict(spec["root"]["dag"]["tasks"])
    for comp in spec["components"].values():
        tasks.update(comp.get("dag", {}).get("tasks", {}))
    executing = [t for t in tasks.values() if "condition" not in t["componentRef"]["name"]]
    assert len(executing) == 5  # fetch, prep, train, gate, package: fetch replaces the generators
    for t in executing:
        assert t["cachingOptions"] == {"enableCache": True}
        assert t["retryPolicy"]["maxRetryCount"] == 2


def test_gate_condition_guards_package_only(toy_spec):
    spec, _ = toy_spec
    cond = [t for t in spec["root"]["dag"]["tasks"].values() if "triggerPolicy" in t]
    assert len(cond) == 1
    assert cond[0]["triggerPolicy"]["condition"] == "inputs.parameter_values['pipelinechannel--gate-Output'] == true"
    inner = spec["components"][cond[0]["componentRef"]["name"]]["dag"]["tasks"]
    assert list(inner) == ["package"]
    gate_outputs = spec["components"][task_inputs(spec)["gate"]["component"]]["outputDefinitions"]
    assert gate_outputs["parameters"]["Output"]["parameterType"] == "BOOLEAN"


def test_typed_artifacts(toy_spec):
    spec, _ = toy_spec
    outs = lambda key: {  # noqa: E731
        n: a["artifactType"]["schemaTitle"]
        for n, a in spec["components"][task_inputs(spec)[key]["component"]]["outputDefinitions"]["artifacts"].items()
    }
    assert outs("train") == {
        "models_toy": "system.Model",
        "metrics_train_json": "system.Metrics",
        "metrics_confusion_json": "system.ClassificationMetrics",
    }
    assert outs("gate") == {
        "reports_gate": "system.Dataset",
        "reports_gate_html": "system.HTML",
        "reports_gate_md": "system.Markdown",
        "metrics_gate_json": "system.Metrics",
    }


def test_pipeline_parameters_mirror_params_yaml(toy_spec_embedded, toy):
    spec, _ = toy_spec_embedded
    params = yaml.safe_load((toy / "params.yaml").read_text())
    defs = {k: v.get("defaultValue") for k, v in spec["root"]["inputDefinitions"]["parameters"].items()}
    assert yaml.safe_load(defs["prep"]) == params["prep"]  # mappings travel as YAML text
    assert defs["train__lr"] == params["train"]["lr"]
    assert defs["gen__n"] == params["gen"]["n"] and defs["seed"] == params["seed"]
    assert len(defs["data_hash"]) == 64 and defs["git_rev"] == git(toy, "rev-parse", "HEAD")
    assert "train__epochs" not in defs  # no stage reads it


# ------------------------------------------------------------ data hash, cache


def test_data_hash_reaches_first_tasks_only_and_flows_by_artifacts(toy_spec_embedded):
    spec, _ = toy_spec_embedded
    tasks = task_inputs(spec)
    readers = {k for k, t in tasks.items() if ("param", "data_hash") in t["params"].values()}
    assert readers == {"gen-cam-a", "gen-cam-b"}
    # every other task reaches a data-hash reader through artifact edges
    reach = set(readers)
    changed = True
    while changed:
        changed = False
        for k, t in tasks.items():
            if k not in reach and set(t["artifacts"].values()) & reach:
                reach.add(k)
                changed = True
    assert reach == set(tasks)


def test_same_arguments_same_inputs_changed_hash_different(toy_spec_embedded):
    spec, _ = toy_spec_embedded
    a = resolved_inputs(spec, {"data_hash": "a" * 64})
    assert a == resolved_inputs(spec, {"data_hash": "a" * 64})
    b = resolved_inputs(spec, {"data_hash": "b" * 64})
    assert all(a[k] != b[k] for k in a)  # every task: the hash reaches it through its inputs
    c = resolved_inputs(spec, {"data_hash": "a" * 64, "gate__min_accuracy": 0.5})
    assert {k for k in a if a[k] != c[k]} == {"gate", "package"}


def test_embedded_data_hash_follows_generator_inputs(toy):
    from pipeline.datahash import resolve

    params = toy_params()
    base = resolve(toy, params).data_hash
    assert resolve(toy, params).data_hash == base
    other = json.loads(json.dumps(params))
    other["train"]["lr"] = 0.5  # not read by the generator
    assert resolve(toy, other).data_hash == base
    other["gen"]["n"] = 6
    assert resolve(toy, other).data_hash != base
    calib = toy / "calib" / "cam_a.txt"
    old = calib.read_text()
    try:
        calib.write_text("calibration cam_a v2\n")
        assert resolve(toy, params).data_hash != base
    finally:
        calib.write_text(old)


def test_dvc_data_revision_resolves_branch_to_commit(tmp_path):
    from pipeline.datahash import DataRevisionError, resolve

    repo = make_toy_repo(tmp_path / "repo")
    params = toy_params()
    with pytest.raises(DataRevisionError, match="no dvc.lock"):
        resolve(repo, params, data_source="dvc")
    lock = {
        "schema": "2.0",
        "stages": {
            "gen@cam_a": {"cmd": "x", "outs": [{"path": "data/raw/cam_a", "hash": "md5", "md5": "1" * 32 + ".dir"}]},
            "gen@cam_b": {"cmd": "x", "outs": [{"path": "data/raw/cam_b", "hash": "md5", "md5": "2" * 32 + ".dir"}]},
        },
    }
    (repo / "dvc.lock").write_text(yaml.safe_dump(lock))
    git(repo, "add", "dvc.lock")
    git(repo, "commit", "-q", "-m", "lock")
    first = git(repo, "rev-parse", "HEAD")
    git(repo, "branch", "data-v1")
    r1 = resolve(repo, params, data_source="dvc", rev="data-v1")
    assert r1.git_rev == first and r1.git_rev != "data-v1"  # the branch name is never passed on
    lock["stages"]["gen@cam_b"]["outs"][0]["md5"] = "3" * 32 + ".dir"
    (repo / "dvc.lock").write_text(yaml.safe_dump(lock))
    git(repo, "commit", "-q", "-am", "new data")
    r2 = resolve(repo, params, data_source="dvc")
    assert r2.data_hash != r1.data_hash and r2.git_rev != r1.git_rev
    assert resolve(repo, params, data_source="dvc", rev=first).data_hash == r1.data_hash
    with pytest.raises(DataRevisionError):
        resolve(repo, params, data_source="dvc", rev="no-such-branch")


# --------------------------------------------------- local run, both branches


def _local_run(repo: Path, root: Path, **arguments) -> Path:
    """Run the toy pipeline with kfp.local; return its run folder under `root`."""
    from kfp import local

    from pipeline.pipeline import build_pipeline

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    build_pipeline(root=repo, project_root=str(repo))(**arguments)
    (run,) = [p for p in root.iterdir() if p.is_dir()]
    return run


def _meta(run: Path, task: str, artifact: str) -> dict:
    out = json.loads((run / task / "executor_output.json").read_text())
    return out["artifacts"][artifact]["artifacts"][0]["metadata"]


def test_local_run_gate_passes_then_package_runs(toy, tmp_path):
    run = _local_run(toy, tmp_path / "kfp")
    bento = json.loads((run / "package" / "models_bento_json").read_text())
    assert bento["model"]["lr"] == 0.1
    gate_out = json.loads((run / "gate" / "executor_output.json").read_text())
    assert gate_out["parameterValues"]["Output"] is True
    # provenance: the data hash given to the generators reaches the package's artifact
    gen = _meta(run, "gen-cam-a", "data_raw_cam_a")
    assert len(gen["data_hash"]) == 64 and gen["git_rev"] == git(toy, "rev-parse", "HEAD")
    assert _meta(run, "package", "models_bento_json")["data_hash"] == gen["data_hash"]
    m = _meta(run, "train", "metrics_train_json")
    assert set(m) >= {"accuracy", "loss", "params_hash"}
    cm = _meta(run, "train", "metrics_confusion_json")["confusionMatrix"]
    assert [a["displayName"] for a in cm["annotationSpecs"]] == ["a", "b"] and cm["rows"][0]["row"] == [3, 1]
    html = (run / "gate" / "reports_gate_html").read_text()
    assert "<html>" in html and "passed: True" in html
    assert "passed: True" in (run / "gate" / "reports_gate_md").read_text()


def test_local_run_gate_fails_then_no_package(toy, tmp_path):
    run = _local_run(toy, tmp_path / "kfp", gate__min_accuracy=2.0)
    gate_out = json.loads((run / "gate" / "executor_output.json").read_text())
    assert gate_out["parameterValues"]["Output"] is False
    assert (run / "train" / "models_toy" / "model.json").is_file()
    assert not (run / "package").exists()


# ------------------------------------------------------------ DVC/KFP parity


def _tree_hash(path: Path) -> str:
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else "").encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def test_parity_dvc_repro_and_local_kfp(tmp_path):
    repo = make_toy_repo(tmp_path / "repo")
    subprocess.run([sys.executable, "-m", "dvc", "repro", "-q"], cwd=repo, check=True, capture_output=True)
    run = _local_run(repo, tmp_path / "kfp")
    g = build_graph(repo)
    task_dirs = {s.name: s.ident.replace("_", "-") for s in g.stages}
    for s in g.stages:
        for o in s.outs:
            assert _tree_hash(repo / o.path) == _tree_hash(run / task_dirs[s.name] / o.ident), o.path
    # a deliberate change of one key: DVC re-runs the stages whose inputs KFP says changed
    spec, _ = load_spec(compile_pipeline(tmp_path / "p.yaml", root=repo))
    for key, pname, value in (
        ("prep.scale", "prep", {"scale": 3.0, "offset": 0}),
        ("train.lr", "train__lr", 0.3),
        ("gen.n", "gen__n", 4),
    ):
        params = yaml.safe_load((repo / "params.yaml").read_text())
        old = json.loads(json.dumps(params))
        section, leaf = key.split(".")
        params[section][leaf] = value[leaf] if isinstance(value, dict) else value
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        try:
            status = subprocess.run(
                [sys.executable, "-m", "dvc", "status", "--json"], cwd=repo, check=True, capture_output=True, text=True
            ).stdout
            dvc_changed = set(json.loads(status))
        finally:
            (repo / "params.yaml").write_text(yaml.safe_dump(old, sort_keys=False))
        changed = directly_changed(spec, {}, {pname: encode_param(value)})
        kfp_changed = {task_inputs(spec)[k]["display"] for k in changed}
        assert kfp_changed == {f"{s.replace('@', '_')}_task" for s in dvc_changed}, key
        assert dvc_changed  # the change is seen at all


# ------------------------------------------------------------------ submit


def test_submit_to_standin_sends_spec_parameters_experiment(toy):
    from pipeline.submit import submit_run

    with KfpStandIn() as server:
        run_id, url = submit_run(
            server.url, {"prep.scale": 3, "train.lr": 0.2}, experiment="nightly", token="t0ken", root=toy
        )
        (exp,) = server.posted("/apis/v2beta1/experiments")
        (run,) = server.posted("/apis/v2beta1/runs")
    assert exp.body["display_name"] == "nightly"
    assert server.experiments[run.body["experiment_id"]]["display_name"] == "nightly"  # the run is filed there
    spec = run.body["pipeline_spec"]["pipeline_spec"]
    assert {t["display"] for t in task_inputs(spec).values()} >= {"prep_task", "gate_task", "package_task"}
    assert "platform_spec" in run.body["pipeline_spec"]
    args = run.body["runtime_config"]["parameters"]
    assert yaml.safe_load(args["prep"]) == {"scale": 3.0, "offset": 0} and args["train__lr"] == 0.2
    assert len(args["data_hash"]) == 64 and args["git_rev"] == git(toy, "rev-parse", "HEAD")
    assert {k.lower(): v for k, v in run.headers.items()}["authorization"] == "Bearer t0ken"
    assert url.endswith(f"/#/runs/details/{run_id}") and run_id in server.runs


def _cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, capture_output=True, text=True)


def test_cli_server_error_is_one_clear_line(toy):
    with KfpStandIn(fail_runs_with=500) as server:
        proc = _cli("--root", str(toy), "submit", "--host", server.url, "-p", "train.lr=0.2")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "500" in err[0] and "stand-in refused the run" in err[0]


def test_cli_submit_prints_id_and_url_and_dry_run_sends_nothing(toy):
    with KfpStandIn() as server:
        proc = _cli("--root", str(toy), "submit", "--host", server.url, "--experiment", "e1")
        assert proc.returncode == 0, proc.stderr
        (run_id,) = server.runs
        assert f"run id: {run_id}" in proc.stdout and f"/#/runs/details/{run_id}" in proc.stdout
        n = len(server.requests)
        dry = _cli("--root", str(toy), "submit", "--host", server.url, "--dry-run", "-p", "gate.min_accuracy=0.9")
        assert dry.returncode == 0, dry.stderr
        assert len(server.requests) == n
    shown = json.loads(dry.stdout[: dry.stdout.rindex("}") + 1])
    assert shown["arguments"]["gate__min_accuracy"] == 0.9 and shown["experiment"] == "toy"


def test_cli_bad_override_and_unreachable_server(toy):
    bad = _cli("--root", str(toy), "submit", "--host", "http://127.0.0.1:9", "-p", "nope.x=1")
    assert bad.returncode == 1 and bad.stderr.strip().startswith("error: override nope.x")
    shape = _cli("--root", str(toy), "submit", "--host", "http://127.0.0.1:9", "-p", "gen.cams=[cam_a]")
    assert shape.returncode == 1 and "recompile" in shape.stderr
    down = _cli("--root", str(toy), "submit", "--host", "http://127.0.0.1:9")
    assert down.returncode == 1 and "unreachable" in down.stderr and "Traceback" not in down.stderr


def test_cli_compile_writes_yaml(toy, tmp_path):
    out = tmp_path / "p.yaml"
    proc = _cli("--root", str(toy), "compile", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    spec, _ = load_spec(out)
    assert spec["pipelineInfo"]["name"] == "toy"
