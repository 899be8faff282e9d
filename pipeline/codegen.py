"""KFP v2 lightweight components generated from the stages of `dvc.yaml`.

Each DVC stage becomes one component whose body runs the stage's own `cmd` (the same
`python -m components.<step> ...` that `dvc repro` runs) inside a scratch working
tree where every dep and out sits at its `dvc.yaml` path:

- a dep that is another stage's out arrives as an input artifact and is linked there;
- other deps (code, calibration files) come from the project image at `project_root`;
- the params keys the stage reads arrive as input parameters and are written into a
  `params.yaml` of the scratch tree, so the step reads them exactly as under DVC;
- every declared out is copied to a typed output artifact afterwards: `Model` under
  `models/`, `Metrics` for DVC metrics (values logged), `ClassificationMetrics` for a
  confusion matrix, `Dataset` otherwise, plus `HTML` and `Markdown` views of `reports/`.

Provenance (stage, git revision, params hash, data hash) goes into every output
artifact's `.metadata`; later tasks inherit the data hash from their inputs' metadata.
The component source is generated text (KFP embeds a function's source in the
compiled YAML), kept to one call into `pipeline.task.run_stage_task`, which lives in
the image and runs inside the pod.
"""

from __future__ import annotations

import json
import linecache
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.graph import Graph, Out, Stage, param_ident

# Stage outs under these roots are models; reports get HTML/Markdown views.
MODEL_ROOT = "models/"
REPORT_ROOT = "reports/"


@dataclass(frozen=True)
class ArtifactSpec:
    """One artifact of a generated component: argument name, KFP type, repo path, role."""

    name: str
    type: str  # Dataset | Model | Metrics | ClassificationMetrics | HTML | Markdown
    path: str
    role: str  # "data" (the out itself) | "html" | "markdown" (views of a report)


def artifact_type(out: Out) -> str:
    """The KFP artifact type of a stage output."""
    base = Path(out.path).name.lower()
    if base.startswith("confusion"):
        return "ClassificationMetrics"
    if out.kind == "metrics":
        return "Metrics"
    if out.path.startswith(MODEL_ROOT):
        return "Model"
    if out.kind == "plots" and base.endswith(".html"):
        return "HTML"
    return "Dataset"


def output_specs(stage: Stage) -> list[ArtifactSpec]:
    """Output artifacts of `stage`: one per out, plus HTML and Markdown views of reports."""
    specs = []
    for o in stage.outs:
        specs.append(ArtifactSpec(o.ident, artifact_type(o), o.path, "data"))
        if o.path.startswith(REPORT_ROOT):
            specs.append(ArtifactSpec(f"{o.ident}_html", "HTML", o.path, "html"))
            specs.append(ArtifactSpec(f"{o.ident}_md", "Markdown", o.path, "markdown"))
    return specs


def is_encoded(value: Any) -> bool:
    """Whether a params value travels as YAML text rather than a native KFP parameter.

    Mappings, lists and nulls do: KFP carries them as protobuf Structs, which turn every
    int into a float and refuse non-string keys (`robust_accuracy: {0.01: 0.2}`), so the
    step would not read back what params.yaml says. YAML text round-trips exactly.
    """
    return value is None or isinstance(value, (dict, list))


def encode_param(value: Any) -> Any:
    """A params value as a KFP argument (YAML text for mappings, lists and nulls)."""
    if is_encoded(value):
        # key order kept as in params.yaml: steps iterate mappings (threat models, splits)
        return yaml.safe_dump(value, sort_keys=False, default_flow_style=True, width=1 << 30).strip()
    return value


def decode_param(value: Any, encoded: bool) -> Any:
    """Inverse of `encode_param`."""
    return yaml.safe_load(value) if encoded else value


def param_annotation(value: Any) -> str:
    """The KFP parameter type of a params.yaml value."""
    if is_encoded(value):
        return "str"
    for tp, name in ((bool, "bool"), (int, "int"), (float, "float"), (str, "str")):
        if isinstance(value, tp):
            return name
    raise TypeError(f"params value {value!r} has no KFP parameter type")


def _register_source(name: str, source: str) -> dict[str, Any]:
    """Exec generated source under a fake file name that `inspect.getsource` can read."""
    filename = f"<thermops-generated {name}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace: dict[str, Any] = {}
    from kfp import dsl  # noqa: F401  (names used by the annotations)
    from kfp.dsl import HTML, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

    namespace.update(
        Input=Input,
        Output=Output,
        Dataset=Dataset,
        Model=Model,
        Metrics=Metrics,
        ClassificationMetrics=ClassificationMetrics,
        HTML=HTML,
        Markdown=Markdown,
    )
    exec(compile(source, filename, "exec", dont_inherit=True), namespace)  # noqa: S102 (our own generated text)
    return namespace


def stage_spec(graph: Graph, stage: Stage, project_root: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The JSON-able description of `stage` that its component carries and runs."""
    source = stage.name in {s.name for s in graph.source_stages()}
    inputs = [{"name": o.ident, "path": o.path} for _, o in graph.inputs[stage.name]]
    gate = settings.get("gate") or {}
    ddp = settings.get("gpu", {}).get("ddp_stages", [])
    nproc = int(settings.get("gpu", {}).get("gpus_per_node", 1)) if stage.step in ddp else 1
    return {
        "stage": stage.name,
        "cmd": stage.cmd,
        "wdir": stage.wdir,
        "project_root": project_root,
        "static_deps": graph.static_deps[stage.name],
        "inputs": inputs,
        "outputs": [a.__dict__ for a in output_specs(stage)],
        "params": {leaf: param_ident(leaf) for leaf in graph.stage_leaves[stage.name]},
        "encoded": [leaf for leaf in graph.stage_leaves[stage.name] if is_encoded(graph.leaves[leaf])],
        "source": source,
        "gate": gate if gate.get("stage") == stage.name else None,
        "nproc_per_node": nproc,
        "files": {p: n for p, n in (settings.get("files") or {}).items() if p in graph.static_deps[stage.name]},
        "export": (
            {"store_param": "production__store", "bento_json": settings["export"]["bento_json"]}
            if settings.get("export_stage") and settings.get("export_stage") == stage.name
            else None
        ),
    }


def component_source(graph: Graph, stage: Stage, spec: dict[str, Any]) -> str:
    """Python source of the lightweight component function for `stage`."""
    args = []
    if spec["source"]:
        args += ["data_hash: str", "git_rev: str"]
    args += [f"{i['name']}: Input[{_input_type(graph, stage, i['name'])}]" for i in spec["inputs"]]
    args += [f"{o['name']}: Output[{o['type']}]" for o in spec["outputs"]]
    if spec.get("export"):
        args.append("bento_archive: Output[Dataset]")
    args += [f"{param_ident(leaf)}: {param_annotation(graph.leaves[leaf])}" for leaf in spec["params"]]
    args += [f"{name}: str" for name in spec.get("files", {}).values()]
    if spec.get("export") and spec["export"]["store_param"] not in spec["params"].values():
        args.append(f"{spec['export']['store_param']}: str")
    ret = " -> bool" if spec["gate"] else ""
    fn = stage.ident
    return (
        f"def {fn}(\n    " + ",\n    ".join(args) + f",\n){ret}:\n"
        f'    """DVC stage {stage.name}: {stage.cmd}"""\n'
        "    args = dict(locals())\n"
        "    import sys\n"
        f"    sys.path.insert(0, {spec['project_root']!r})\n"
        "    from pipeline.task import run_stage_task\n"
        f"    return run_stage_task({json.dumps(spec, sort_keys=True)!r}, args)\n"
    )


def _input_type(graph: Graph, stage: Stage, name: str) -> str:
    for _, o in graph.inputs[stage.name]:
        if o.ident == name:
            return artifact_type(o)
    raise KeyError(name)


def make_component(graph: Graph, stage: Stage, image: str, project_root: str, settings: dict[str, Any]):
    """The KFP component (a `PythonComponent`) that runs `stage`."""
    from kfp import dsl

    spec = stage_spec(graph, stage, project_root, settings)
    src = component_source(graph, stage, spec)
    fn = _register_source(stage.ident, src)[stage.ident]
    return dsl.component(fn, base_image=image, install_kfp_package=False)


def fetch_source(graph: Graph, project_root: str, settings: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Source and spec of the `fetch` component: git clone at a commit + `dvc pull` of the source stages."""
    outs = [o for s in graph.source_stages() for o in s.outs]
    spec = {
        "stages": [s.name for s in graph.source_stages()],
        "outputs": [{"name": o.ident, "type": artifact_type(o), "path": o.path, "role": "data"} for o in outs],
        "project_root": project_root,
    }
    args = ["data_hash: str", "git_rev: str", "data_repo: str", "dvc_remote: str"]
    args += [f"{o['name']}: Output[{o['type']}]" for o in spec["outputs"]]
    src = (
        "def fetch(\n    " + ",\n    ".join(args) + ",\n):\n"
        '    """git clone the data repository at a pinned commit and `dvc pull` the source stages."""\n'
        "    args = dict(locals())\n"
        "    import sys\n"
        f"    sys.path.insert(0, {project_root!r})\n"
        "    from pipeline.task import run_fetch_task\n"
        f"    return run_fetch_task({json.dumps(spec, sort_keys=True)!r}, args)\n"
    )
    return src, spec


def make_fetch_component(graph: Graph, image: str, project_root: str, settings: dict[str, Any]):
    """The KFP component that fetches the data of a pinned git commit from the DVC remote."""
    from kfp import dsl

    src, _ = fetch_source(graph, project_root, settings)
    fn = _register_source("fetch", src)["fetch"]
    return dsl.component(fn, base_image=image, install_kfp_package=False)


SERVING_IMAGE_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "image" / "serving_image.sh"


def make_serving_image_component(builder: str, registry: str):
    """A container component: build the bento's image with buildah and push it, tagged by content.

    Runs `scripts/image/serving_image.sh` (its text is compiled into the spec) in the
    `builder` image (buildah). Input: the bento archive the export task wrote; outputs:
    `image` (`<registry>/<bento name>@sha256:<digest>`) and the same reference in a
    Markdown artifact. Registry credentials come from the environment
    (`kubeflow.secrets.registry`), read by the script with `--password-stdin`.
    """
    script = SERVING_IMAGE_SCRIPT.read_text()
    source = (
        "from kfp import dsl\n"
        "from kfp.dsl import Dataset, Input, Markdown, Output, OutputPath\n\n\n"
        "@dsl.container_component\n"
        "def serving_image(bento_archive: Input[Dataset], image: OutputPath(str), report: Output[Markdown]):\n"
        "    return dsl.ContainerSpec(\n"
        f"        image={builder!r},\n"
        f"        command=['sh', '-ec', {script!r}, 'serving_image.sh'],\n"
        f"        args=[bento_archive.path, {registry!r}, image, report.path],\n"
        "    )\n"
    )
    return _register_source("serving_image", source)["serving_image"]
