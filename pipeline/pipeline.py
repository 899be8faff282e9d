"""The thermops Kubeflow pipeline, assembled from `dvc.yaml` (see `pipeline.graph`).

One task per DVC stage (`<step>_task`), wired by artifacts where a stage reads another
stage's out; every stage downstream of the gate runs inside `dsl.If(gate passed)`.
Pipeline parameters are the params keys the stages read (defaults from params.yaml),
plus `data_hash` and `git_rev`, resolved before submission (`pipeline.datahash`) and
given to the first data tasks only, so the hash reaches later tasks through artifacts.
Everything KFP fixes at compile time (GPU type and count, node selector, tolerations,
resources, retries, caching, secrets) comes from the `kubeflow` section of params.yaml.

What a cluster run leaves behind: the `kubeflow.export.stage` task (package)
exports the gated model and its bento to the object store (`production.store`, S3 API),
and a `serving_image_task` builds the bento's image with buildah and pushes it to
`kubeflow.serving_image.registry`, tagged by the bento's content version and returned by
digest. Compiling for a cluster (`local=False`) refuses an image that is not pinned (a
digest or a content tag, never `latest`), a local-path store and a missing registry.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pipeline.graph import Graph, build_graph, get_key, param_ident
from thermops.config import load_params, section

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class GpuParams:
    """GPU placement of the training and gate tasks (fixed at compile time: KFP cannot take it at run time)."""

    stages: list[str]  # steps that request GPUs
    accelerator: str  # set_accelerator_type
    gpus_per_node: int  # set_accelerator_limit, and torchrun --nproc_per_node for ddp_stages
    ddp_stages: list[str]
    node_selector: dict[str, str]
    tolerations: list[dict[str, str]]


@dataclass(frozen=True)
class SecretParams:
    """A Kubernetes secret mapped to environment variables of some steps."""

    secret: str
    env: dict[str, str]  # ENV_VAR: key in the secret
    stages: list[str]  # steps (or `fetch`) that get it


@dataclass(frozen=True)
class GateParams:
    """Which stage decides, and where its verdict is: `dsl.If` on this guards what follows."""

    stage: str
    metrics: str
    key: str


@dataclass(frozen=True)
class ExportParams:
    """Which task's candidate leaves the pod: the bento and model named in `bento_json` go to the store."""

    stage: str  # "" exports nothing (a graph without packaging)
    bento_json: str


@dataclass(frozen=True)
class ServingImageParams:
    """Where the serving image is built and pushed (the task after the export)."""

    registry: str  # e.g. registry.example.org/thermops; "" only for local runs
    builder: str  # a buildah image, pinned (repo@sha256:...)


@dataclass(frozen=True)
class KubeflowParams:
    """The `kubeflow` section of params.yaml."""

    image: str  # pinned: repo@sha256:<digest> or repo:<git revision>; "" = unset (compile refuses)
    project_root: str  # where the image holds the repository
    pipeline_name: str
    data_source: Literal["embedded", "dvc"]
    data_repo: str
    dvc_remote: str
    caching: bool
    retries: int
    resources: dict[str, dict[str, str]]  # step or "default" -> cpu/memory
    gpu: GpuParams
    gate: GateParams
    secrets: dict[str, SecretParams]
    file_params: list[str]  # small git-tracked deps that travel as run arguments (the production registry)
    export: ExportParams
    serving_image: ServingImageParams


class ClusterConfigError(ValueError):
    """The pipeline cannot be compiled for a cluster as configured (unpinned image, local store...)."""


_DIGEST_REF = re.compile(r"[^@\s]+@sha256:[0-9a-f]{64}")
_CONTENT_TAG = re.compile(r"[0-9a-f]{12,64}")


def check_pinned(image: str, what: str = "kubeflow.image") -> str:
    """`image` if it is pinned: `repo@sha256:<64 hex>` or `repo:<12-64 hex>` (a git revision or content hash).

    A mutable tag (`latest`, `v1`, `<rev>-dirty`) keeps KFP's cache key the same after the code
    changed (kubeflow/pipelines#13862), and a cluster may pull whatever it points at by then.
    """
    if not image:
        raise ClusterConfigError(
            f"{what} is not set: a cluster run needs a pinned image, e.g. registry/thermops@sha256:<digest> "
            "(`make image-push REGISTRY=...` prints it) or registry/thermops:<git revision>; pass --image or set it"
        )
    if _DIGEST_REF.fullmatch(image):
        return image
    last = image.rsplit("/", 1)[-1]
    tag = last.split(":", 1)[1] if ":" in last else ""
    if tag and _CONTENT_TAG.fullmatch(tag):
        return image
    raise ClusterConfigError(
        f"{what} {image!r} is not pinned: use repo@sha256:<digest> or repo:<git revision> (12+ hex digits); "
        "never latest, a version tag or a -dirty build (KFP would serve cached results after the code changed)"
    )


def cluster_checks(kf: KubeflowParams, graph: Graph, params: dict[str, Any], image: str) -> None:
    """What a cluster run needs besides dvc.yaml: a pinned image; with an export, object storage and a registry."""
    check_pinned(image)
    if kf.export.stage and kf.export.stage in {s.name for s in graph.stages}:
        store = str(params.get("production", {}).get("store", ""))
        if not store.startswith("s3://"):
            raise ClusterConfigError(
                f"production.store is {store!r}: a pod cannot reach a local folder; set it to s3://bucket/prefix "
                "(any S3-API server; endpoint and credentials from the secret kubeflow.secrets.store)"
            )
        if not kf.serving_image.registry:
            raise ClusterConfigError(
                "kubeflow.serving_image.registry is not set: the run pushes the serving image there "
                "(e.g. registry.example.org/thermops)"
            )
        check_pinned(kf.serving_image.builder, "kubeflow.serving_image.builder")


def kubeflow_params(params: dict[str, Any]) -> KubeflowParams:
    """The `kubeflow` section as a typed record."""
    return section(params, "kubeflow", KubeflowParams)


def _settings_dict(kf: KubeflowParams) -> dict[str, Any]:
    return dataclasses.asdict(kf)


def _configure(task: Any, step: str, kf: KubeflowParams) -> None:
    """Apply resources, GPU placement, retries, caching and secrets to one task."""
    from kfp import kubernetes

    res = {**kf.resources.get("default", {}), **kf.resources.get(step, {})}
    if "cpu" in res:
        task.set_cpu_request(str(res["cpu"]))
    if "memory" in res:
        task.set_memory_request(str(res["memory"]))
    if "cpu_limit" in res:
        task.set_cpu_limit(str(res["cpu_limit"]))
    if "memory_limit" in res:
        task.set_memory_limit(str(res["memory_limit"]))
    if step in kf.gpu.stages:
        task.set_accelerator_type(kf.gpu.accelerator)
        task.set_accelerator_limit(kf.gpu.gpus_per_node)
        for key, value in kf.gpu.node_selector.items():
            kubernetes.add_node_selector(task, label_key=key, label_value=str(value))
        for tol in kf.gpu.tolerations:
            kubernetes.add_toleration(
                task,
                key=tol.get("key"),
                operator=tol.get("operator", "Equal"),
                value=tol.get("value"),
                effect=tol.get("effect"),
            )
    if kf.retries:
        task.set_retry(num_retries=kf.retries, backoff_duration="30s", backoff_factor=2.0)
    task.set_caching_options(enable_caching=kf.caching)
    for sec in kf.secrets.values():
        if step in sec.stages:
            kubernetes.use_secret_as_env(
                task, secret_name=sec.secret, secret_key_to_env=dict((key, env) for env, key in sec.env.items())
            )


def pipeline_parameters(graph: Graph, kf: KubeflowParams, data_hash: str, git_rev: str) -> list[tuple[str, Any, Any]]:
    """(name, annotation, default) of every pipeline parameter, params leaves in key order."""
    from pipeline.codegen import encode_param, param_annotation

    types = {"bool": bool, "int": int, "float": float, "str": str}
    used = set()
    for s in stages_run(graph, kf):
        used.update(graph.stage_leaves[s.name])
    out: list[tuple[str, Any, Any]] = [("data_hash", str, data_hash), ("git_rev", str, git_rev)]
    # Lineage of a calibration-triggered run (pipeline.recalibrate watch --mode cluster):
    # recorded with the run, read by no task, so they never change a cache key.
    out += [("camera_id", str, ""), ("calibration_version", str, "")]
    if kf.data_source == "dvc":
        out += [("data_repo", str, kf.data_repo), ("dvc_remote", str, kf.dvc_remote)]
    for leaf in [lf for lf in graph.leaves if lf in used]:  # params.yaml order
        value = graph.leaves[leaf]
        out.append((param_ident(leaf), types[param_annotation(value)], encode_param(value)))
    for path, name in file_params(graph, kf, stages_run(graph, kf)).items():
        out.append((name, str, encode_file(graph.root / path)))
    names = {n for n, _, _ in out}
    if kf.export.stage in {s.name for s in stages_run(graph, kf)} and param_ident("production.store") not in names:
        # the export task writes to the store even when no other task reads it (data from DVC)
        try:
            store = get_key(graph.params, "production.store")
        except KeyError:
            raise ClusterConfigError("kubeflow.export needs production.store in params.yaml") from None
        out.append((param_ident("production.store"), str, str(store)))
    return out


def encode_file(path: Path) -> str:
    """A file's bytes as one line (`base64:<...>`): KFP writes parameter defaults into a YAML
    comment header that a multi-line value would break."""
    import base64

    return "base64:" + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def file_params(graph: Graph, kf: KubeflowParams, stages: list) -> dict[str, str]:
    """{path: pipeline parameter} of the `kubeflow.file_params` some task reads (its text travels as an argument).

    The production registry is such a file: a run uses the registry of the checkout that
    submitted it (not the one baked into the image), and its text is part of the reading
    task's cache key, so a promotion re-runs the baseline and the gate, and nothing else.
    """
    from pipeline.graph import ident

    wanted = set(kf.file_params)
    read = {d for s in stages for d in graph.static_deps[s.name] if d in wanted}
    missing = [p for p in sorted(read) if not (graph.root / p).is_file()]
    if missing:
        raise ClusterConfigError(f"kubeflow.file_params: {', '.join(missing)} not found under {graph.root}")
    return {p: f"file__{ident(p)}" for p in sorted(read)}


def stages_run(graph: Graph, kf: KubeflowParams) -> list:
    """The stages that become tasks: all, less the source stages when data comes from DVC."""
    if kf.data_source == "dvc":
        src = {s.name for s in graph.source_stages()}
        return [s for s in graph.stages if s.name not in src]
    return list(graph.stages)


def build_pipeline(
    root: str | Path = ROOT,
    params: dict[str, Any] | None = None,
    data_hash: str | None = None,
    git_rev: str | None = None,
    project_root: str | None = None,
    image: str | None = None,
    data_source: str | None = None,
    local: bool = False,
):
    """The `@dsl.pipeline` function for the stages of `root/dvc.yaml`.

    Args:
        root: the repository whose dvc.yaml and params.yaml define the graph.
        params: params mapping (default: root/params.yaml).
        data_hash, git_rev: defaults of those pipeline parameters (default: resolved now).
        project_root: where the components find the repository at run time
            (default: `kubeflow.project_root`, the image's; tests use `root`).
        image: base image of every component (default: `kubeflow.image`).
        data_source: `embedded` or `dvc` (default: `kubeflow.data_source`).
        local: for `kfp.local` runs (no image is pulled): skip the cluster checks
            (`cluster_checks`: pinned image, object store, registry) and the serving-image task.

    Returns:
        A KFP `GraphComponent`, ready for `kfp.compiler.Compiler().compile` or a local run.
    """
    from kfp import dsl

    from pipeline import codegen, datahash

    root = Path(root).resolve()
    params = params if params is not None else load_params(root / "params.yaml")
    kf = kubeflow_params(params)
    if data_source:
        kf = dataclasses.replace(kf, data_source=data_source)
    image = image or kf.image
    project_root = project_root or kf.project_root
    graph = build_graph(root, params)
    if local:
        image = image or "localhost/thermops:local-run-only"
    else:
        cluster_checks(kf, graph, params, image)
    names = {s.name for s in graph.stages}
    if kf.gate.stage in {s.step for s in graph.stages} and kf.gate.stage not in names:
        raise ValueError(f"gate stage {kf.gate.stage} is a foreach stage; it must be a single stage")
    if git_rev is None or data_hash is None:
        resolved = datahash.resolve(root, params, data_source=kf.data_source)
        git_rev = git_rev if git_rev is not None else resolved.git_rev
        data_hash = data_hash if data_hash is not None else resolved.data_hash
    settings = _settings_dict(kf)
    run = stages_run(graph, kf)
    settings["files"] = file_params(graph, kf, run)
    settings["export_stage"] = kf.export.stage
    guarded = graph.downstream_closure({kf.gate.stage}) - {kf.gate.stage} if kf.gate.stage in names else set()
    made = {s.name: codegen.make_component(graph, s, image, project_root, settings) for s in run}
    fetch = codegen.make_fetch_component(graph, image, project_root, settings) if kf.data_source == "dvc" else None
    fetched = {s.name for s in graph.source_stages()} if fetch else set()
    plist = pipeline_parameters(graph, kf, data_hash, git_rev)
    export = kf.export.stage if kf.export.stage in {s.name for s in run} else ""
    store_param = param_ident("production.store")
    image_op = None
    if export and kf.serving_image.registry and not local:
        image_op = codegen.make_serving_image_component(kf.serving_image.builder, kf.serving_image.registry)

    def body(*pos: Any, **kw: Any) -> None:
        kw.update(zip([n for n, _, _ in plist], pos))  # KFP passes placeholders by position
        tasks: dict[str, Any] = {}  # stage name -> task producing its outs
        if fetch is not None:
            t = fetch(
                data_hash=kw["data_hash"], git_rev=kw["git_rev"], data_repo=kw["data_repo"], dvc_remote=kw["dvc_remote"]
            )
            t.set_display_name("fetch_task")
            _configure(t, "fetch", kf)
            for name in fetched:
                tasks[name] = t

        def add(stage) -> None:
            spec = codegen.stage_spec(graph, stage, project_root, settings)
            args: dict[str, Any] = {}
            if spec["source"]:
                args.update(data_hash=kw["data_hash"], git_rev=kw["git_rev"])
            for up, out in graph.inputs[stage.name]:
                args[out.ident] = tasks[up].outputs[out.ident]
            for pname in spec["params"].values():
                args[pname] = kw[pname]
            for pname in spec.get("files", {}).values():
                args[pname] = kw[pname]
            if spec.get("export"):
                args[store_param] = kw[store_param]
            t = made[stage.name](**args)
            t.set_display_name(stage.task_name)
            _configure(t, stage.step, kf)
            tasks[stage.name] = t
            if spec.get("export") and image_op is not None:
                img = image_op(bento_archive=t.outputs["bento_archive"])
                img.set_display_name("serving_image_task")
                _configure(img, "serving_image", kf)

        for s in run:
            if s.name not in guarded:
                add(s)
        if guarded:
            gate_task = tasks[kf.gate.stage]
            with dsl.If(gate_task.outputs["Output"] == True, name="gate-passed"):  # noqa: E712 (KFP condition)
                for s in run:
                    if s.name in guarded:
                        add(s)

    body.__name__ = kf.pipeline_name.replace("-", "_")
    body.__doc__ = "thermops: stages of dvc.yaml as a Kubeflow pipeline, packaging guarded by the gate."
    body.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=d, annotation=a) for n, a, d in plist]
    )
    body.__annotations__ = {n: a for n, a, _ in plist}
    return dsl.pipeline(name=kf.pipeline_name, description=body.__doc__)(body)


def compile_pipeline(out: str | Path, **kwargs: Any) -> Path:
    """Compile the pipeline (arguments as `build_pipeline`) to a YAML file."""
    from kfp import compiler

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(**kwargs), str(out))
    return out


if __name__ == "__main__":
    print(compile_pipeline("pipeline.yaml"))
