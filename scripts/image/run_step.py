"""Run one step of a compiled Kubeflow pipeline inside the project image, as KFP would.

Reads the compiled pipeline YAML, takes the step's container spec
(`deploymentSpec.executors.<exec>.container`: image, command, args), builds the
`executor_input` JSON the KFP launcher would give it, and runs exactly that
command inside the image with `buildah run --isolation chroot`.

Artifacts live under a host folder mapped like a cluster's bucket mount: an
artifact URI `gs://thermops-root/<run>/<task>/<name>` is the path
`/gcs/thermops-root/...` inside the container (how `kfp.dsl` maps GCS URIs),
and `/gcs` is the host folder `<work>/gcs`. Output parameters and the executor
output go to `/tmp/kfp_outputs` (the launcher's place), the host `<work>/kfp_outputs`.
Input artifacts are host files or folders given with `--artifact NAME=PATH`,
copied into the bucket as if an upstream task had written them.

    python scripts/image/run_step.py --pipeline pipeline.yaml --task validate \\
        --work /tmp/run --artifact data_prepared=data/prepared [--image localhost/thermops:latest]

Prints a JSON summary (task, image, exit code, seconds, outputs with their host
paths and sizes, the executor output) and exits non-zero when the step failed or
an output artifact was not written. `--runtime host` runs the same command on
this machine instead (no image: for testing this script).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

BUCKET = "thermops-root"
GCS_MOUNT = "/gcs"  # kfp.dsl maps gs://X to /gcs/X
OUTPUTS_MOUNT = "/tmp/kfp_outputs"  # where the KFP launcher puts executor outputs


class StepError(Exception):
    """A step cannot be found, resolved or run; the message says what and where."""


@dataclass
class Step:
    """One task of the compiled pipeline, resolved to what its container needs."""

    task: str
    component: str
    executor: str
    container: dict[str, Any]
    inputs: dict[str, Any]  # the component's inputDefinitions
    outputs: dict[str, Any]  # the component's outputDefinitions
    parameters: dict[str, Any] = field(default_factory=dict)  # resolved input values
    input_artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {producer, key}


def load_pipeline_spec(path: Path) -> dict[str, Any]:
    """The pipeline spec document of a compiled KFP YAML (skipping a platform spec)."""
    for doc in yaml.safe_load_all(path.read_text()):
        if isinstance(doc, dict) and "deploymentSpec" in doc:
            return doc
    raise StepError(f"{path}: no pipeline spec (deploymentSpec) in this file")


def _dags(spec: dict[str, Any]):
    """(dag owner name, dag, inputDefinitions) for the root and every sub-DAG component."""
    yield "root", spec["root"]["dag"], spec["root"].get("inputDefinitions", {})
    for name, comp in spec.get("components", {}).items():
        if "dag" in comp:
            yield name, comp["dag"], comp.get("inputDefinitions", {})


def _parent_task(spec: dict[str, Any], dag_owner: str) -> tuple[str, dict[str, Any]] | None:
    """The (dag owner, task) that runs the sub-DAG component `dag_owner`."""
    for owner, dag, _ in _dags(spec):
        for task in dag.get("tasks", {}).values():
            if task.get("componentRef", {}).get("name") == dag_owner:
                return owner, task
    return None


def _resolve_param(
    spec: dict[str, Any], owner: str, binding: dict[str, Any], name: str, overrides: dict[str, Any]
) -> Any:
    """Value of one task input parameter binding, following sub-DAG inputs up to the root."""
    if "runtimeValue" in binding:
        return binding["runtimeValue"]["constant"]
    if "componentInputParameter" in binding:
        ref = binding["componentInputParameter"]
        if ref in overrides:
            return overrides[ref]
        if owner == "root":
            definition = spec["root"].get("inputDefinitions", {}).get("parameters", {}).get(ref, {})
            if "defaultValue" in definition:
                return definition["defaultValue"]
            raise StepError(f"pipeline parameter {ref!r} (input {name!r}) has no default: pass -p {ref}=VALUE")
        parent = _parent_task(spec, owner)
        if parent is None:
            raise StepError(f"component {owner!r} is not run by any task")
        parent_owner, parent_task = parent
        pbinding = parent_task.get("inputs", {}).get("parameters", {}).get(ref)
        if pbinding is None:
            raise StepError(f"input {ref!r} of {owner!r} is not bound by its parent task")
        return _resolve_param(spec, parent_owner, pbinding, name, overrides)
    if "taskOutputParameter" in binding:
        out = binding["taskOutputParameter"]
        raise StepError(
            f"input {name!r} comes from task {out['producerTask']!r} "
            f"(output {out['outputParameterKey']!r}): pass -p {name}=VALUE"
        )
    raise StepError(f"input {name!r}: unsupported binding {binding}")


def coerce(value: Any, parameter_type: str) -> Any:
    """A value as the compiled parameter type wants it (as the KFP backend converts run arguments).

    A structured value for a STRING parameter is passed as its JSON text (which
    is also YAML), e.g. a params section a component decodes itself.
    """
    if parameter_type == "NUMBER_INTEGER":
        return int(value)
    if parameter_type == "NUMBER_DOUBLE":
        return float(value)
    if parameter_type == "STRING" and not isinstance(value, str):
        return json.dumps(value)
    return value


def _resolve_artifact(spec: dict[str, Any], owner: str, binding: dict[str, Any], name: str) -> dict[str, str]:
    """Producer task and output key of an input artifact, following sub-DAG inputs upwards."""
    if "taskOutputArtifact" in binding:
        src = binding["taskOutputArtifact"]
        return {"producer": src["producerTask"], "key": src["outputArtifactKey"]}
    if "componentInputArtifact" in binding and owner != "root":
        ref = binding["componentInputArtifact"]
        parent = _parent_task(spec, owner)
        if parent is not None:
            pbinding = parent[1].get("inputs", {}).get("artifacts", {}).get(ref)
            if pbinding is not None:
                return _resolve_artifact(spec, parent[0], pbinding, name)
    return {"producer": "upstream", "key": name}  # a pipeline input or unbound optional input


def find_step(spec: dict[str, Any], task_name: str, overrides: dict[str, Any] | None = None) -> Step:
    """Resolve task `task_name` (dag key or taskInfo name) to its container and inputs."""
    overrides = overrides or {}
    for owner, dag, _ in _dags(spec):
        for key, task in dag.get("tasks", {}).items():
            if task_name not in (key, task.get("taskInfo", {}).get("name")):
                continue
            comp_name = task["componentRef"]["name"]
            comp = spec["components"][comp_name]
            if "executorLabel" not in comp:
                continue  # a sub-DAG (condition) named like the task: keep looking
            executor = comp["executorLabel"]
            container = spec["deploymentSpec"]["executors"][executor]["container"]
            step = Step(
                key, comp_name, executor, container, comp.get("inputDefinitions", {}), comp.get("outputDefinitions", {})
            )
            bindings = task.get("inputs", {})
            for pname, pdef in step.inputs.get("parameters", {}).items():
                if pname in overrides:
                    step.parameters[pname] = overrides[pname]
                elif pname in bindings.get("parameters", {}):
                    step.parameters[pname] = _resolve_param(
                        spec, owner, bindings["parameters"][pname], pname, overrides
                    )
                elif "defaultValue" in pdef:
                    step.parameters[pname] = pdef["defaultValue"]
                elif not pdef.get("isOptional"):
                    raise StepError(f"task {key!r}: input parameter {pname!r} has no value: pass -p {pname}=VALUE")
                if pname in step.parameters:
                    step.parameters[pname] = coerce(step.parameters[pname], pdef.get("parameterType", ""))
            for aname in step.inputs.get("artifacts", {}):
                b = bindings.get("artifacts", {}).get(aname, {})
                step.input_artifacts[aname] = _resolve_artifact(spec, owner, b, aname)
            return step
    names = sorted(k for _, dag, _ in _dags(spec) for k in dag.get("tasks", {}))
    raise StepError(f"no task {task_name!r} in the pipeline; tasks: {', '.join(names)}")


def _type_of(definition: dict[str, Any]) -> dict[str, str]:
    t = definition.get("artifactType", {})
    return {"schemaTitle": t.get("schemaTitle", "system.Artifact"), "schemaVersion": t.get("schemaVersion", "0.0.1")}


def _copy_into(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst, symlinks=False)
    else:
        shutil.copy2(src, dst)


class Layout:
    """Where artifacts live: URIs for the executor, container paths, host paths."""

    def __init__(self, work: Path, run_id: str, runtime: str) -> None:
        self.work, self.run_id, self.runtime = work, run_id, runtime
        self.gcs_host = work / "gcs"
        self.outputs_host = work / "kfp_outputs"

    def uri(self, task: str, name: str) -> str:
        """Artifact URI as the launcher writes it into executor_input."""
        rel = f"{BUCKET}/{self.run_id}/{task}/{name}"
        return f"gs://{rel}" if self.runtime == "buildah" else str(self.gcs_host / rel)

    def host_path(self, task: str, name: str) -> Path:
        """The host path of an artifact's data."""
        return self.gcs_host / BUCKET / self.run_id / task / name

    def outputs_dir(self) -> str:
        """The executor-output folder as the step sees it."""
        return OUTPUTS_MOUNT if self.runtime == "buildah" else str(self.outputs_host)


def executor_input(step: Step, layout: Layout, artifacts: dict[str, Path]) -> dict[str, Any]:
    """The executor_input JSON (as a dict) for `step`, copying input artifacts into the bucket."""
    inputs: dict[str, Any] = {"parameterValues": dict(step.parameters)}
    arts: dict[str, Any] = {}
    for aname, definition in step.inputs.get("artifacts", {}).items():
        if aname not in artifacts:
            if definition.get("isOptional"):
                continue
            raise StepError(f"task {step.task!r}: input artifact {aname!r} needed: pass --artifact {aname}=PATH")
        src = artifacts[aname]
        if not src.exists():
            raise StepError(f"--artifact {aname}: {src} does not exist")
        producer = step.input_artifacts[aname]
        _copy_into(src, layout.host_path(producer["producer"], producer["key"]))
        meta_file = src.parent / f"{src.name}.metadata.json"  # metadata an upstream run left
        metadata = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
        arts[aname] = {
            "artifacts": [
                {
                    "name": producer["key"],
                    "type": _type_of(definition),
                    "uri": layout.uri(producer["producer"], producer["key"]),
                    "metadata": metadata,
                }
            ]
        }
    if arts:
        inputs["artifacts"] = arts
    out_dir = layout.outputs_dir()
    outputs: dict[str, Any] = {"outputFile": f"{out_dir}/output_metadata.json"}
    oparams = {n: {"outputFile": f"{out_dir}/{n}"} for n in step.outputs.get("parameters", {})}
    if oparams:
        outputs["parameters"] = oparams
    oarts = {}
    for aname, definition in step.outputs.get("artifacts", {}).items():
        oarts[aname] = {
            "artifacts": [
                {"name": aname, "type": _type_of(definition), "uri": layout.uri(step.task, aname), "metadata": {}}
            ]
        }
        layout.host_path(step.task, aname).parent.mkdir(parents=True, exist_ok=True)
    if oarts:
        outputs["artifacts"] = oarts
    return {"inputs": inputs, "outputs": outputs}


_PLACEHOLDER = re.compile(r"\{\{\$(?:\.(inputs|outputs)\.(parameters|artifacts)\['([^']+)'\](?:\.(\w+))?)?\}\}")


def substitute(text: str, ex_input: dict[str, Any], layout: Layout, step: Step) -> str:
    """Replace KFP placeholders (`{{$}}`, `{{$.inputs.parameters['x']}}`, artifact paths) in one arg."""

    def repl(m: re.Match[str]) -> str:
        side, kind, name, attr = m.groups()
        if side is None:
            return json.dumps(ex_input, sort_keys=True)
        if kind == "parameters":
            if side == "outputs":
                return ex_input["outputs"]["parameters"][name]["outputFile"]
            value = ex_input["inputs"]["parameterValues"][name]
            return value if isinstance(value, str) else json.dumps(value)
        art = ex_input[side]["artifacts"][name]["artifacts"][0]
        uri = art["uri"]
        if attr == "uri":
            return uri
        return GCS_MOUNT + "/" + uri[len("gs://") :] if uri.startswith("gs://") else uri

    return _PLACEHOLDER.sub(repl, text)


def container_argv(step: Step, ex_input: dict[str, Any], layout: Layout) -> list[str]:
    """command + args of the step's container with placeholders filled in."""
    c = step.container
    return [substitute(str(a), ex_input, layout, step) for a in [*c.get("command", []), *c.get("args", [])]]


def _storage() -> list[str]:
    return ["--storage-driver", os.environ.get("STORAGE_DRIVER", "vfs")]


def new_container(image: str) -> str:
    """A fresh working container of `image` (with vfs storage: a full copy of its root)."""
    name = f"thermops-step-{uuid.uuid4().hex[:8]}"
    subprocess.run(
        ["buildah", *_storage(), "from", "--pull=never", "--name", name, image], check=True, stdout=subprocess.DEVNULL
    )
    return name


def remove_container(name: str) -> None:
    """Remove a working container."""
    subprocess.run(["buildah", *_storage(), "rm", name], stdout=subprocess.DEVNULL, check=False)


def run_in_image(image: str, argv: list[str], layout: Layout, env: dict[str, str], container: str | None = None) -> int:
    """Run argv in a fresh working container of `image` (or in `container`) with the artifact folders mounted."""
    name = container or new_container(image)
    try:
        cmd = [
            "buildah",
            *_storage(),
            "run",
            "--isolation",
            "chroot",
            "--volume",
            f"{layout.gcs_host}:{GCS_MOUNT}",
            "--volume",
            f"{layout.outputs_host}:{OUTPUTS_MOUNT}",
        ]
        for k, v in env.items():
            cmd += ["--env", f"{k}={v}"]
        return subprocess.run([*cmd, name, "--", *argv]).returncode
    finally:
        if container is None:
            remove_container(name)


def run_on_host(argv: list[str], env: dict[str, str]) -> int:
    """Run argv here (the step's `python3` is the one first on PATH)."""
    return subprocess.run(argv, env={**os.environ, **env}).returncode


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def summarize(step: Step, layout: Layout, rc: int) -> dict[str, Any]:
    """What the step left on the host: output artifacts, output parameters, executor output."""
    outputs = {}
    for aname in step.outputs.get("artifacts", {}):
        p = layout.host_path(step.task, aname)
        size = (
            sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
            if p.is_dir()
            else (p.stat().st_size if p.exists() else 0)
        )
        outputs[aname] = {"path": str(p), "exists": p.exists(), "bytes": size}
    ex_out_file = layout.outputs_host / "output_metadata.json"
    ex_out = json.loads(ex_out_file.read_text()) if ex_out_file.is_file() else None
    # keep each artifact's metadata next to it, so a later step run can pass it on
    for aname, entry in ((ex_out or {}).get("artifacts") or {}).items():
        meta = (entry.get("artifacts") or [{}])[0].get("metadata")
        if meta and aname in outputs:
            p = Path(outputs[aname]["path"])
            p.parent.joinpath(f"{p.name}.metadata.json").write_text(json.dumps(meta, sort_keys=True))
    params = {}
    for pname in step.outputs.get("parameters", {}):
        f = layout.outputs_host / pname
        # a lightweight component returns its value in the executor output; a
        # container component writes it to its outputFile
        values = (ex_out or {}).get("parameterValues") or {}
        params[pname] = values.get(pname, f.read_text() if f.is_file() else None)
    return {
        "task": step.task,
        "executor": step.executor,
        "exit_code": rc,
        "outputs": outputs,
        "output_parameters": params,
        "executor_output": ex_out,
    }


# Metrics artifacts may carry their values in metadata only (log_metric), no file.
METADATA_ONLY = {"system.Metrics", "system.ClassificationMetrics"}


def missing_outputs(step: Step, summary: dict[str, Any]) -> list[str]:
    """Output artifacts that should hold data on the host but were not written."""
    return [
        n
        for n, d in step.outputs.get("artifacts", {}).items()
        if _type_of(d)["schemaTitle"] not in METADATA_ONLY and not summary["outputs"][n]["exists"]
    ]


def load_step(pipeline: Path, task: str, params: dict[str, Any] | None = None) -> Step:
    """The resolved step `task` of a compiled pipeline file."""
    return find_step(load_pipeline_spec(pipeline), task, params or {})


def run_step(
    pipeline: Path,
    task: str,
    work: Path,
    *,
    image: str | None = None,
    artifacts: dict[str, Path] | None = None,
    params: dict[str, Any] | None = None,
    runtime: str = "buildah",
    env: dict[str, str] | None = None,
    container: str | None = None,
) -> dict[str, Any]:
    """Run one compiled step in the image (or on the host); return the summary dict.

    `container` reuses an existing working container of the image instead of a
    fresh one per step (faster with vfs storage, where each fresh container is a
    full copy of the image; KFP itself starts a fresh container per step).
    """
    step = load_step(pipeline, task, params)
    layout = Layout(work, f"run-{uuid.uuid4().hex[:8]}", runtime)
    for d in (layout.gcs_host, layout.outputs_host):
        d.mkdir(parents=True, exist_ok=True)
    ex_input = executor_input(step, layout, {k: Path(v) for k, v in (artifacts or {}).items()})
    argv = container_argv(step, ex_input, layout)
    (work / f"{step.task}.executor_input.json").write_text(json.dumps(ex_input, indent=2, sort_keys=True))
    compiled_image = step.container.get("image", "")
    use_image = image or compiled_image
    if runtime == "buildah":
        # the image runs as its non-root user: let it write where the launcher would
        for d in [work, *work.rglob("*")]:
            if d.is_dir():
                d.chmod(0o777)
    start = time.perf_counter()
    rc = (
        run_in_image(use_image, argv, layout, env or {}, container)
        if runtime == "buildah"
        else run_on_host(argv, env or {})
    )
    seconds = time.perf_counter() - start
    summary = summarize(step, layout, rc)
    summary.update(
        {
            "image": use_image if runtime == "buildah" else None,
            "compiled_image": compiled_image,
            "runtime": runtime,
            "seconds": round(seconds, 2),
            "work": str(work),
        }
    )
    summary["ok"] = rc == 0 and not missing_outputs(step, summary)
    return summary


def main(argv: list[str] | None = None) -> None:
    """CLI: run one compiled step; print its summary as JSON; exit 1 when it failed."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pipeline", type=Path, required=True, help="compiled pipeline YAML")
    ap.add_argument("--task", required=True, help="task name in the pipeline (e.g. validate)")
    ap.add_argument("--work", type=Path, required=True, help="host folder for the bucket and outputs")
    ap.add_argument("--image", help="image to run in (default: the one in the compiled spec)")
    ap.add_argument("--artifact", action="append", default=[], metavar="NAME=PATH")
    ap.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    ap.add_argument("--runtime", choices=("buildah", "host"), default="buildah")
    ap.add_argument("--container", help="reuse this working container of the image (default: a fresh one)")
    a = ap.parse_args(argv)
    try:
        arts = dict(kv.split("=", 1) for kv in a.artifact)
        params = {k: _parse_value(v) for k, v in (kv.split("=", 1) for kv in a.param)}
        env = dict(kv.split("=", 1) for kv in a.env)
        a.work.mkdir(parents=True, exist_ok=True)
        summary = run_step(
            a.pipeline,
            a.task,
            a.work,
            image=a.image,
            artifacts=arts,
            params=params,
            runtime=a.runtime,
            env=env,
            container=a.container,
        )
    except (StepError, ValueError, OSError, subprocess.CalledProcessError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(summary, indent=2, sort_keys=True))
    if not summary["ok"]:
        missing = missing_outputs(load_step(a.pipeline, a.task, params), summary)
        print(
            f"error: task {a.task} exited {summary['exit_code']}"
            + (f"; outputs not written: {', '.join(missing)}" if missing else ""),
            file=sys.stderr,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
