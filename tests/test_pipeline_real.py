"""The pipeline generated from the project's real dvc.yaml: spec, end-to-end run, parity.

- compiled spec of the real graph: every stage a task, GPU settings on pretrain,
  finetune and gate, node selector and tolerations, secrets, the gate condition;
- `dvc repro` in a temp copy of the repository and a `kfp.local` run of the same
  tiny params (one camera, two clips, one epoch; OMP_NUM_THREADS=1 in both) give
  identical data outputs and models, and metrics equal within METRIC_TOL;
- a change of one params key re-runs the same stages under `dvc status` as the
  pipeline's task inputs say would change under KFP;
- the real gate, enforcing and failing, makes `dsl.If` skip the packaging.

Slow by nature (real training and gate twice); timings in docs/kubeflow.md.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline_helpers import LOOSE_GATE, TINY_OVERRIDES, copy_repo, directly_changed, load_spec, task_inputs  # noqa: E402

from pipeline.codegen import decode_param, encode_param, is_encoded  # noqa: E402
from pipeline.graph import build_graph, get_key, param_ident, set_key  # noqa: E402
from pipeline.pipeline import build_pipeline, compile_pipeline  # noqa: E402
from thermops.config import merge_params as merge  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STEPS = {"synthesize", "ingest", "prepare", "validate", "pretrain", "finetune", "gate", "package"}
# Same seeds, one thread, same code: results are bit-identical in practice; the stated
# tolerance covers float formatting only. Timing fields are not results.
METRIC_TOL = 1e-6
GATE_PASS = LOOSE_GATE  # a one-epoch model on 45 tubelets is no good model


def _task(name: str) -> str:
    return name.replace("@", "-").replace("_", "-")


# ------------------------------------------------------------ real graph, spec


PINNED = "registry.example.org/thermops@sha256:" + "ab" * 32


def cluster_params() -> dict:
    """params.yaml as a cluster run needs it: an S3 store and a registry for the serving image."""
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["production"]["store"] = "s3://thermops-models/prod"
    p["kubeflow"]["serving_image"] = {"registry": "registry.example.org/thermops", "builder": PINNED}
    return p


@pytest.fixture(scope="module")
def real_spec(tmp_path_factory):
    """Compiled specs of the project's own dvc.yaml: embedded data, and DVC data (fetch task)."""
    out = tmp_path_factory.mktemp("real") / "pipeline.yaml"
    kw = {"root": ROOT, "params": cluster_params(), "image": PINNED, "data_hash": "0" * 64, "git_rev": "1" * 40}
    emb, _ = load_spec(compile_pipeline(out.with_name("emb.yaml"), **kw))
    dvc = load_spec(compile_pipeline(out.with_name("dvc.yaml"), data_source="dvc", **kw))
    return emb, dvc


def test_real_graph_every_stage_is_a_task(real_spec):
    emb, _ = real_spec
    graph = build_graph(ROOT)
    assert {s.step for s in graph.stages} >= STEPS, "dvc.yaml lacks stages the pipeline needs"
    displays = {t["display"] for t in task_inputs(emb).values()}
    assert displays == {s.task_name for s in graph.stages} | {"serving_image_task"}
    params = cluster_params()
    defs = emb["root"]["inputDefinitions"]["parameters"]
    for leaf in graph.leaves:  # defaults mirror params.yaml, exactly (types included)
        value = get_key(params, leaf)
        assert decode_param(defs[param_ident(leaf)]["defaultValue"], is_encoded(value)) == value, leaf


def test_real_spec_gpu_secrets_condition_artifacts(real_spec):
    _, (spec, platform) = real_spec
    kf = yaml.safe_load((ROOT / "params.yaml").read_text())["kubeflow"]
    tasks = task_inputs(spec)
    by_display = {t["display"]: k for k, t in tasks.items()}
    ex = spec["deploymentSpec"]["executors"]
    k8s = platform["deploymentSpec"]["executors"]
    for step in ("pretrain", "finetune", "gate"):
        label = spec["components"][tasks[by_display[f"{step}_task"]]["component"]]["executorLabel"]
        acc = ex[label]["container"]["resources"]["accelerator"]
        assert acc["resourceType"] == kf["gpu"]["accelerator"] and acc["resourceCount"] == str(
            kf["gpu"]["gpus_per_node"]
        )
        assert k8s[label]["nodeSelector"]["labels"] == kf["gpu"]["node_selector"]
        assert k8s[label]["tolerations"] == kf["gpu"]["tolerations"]
    for step in ("prepare", "validate", "package", "fetch"):
        label = spec["components"][tasks[by_display[f"{step}_task"]]["component"]]["executorLabel"]
        assert "accelerator" not in ex[label]["container"].get("resources", {})
    secret_of = lambda step: [  # noqa: E731
        s["secretName"]
        for s in k8s[spec["components"][tasks[by_display[f"{step}_task"]]["component"]]["executorLabel"]].get(
            "secretAsEnv", []
        )
    ]
    assert secret_of("fetch") == [kf["secrets"]["dvc_remote"]["secret"]]
    assert secret_of("package") == [kf["secrets"]["store"]["secret"]]
    assert secret_of("serving_image") == [kf["secrets"]["registry"]["secret"]]
    cond = [t for t in spec["root"]["dag"]["tasks"].values() if "triggerPolicy" in t]
    assert len(cond) == 1 and cond[0]["triggerPolicy"]["condition"].endswith("['pipelinechannel--gate-Output'] == true")
    assert list(spec["components"][cond[0]["componentRef"]["name"]]["dag"]["tasks"]) == ["package", "serving-image"]
    out_types = lambda step: {  # noqa: E731
        n: a["artifactType"]["schemaTitle"]
        for n, a in spec["components"][tasks[by_display[f"{step}_task"]]["component"]]["outputDefinitions"][
            "artifacts"
        ].items()
    }
    assert out_types("finetune")["metrics_confusion_csv"] == "system.ClassificationMetrics"
    assert out_types("finetune")["models_finetuned"] == "system.Model"
    assert out_types("finetune")["metrics_finetune_json"] == "system.Metrics"
    assert out_types("validate")["reports_validation_html"] == "system.HTML"
    assert out_types("gate")["reports_gate_md"] == "system.Markdown"


# ------------------------------------------------- the two engines, tiny params


@pytest.fixture(scope="module")
def tiny_params() -> dict:
    """params.yaml shrunk (one camera, 2 clips, 1 epoch, small gate subsets) with a loose gate."""
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    p = merge(merge(base, TINY_OVERRIDES), GATE_PASS)
    p["cameras"] = p["cameras"][:1]
    return p


@pytest.fixture(scope="module")
def engines(tiny_params, tmp_path_factory):
    """(repo copy after `dvc repro`, kfp.local run folder, timings), same params and threads."""
    from kfp import local

    tmp = tmp_path_factory.mktemp("parity")
    tiny_params = {**tiny_params, "production": {"store": str(tmp / "store")}}  # where the package task exports
    repo = copy_repo(ROOT, tmp / "repo", tiny_params)
    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "PATH")}
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    try:
        t0 = time.time()
        proc = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=repo, capture_output=True, text=True)
        assert proc.returncode == 0, f"dvc repro failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        t1 = time.time()
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp / "kfp"), raise_on_error=True)
        build_pipeline(root=repo, project_root=str(repo), local=True)()
        t2 = time.time()
    finally:
        for k, v in saved.items():
            if v is not None:
                os.environ[k] = v
    (run,) = [p for p in (tmp / "kfp").iterdir() if p.is_dir()]
    timings = {"dvc_repro_s": round(t1 - t0, 1), "kfp_local_s": round(t2 - t1, 1)}
    print(f"parity timings: {timings}")
    return repo, run, timings


def _files_hash(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]:
        h.update((str(f.relative_to(path)) if path.is_dir() else "").encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def _numbers(obj, prefix=""):
    if isinstance(obj, bool):
        yield prefix, float(obj)
    elif isinstance(obj, (int, float)):
        yield prefix, float(obj)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            name = str(k).lower()
            if "time" in name or "timing" in name or name.endswith("_s") or "seconds" in name:
                continue  # wall-clock, not a result
            yield from _numbers(v, f"{prefix}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _numbers(v, f"{prefix}[{i}]")


def test_parity_dvc_repro_vs_kfp_local(engines):
    import torch

    repo, run, _ = engines
    graph = build_graph(repo)
    compared = []
    for s in graph.stages:
        for o in s.outs:
            dvc_path, kfp_path = repo / o.path, run / _task(s.name) / o.ident
            assert kfp_path.exists(), f"{s.name}: {o.path} missing from the KFP run"
            if o.path.startswith(("data/", "metrics/confusion")):
                assert _files_hash(dvc_path) == _files_hash(kfp_path), o.path
            elif o.kind == "metrics":
                a = dict(_numbers(json.loads(dvc_path.read_text())))
                b = dict(_numbers(json.loads(kfp_path.read_text())))
                assert a.keys() == b.keys(), o.path
                for k in a:
                    assert math.isclose(a[k], b[k], rel_tol=METRIC_TOL, abs_tol=METRIC_TOL), f"{o.path}{k}"
            elif o.path.startswith("models/") and (dvc_path / "model.pt").is_file():
                sa = torch.load(dvc_path / "model.pt", weights_only=True)
                sb = torch.load(kfp_path / "model.pt", weights_only=True)
                assert sa.keys() == sb.keys()
                for k in sa:
                    assert torch.allclose(sa[k].float(), sb[k].float(), atol=METRIC_TOL), f"{o.path}:{k}"
            else:
                continue
            compared.append(o.path)
    assert "data/prepared" in compared and "models/finetuned" in compared and "metrics/gate.json" in compared
    # the gate passed under both engines and both packaged
    assert json.loads((repo / "metrics/gate.json").read_text())["passed"] is True
    assert json.loads((run / "gate" / "executor_output.json").read_text())["parameterValues"]["Output"] is True
    assert (repo / "models/bento.json").is_file() and (run / "package" / "models_bento_json").is_file()
    # provenance: the data hash given to the generator reaches the packaged model's artifact
    meta = lambda task, art: json.loads((run / task / "executor_output.json").read_text())["artifacts"][art][
        "artifacts"
    ][0]["metadata"]  # noqa: E731
    first = graph.source_stages()[0]
    h = meta(_task(first.name), first.outs[0].ident)["data_hash"]
    assert len(h) == 64 and meta("package", "models_bento_json")["data_hash"] == h
    # the candidate left the task: in the store under the digest the bento_archive artifact names
    from thermops.model.store import ModelStore

    exported = meta("package", "bento_archive")
    store = ModelStore(str(repo.parent / "store"))
    assert store.digests() == [exported["digest"]] and (run / "package" / "bento_archive").stat().st_size > 10_000
    # the candidate exported is the one this task packaged (tags are content hashes; the engines' cards
    # differ where finetune records params it did not declare, so the tags differ between engines)
    assert exported["model_tag"] == json.loads((run / "package" / "models_bento_json").read_text())["model_tag"]
    assert "gate" in meta("gate", "metrics_gate_json")["timings_s"]  # timings: metadata, not metrics
    cm = meta("finetune", "metrics_confusion_csv")["confusionMatrix"]
    assert [a["displayName"] for a in cm["annotationSpecs"]] == list(
        yaml.safe_load((repo / "params.yaml").read_text())["classes"]
    )


def test_param_change_reruns_same_stages_in_both_engines(engines, tmp_path):
    repo, _, _ = engines
    status = lambda: json.loads(
        subprocess.run(  # noqa: E731
            [sys.executable, "-m", "dvc", "status", "--json"], cwd=repo, check=True, capture_output=True, text=True
        ).stdout
    )
    assert status() == {}, "dvc status is not clean after dvc repro"
    spec, _ = load_spec(compile_pipeline(tmp_path / "p.yaml", root=repo, local=True))
    tasks = task_inputs(spec)
    graph = build_graph(repo)
    original = (repo / "params.yaml").read_text()
    base = yaml.safe_load(original)
    for key, value in (
        ("prepare.size", 24),
        ("finetune.optim.epochs", 2),
        ("seed", 1),
        ("gate.attack_subset", 4),
        ("package.max_batch_size", 8),
    ):
        params = yaml.safe_load(original)
        set_key(params, key, value)
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        try:
            dvc_changed = set(status())
        finally:
            (repo / "params.yaml").write_text(original)
        leaves = [lf for lf in graph.leaves if key == lf or key.startswith(lf + ".")]
        args = {param_ident(lf): encode_param(get_key(params, lf)) for lf in leaves}
        assert all(get_key(base, lf) != get_key(params, lf) for lf in leaves) and leaves
        kfp_changed = {tasks[k]["display"] for k in directly_changed(spec, {}, args)}
        assert kfp_changed == {graph.stage(n).task_name for n in dvc_changed}, key
    assert status() == {}


def test_real_gate_failing_skips_package(engines, tmp_path):
    """The real gate component, enforcing and failing (exit 1), gives False; dsl.If skips package."""
    from kfp import dsl, local

    from pipeline import codegen
    from pipeline.pipeline import _configure, kubeflow_params

    repo, run, _ = engines
    params = yaml.safe_load((repo / "params.yaml").read_text())
    graph = build_graph(repo, params)
    kf = kubeflow_params(params)
    settings = json.loads(json.dumps(__import__("dataclasses").asdict(kf)))
    gate_c = codegen.make_component(graph, graph.stage("gate"), kf.image, str(repo), settings)
    pkg_c = codegen.make_component(graph, graph.stage("package"), kf.image, str(repo), settings)
    impossible = merge(params["gate"], {"thresholds": {"clean_accuracy": 2.0}, "enforce": True})

    @dsl.pipeline(name="gate-branch")
    def gate_branch():
        ins = {}
        for _, o in graph.inputs["gate"]:
            if o.ident not in ins:
                cls = dsl.Model if o.path.startswith("models/") else dsl.Dataset
                ins[o.ident] = dsl.importer(
                    artifact_uri=str(run / _producer(graph, o.path) / o.ident), artifact_class=cls, reimport=True
                ).output
        g = gate_c(
            **{i: ins[i] for i in (o.ident for _, o in graph.inputs["gate"])},
            seed=params["seed"],
            gate=encode_param(impossible),
        )
        _configure(g, "gate", kf)
        with dsl.If(g.outputs["Output"] == True):  # noqa: E712
            pkg_c(
                models_gated=g.outputs["models_gated"],
                metrics_gate_json=g.outputs["metrics_gate_json"],
                package=encode_param(params["package"]),
            )

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"), raise_on_error=True)
    os.environ["OMP_NUM_THREADS"] = "1"
    gate_branch()
    (r,) = [p for p in (tmp_path / "kfp").iterdir() if p.is_dir()]
    out = json.loads((r / "gate" / "executor_output.json").read_text())
    assert out["parameterValues"]["Output"] is False
    verdict = json.loads((r / "gate" / "metrics_gate_json").read_text())
    assert verdict["passed"] is False and verdict["failed_checks"] >= 1
    record = json.loads((r / "gate" / "reports_gate" / "gate.json").read_text())
    assert any("clean_accuracy" in x for x in record["reasons"])
    assert not (r / "package").exists()


def _producer(graph, path: str) -> str:
    for s in graph.stages:
        if any(o.path == path for o in s.outs):
            return _task(s.name)
    raise KeyError(path)
