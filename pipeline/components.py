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
compiled YAML), kept to one call into `run_stage_task`, which lives in the image.
"""

from __future__ import annotations

import hashlib
import json
import linecache
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.graph import Graph, Out, Stage, nest, param_ident

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
        Input=Input, Output=Output, Dataset=Dataset, Model=Model, Metrics=Metrics,
        ClassificationMetrics=ClassificationMetrics, HTML=HTML, Markdown=Markdown,
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
    }


def component_source(graph: Graph, stage: Stage, spec: dict[str, Any]) -> str:
    """Python source of the lightweight component function for `stage`."""
    args = []
    if spec["source"]:
        args += ["data_hash: str", "git_rev: str"]
    args += [f"{i['name']}: Input[{_input_type(graph, stage, i['name'])}]" for i in spec["inputs"]]
    args += [f"{o['name']}: Output[{o['type']}]" for o in spec["outputs"]]
    args += [f"{param_ident(leaf)}: {param_annotation(graph.leaves[leaf])}" for leaf in spec["params"]]
    ret = " -> bool" if spec["gate"] else ""
    fn = stage.ident
    return (
        f"def {fn}(\n    " + ",\n    ".join(args) + f",\n){ret}:\n"
        f'    """DVC stage {stage.name}: {stage.cmd}"""\n'
        "    args = dict(locals())\n"
        "    import sys\n"
        f"    sys.path.insert(0, {spec['project_root']!r})\n"
        "    from pipeline.components import run_stage_task\n"
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
        "    from pipeline.components import run_fetch_task\n"
        f"    return run_fetch_task({json.dumps(spec, sort_keys=True)!r}, args)\n"
    )
    return src, spec


def make_fetch_component(graph: Graph, image: str, project_root: str, settings: dict[str, Any]):
    """The KFP component that fetches the data of a pinned git commit from the DVC remote."""
    from kfp import dsl

    src, _ = fetch_source(graph, project_root, settings)
    fn = _register_source("fetch", src)["fetch"]
    return dsl.component(fn, base_image=image, install_kfp_package=False)


# ---------------------------------------------------------------- runtime (inside the task)


def _hash_value(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _is_code(root: Path, dep: str) -> bool:
    # code inside a package comes from the image's PYTHONPATH, not linked into the tree
    parts = Path(dep).parts
    return len(parts) > 1 and (root / parts[0] / "__init__.py").is_file()


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        return
    os.symlink(src.resolve(), dst)


def _copy_out(src: Path, dst: Path) -> None:
    if dst.is_dir() and not dst.is_symlink():
        shutil.rmtree(dst)
    elif dst.exists():
        dst.unlink()
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst, symlinks=False)
    else:
        shutil.copy2(src, dst)


def _flatten(prefix: str, value: Any, out: dict[str, float]) -> None:
    if isinstance(value, bool):
        out[prefix] = float(value)
    elif isinstance(value, (int, float)):
        out[prefix] = float(value)
    elif isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)


def read_confusion(path: Path, classes: list[str] | None = None) -> tuple[list[str], list[list[int]]]:
    """Labels and square count matrix from a confusion file (JSON or long/wide CSV).

    A long CSV (one `actual,predicted` row per sample) lists only labels that occur;
    `classes` (params `classes`, when the stage reads it) restores all, in order.
    """
    import csv

    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".json", ".csv"))
        if not files:
            raise ValueError(f"{path}: no confusion matrix file")
        path = files[0]
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        labels = data.get("labels") or data.get("classes") or data.get("categories")
        matrix = data.get("matrix") or data.get("confusion_matrix")
        if labels is None or matrix is None:
            raise ValueError(f"{path}: expected keys labels and matrix")
        return [str(x) for x in labels], [[int(v) for v in row] for row in matrix]
    rows = list(csv.DictReader(path.open()))
    if not rows:
        raise ValueError(f"{path}: empty confusion matrix")
    cols = list(rows[0])
    actual = next((c for c in cols if c.lower() in ("actual", "true", "target", "label", "y_true")), None)
    pred = next((c for c in cols if c.lower() in ("predicted", "pred", "prediction", "y_pred")), None)
    if actual and pred:  # long format: one row per prediction, or with a count column
        count = next((c for c in cols if c.lower() in ("count", "n")), None)
        seen = {r[actual] for r in rows} | {r[pred] for r in rows}
        labels = list(classes) if classes and seen <= set(classes) else sorted(seen)
        idx = {lab: i for i, lab in enumerate(labels)}
        m = [[0] * len(labels) for _ in labels]
        for r in rows:
            m[idx[r[actual]]][idx[r[pred]]] += int(float(r[count])) if count else 1
        return labels, m
    labels = cols[1:]  # wide format: first column the actual label
    return labels, [[int(float(r[c])) for c in labels] for r in rows]


def _report_html(src: Path) -> str:
    import html

    if src.is_dir():
        pages = sorted(src.rglob("*.html"))
        if pages:
            return pages[0].read_text()
        files = sorted(p for p in src.rglob("*") if p.is_file())
    else:
        if src.suffix == ".html":
            return src.read_text()
        files = [src]
    parts = [f"<html><body><h1>{html.escape(src.name)}</h1>"]
    for f in files:
        if f.suffix in (".json", ".md", ".txt", ".csv", ".yaml"):
            parts.append(f"<h2>{html.escape(f.name)}</h2><pre>{html.escape(f.read_text()[:100_000])}</pre>")
        else:
            parts.append(f"<p>{html.escape(f.name)} ({f.stat().st_size} bytes)</p>")
    return "\n".join(parts + ["</body></html>"])


def _report_markdown(src: Path) -> str:
    if src.is_dir():
        pages = sorted(src.rglob("*.md"))
        if pages:
            return pages[0].read_text()
        files = sorted(p for p in src.rglob("*") if p.is_file())
    else:
        if src.suffix == ".md":
            return src.read_text()
        files = [src]
    lines = [f"# {src.name}", ""]
    for f in files:
        if f.suffix == ".json":
            lines += [f"## {f.name}", "", "```json", f.read_text()[:20_000], "```", ""]
        else:
            lines.append(f"- {f.name} ({f.stat().st_size} bytes)")
    return "\n".join(lines) + "\n"


def _command(cmd: str, nproc: int) -> str:
    # the image's interpreter runs the step; several GPUs of a node -> torchrun (DDP)
    tokens = shlex.split(cmd)
    out: list[str] = []
    for i, t in enumerate(tokens):
        if t in ("python", "python3") and (i == 0 or tokens[i - 1] in ("&&", ";", "||")):
            out.append(sys.executable)
            if nproc > 1 and tokens[i + 1 : i + 2] == ["-m"]:
                out += ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
        else:
            out.append(t)
    return " ".join(t if t in ("&&", ";", "||") else shlex.quote(t) for t in out)


def _provenance(args: dict[str, Any], spec: dict[str, Any], inputs: list[Any]) -> dict[str, str]:
    if spec.get("source") or "data_hash" in args:
        data_hash, git_rev = args["data_hash"], args["git_rev"]
    else:  # inherited through the artifacts: the data hash reaches every task this way
        hashes = sorted({a.metadata.get("data_hash", "") for a in inputs} - {""})
        revs = sorted({a.metadata.get("git_rev", "") for a in inputs} - {""})
        data_hash = hashes[0] if len(hashes) == 1 else _hash_value(hashes)
        git_rev = ",".join(revs)
    params = {leaf: args[name] for leaf, name in spec.get("params", {}).items()}
    return {"data_hash": data_hash, "git_rev": git_rev, "params_hash": _hash_value(params)[:16]}


def _gate_verdict(work: Path, gate: dict[str, Any] | None) -> bool | None:
    """The gate's verdict from its metrics file; None when this is no gate or it has none."""
    if not gate or not (work / gate["metrics"]).is_file():
        return None
    value: Any = json.loads((work / gate["metrics"]).read_text())
    for part in gate["key"].split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return bool(value)


def run_stage_task(spec_json: str, args: dict[str, Any]) -> bool | None:
    """Run one DVC stage inside a KFP task: materialize deps, run `cmd`, export outs.

    Args:
        spec_json: the stage description compiled into the component (`stage_spec`).
        args: the component's arguments (artifacts and params values), by name.

    Returns:
        For the gate stage, the `passed` value of its metrics file; None otherwise.
    """
    spec = json.loads(spec_json)
    root = Path(spec["project_root"])
    work = Path(tempfile.mkdtemp(prefix=f"thermops-{spec['stage'].replace('@', '-')}-"))
    try:
        for dep in spec["static_deps"]:
            if _is_code(root, dep):
                continue
            src = root / dep
            if not src.exists():
                raise FileNotFoundError(f"stage {spec['stage']}: dep {dep} not found under {root}")
            _link(src, work / dep)
        for i in spec["inputs"]:
            _link(Path(args[i["name"]].path), work / i["path"])
        enc = set(spec.get("encoded", []))
        params = {leaf: decode_param(args[name], leaf in enc) for leaf, name in spec["params"].items()}
        (work / "params.yaml").write_text(yaml.safe_dump(nest(params), sort_keys=False))
        prov = _provenance(args, spec, [args[i["name"]] for i in spec["inputs"]])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        cmd = _command(spec["cmd"], int(spec.get("nproc_per_node", 1)))
        print(f"[thermops] stage {spec['stage']}: {cmd}", flush=True)
        proc = subprocess.run(cmd, shell=True, cwd=work / spec["wdir"], env=env)
        verdict = _gate_verdict(work, spec.get("gate"))
        if proc.returncode != 0 and verdict is not False:
            raise RuntimeError(f"stage {spec['stage']}: `{spec['cmd']}` exited {proc.returncode}")
        # a gate that exits 1 on a failed verdict (gate.enforce) stops `dvc repro` before
        # packaging; here it is a plain False output, and dsl.If skips the packaging
        for o in spec["outputs"]:
            src = work / o["path"]
            if not src.exists():
                raise FileNotFoundError(f"stage {spec['stage']}: declared out {o['path']} was not written")
            art = args[o["name"]]
            _export(art, o, src, params)
            art.metadata.update({"stage": spec["stage"], "path": o["path"], **prov})
        if spec.get("gate"):
            if verdict is None:
                raise FileNotFoundError(f"stage {spec['stage']}: no verdict {spec['gate']['key']} in {spec['gate']['metrics']}")
            return verdict
        return None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _export(art: Any, o: dict[str, Any], src: Path, params: dict[str, Any] | None = None) -> None:
    """Copy an out into its artifact and fill the typed parts (metrics, matrix, views)."""
    if o["role"] == "html":
        Path(art.path).parent.mkdir(parents=True, exist_ok=True)
        Path(art.path).write_text(_report_html(src))
        return
    if o["role"] == "markdown":
        Path(art.path).parent.mkdir(parents=True, exist_ok=True)
        Path(art.path).write_text(_report_markdown(src))
        return
    _copy_out(src, Path(art.path))
    if o["type"] == "Metrics" and src.suffix == ".json":
        flat: dict[str, float] = {}
        _flatten("", json.loads(src.read_text()), flat)
        for k, v in flat.items():
            art.log_metric(k, v)
    elif o["type"] == "ClassificationMetrics":
        classes = (params or {}).get("classes")
        labels, matrix = read_confusion(src, classes if isinstance(classes, list) else None)
        art.log_confusion_matrix(labels, matrix)


def run_fetch_task(spec_json: str, args: dict[str, Any]) -> None:
    """Inside a KFP task: clone the data repo at a pinned commit and `dvc pull` the source stages' outs.

    Credentials for git and the DVC remote come from the environment, which the
    pipeline fills from Kubernetes secrets.
    """
    spec = json.loads(spec_json)
    work = Path(tempfile.mkdtemp(prefix="thermops-fetch-"))
    try:
        commit = args["git_rev"]
        url = args["data_repo"]
        token = os.environ.get("GIT_TOKEN")  # from the dvc_remote secret, for a private repo
        if token and url.startswith("https://"):
            url = "https://x-access-token:" + token + "@" + url[len("https://"):]
        subprocess.run(["git", "clone", "--quiet", url, str(work)], check=True)
        subprocess.run(["git", "-C", str(work), "checkout", "--quiet", commit], check=True)
        pull = [sys.executable, "-m", "dvc", "pull", *spec["stages"]]
        if args.get("dvc_remote"):
            pull += ["--remote", args["dvc_remote"]]
        subprocess.run(pull, check=True, cwd=work)
        for o in spec["outputs"]:
            art = args[o["name"]]
            _copy_out(work / o["path"], Path(art.path))
            art.metadata.update({"stage": "fetch", "path": o["path"], "data_hash": args["data_hash"], "git_rev": commit})
    finally:
        shutil.rmtree(work, ignore_errors=True)
