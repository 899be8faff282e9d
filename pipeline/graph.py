"""The stage graph, read from `dvc.yaml`: the one place the graph is stated.

`dvc repro` runs `dvc.yaml` directly; the Kubeflow pipeline is generated from the
same stages (`pipeline.codegen`, `pipeline.pipeline`). This module turns
`dvc.yaml` into plain `Stage` records through DVC's own API (so `foreach` stages,
`${...}` templating and `wdir` resolve exactly as under `dvc repro`), orders them,
finds the artifact edges (a dep that is another stage's out) and the pipeline
parameters (the params keys the stages read, split so no two overlap).
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PARAMS_FILE = "params.yaml"


class GraphError(ValueError):
    """dvc.yaml cannot be turned into a pipeline (bad stage, cycle, foreign params file)."""


@dataclass(frozen=True)
class Out:
    """One declared output of a stage, path relative to the repository root."""

    path: str
    kind: str  # "outs" | "metrics" | "plots"
    persist: bool = False
    cache: bool = True

    @property
    def ident(self) -> str:
        """The output's name as a KFP artifact (a Python identifier)."""
        return ident(self.path)


@dataclass(frozen=True)
class Stage:
    """One resolved DVC stage: `name` is DVC's address (`synthesize@fence_mid`)."""

    name: str
    cmd: str
    wdir: str
    deps: tuple[str, ...]
    outs: tuple[Out, ...]
    params: tuple[str, ...]

    @property
    def step(self) -> str:
        """The step name without the foreach item (`synthesize`)."""
        return self.name.split("@", 1)[0]

    @property
    def ident(self) -> str:
        """The stage as a Python identifier (`synthesize_fence_mid`)."""
        return ident(self.name)

    @property
    def task_name(self) -> str:
        """The KFP task name: `<step>_task`, with the foreach item for foreach stages."""
        return f"{self.ident}_task"


@dataclass
class Graph:
    """Stages in topological order, the artifact edges between them and the params leaves."""

    root: Path
    stages: list[Stage]
    params: dict[str, Any]
    # stage name -> list of (upstream stage name, upstream Out) it reads as artifacts
    inputs: dict[str, list[tuple[str, Out]]] = field(default_factory=dict)
    # stage name -> non-artifact deps (code and static data), taken from the image
    static_deps: dict[str, list[str]] = field(default_factory=dict)
    # params leaf key (dotted) -> default value from params.yaml
    leaves: dict[str, Any] = field(default_factory=dict)
    # stage name -> params leaves it reads
    stage_leaves: dict[str, list[str]] = field(default_factory=dict)

    def stage(self, name: str) -> Stage:
        """The stage called `name` (DVC address)."""
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)

    def upstream(self, name: str) -> set[str]:
        """Names of the stages `name` reads artifacts from, directly."""
        return {up for up, _ in self.inputs.get(name, [])}

    def downstream_closure(self, names: set[str]) -> set[str]:
        """`names` plus every stage that depends on one of them through artifacts."""
        out = set(names)
        for s in self.stages:  # topological order: one pass suffices
            if self.upstream(s.name) & out:
                out.add(s.name)
        return out

    def source_stages(self) -> list[Stage]:
        """Stages that read no other stage's output: the first data tasks."""
        return [s for s in self.stages if not self.inputs.get(s.name)]


def ident(text: str) -> str:
    """A Python identifier for a path or stage name (`data/raw/x-y` -> `data_raw_x_y`)."""
    out = re.sub(r"[^0-9a-zA-Z_]", "_", text).strip("_").lower()
    out = re.sub(r"_+", "_", out)
    return out if out and not out[0].isdigit() else f"p_{out}"


def param_ident(key: str) -> str:
    """The pipeline parameter name of a params key (`prepare.size` -> `prepare__size`)."""
    return key.replace(".", "__").replace("-", "_")


def get_key(params: dict[str, Any], key: str) -> Any:
    """The value of dotted `key` in `params`; KeyError if absent."""
    node: Any = params
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(key)
        node = node[part]
    return node


def set_key(params: dict[str, Any], key: str, value: Any) -> None:
    """Set dotted `key` in `params`, creating intermediate mappings."""
    parts = key.split(".")
    node = params
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """Turn {dotted key: value} into the nested params mapping a step reads."""
    out: dict[str, Any] = {}
    for key in flat:  # leaves never contain each other; their order is params.yaml's
        set_key(out, key, copy.deepcopy(flat[key]))
    return out


def _under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _rel(root: Path, fs_path: str) -> str:
    return Path(os.path.relpath(fs_path, root)).as_posix()


def load_stages(root: str | Path) -> list[Stage]:
    """Every stage of `root/dvc.yaml`, resolved by DVC (foreach expanded, templates filled)."""
    from dvc.repo import Repo  # heavy: only when the graph is built

    root = Path(root).resolve()
    if not (root / "dvc.yaml").is_file():
        raise GraphError(f"{root / 'dvc.yaml'}: not found")
    stages: list[Stage] = []
    with Repo(str(root)) as repo:
        for st in repo.index.stages:
            if not getattr(st, "cmd", None):
                continue  # .dvc files (imports, added data) are data, not stages
            deps, params = [], []
            for d in st.deps:
                keys = getattr(d, "params", None)
                if keys is not None or type(d).__name__ == "ParamsDependency":
                    if _rel(root, d.fs_path) != PARAMS_FILE:
                        raise GraphError(
                            f"dvc.yaml: stage {st.name} reads params from {d.def_path}; only {PARAMS_FILE} is supported"
                        )
                    params.extend(keys or [])
                else:
                    deps.append(_rel(root, d.fs_path))
            outs = []
            for o in st.outs:
                kind = "metrics" if o.metric else "plots" if o.plot else "outs"
                outs.append(Out(_rel(root, o.fs_path), kind, bool(o.persist), bool(o.use_cache)))
            cmd = st.cmd if isinstance(st.cmd, str) else " && ".join(st.cmd)
            # DVC's address is `<dvc.yaml path>:<name>` outside the repo's cwd; a stage
            # of the root dvc.yaml is named by its name alone, as `dvc repro <name>` takes it
            here = _rel(root, st.path)
            name = st.name if here == "dvc.yaml" else f"{here}:{st.name}"
            stages.append(Stage(name, cmd, _rel(root, st.wdir), tuple(deps), tuple(outs), tuple(params)))
    return stages


def _toposort(stages: list[Stage], inputs: dict[str, list[tuple[str, Out]]]) -> list[Stage]:
    order: list[Stage] = []
    done: set[str] = set()
    pending = list(stages)  # keep dvc.yaml order among independent stages
    while pending:
        ready = [s for s in pending if {u for u, _ in inputs[s.name]} <= done]
        if not ready:
            raise GraphError(f"dvc.yaml: cycle among stages {[s.name for s in pending]}")
        for s in ready:
            order.append(s)
            done.add(s.name)
        pending = [s for s in pending if s.name not in done]
    return order


def _leaves(keys: set[str], params: dict[str, Any]) -> list[str]:
    """Split overlapping keys (`synth` and `synth.fps`) so no leaf contains another."""
    leaves = set(keys)
    changed = True
    while changed:
        changed = False
        for k in sorted(leaves):
            if any(o != k and o.startswith(k + ".") for o in leaves):
                value = get_key(params, k)
                if not isinstance(value, dict):
                    raise GraphError(f"params: {k} is read whole and by key, but is not a mapping")
                leaves.remove(k)
                leaves.update(f"{k}.{child}" for child in value)
                changed = True
                break
    return [k for k in _walk(params) if k in leaves]  # params.yaml order: steps may iterate it


def _walk(node: Any, prefix: str = "") -> list[str]:
    """Every dotted key of a params mapping, in document order."""
    out: list[str] = []
    if isinstance(node, dict):
        for k, v in node.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            out.append(key)
            out.extend(_walk(v, key))
    return out


def build_graph(root: str | Path, params: dict[str, Any] | None = None) -> Graph:
    """The stage graph of `root/dvc.yaml`, with artifact edges and params leaves."""
    root = Path(root).resolve()
    stages = load_stages(root)
    if params is None:
        params = yaml.safe_load((root / PARAMS_FILE).read_text()) or {}
    producers = [(s.name, o) for s in stages for o in s.outs]
    seen: dict[str, str] = {}
    for name, o in producers:
        if o.path in seen:
            raise GraphError(f"dvc.yaml: {o.path} is an output of both {seen[o.path]} and {name}")
        seen[o.path] = name
    inputs: dict[str, list[tuple[str, Out]]] = {}
    static: dict[str, list[str]] = {}
    for s in stages:
        inputs[s.name], static[s.name] = [], []
        for dep in s.deps:
            # a dep at, under or above another stage's out is an artifact edge
            hits = [(n, o) for n, o in producers if n != s.name and (_under(dep, o.path) or _under(o.path, dep))]
            if hits:
                for h in hits:
                    if h not in inputs[s.name]:
                        inputs[s.name].append(h)
            else:
                static[s.name].append(dep)
    ordered = _toposort(stages, inputs)
    all_keys: set[str] = set()
    for s in stages:
        for k in s.params:
            try:
                get_key(params, k)
            except KeyError:
                raise GraphError(
                    f"dvc.yaml: stage {s.name} reads params key {k!r}, absent from {PARAMS_FILE}"
                ) from None
            all_keys.add(k)
    leaves = _leaves(all_keys, params)
    stage_leaves = {
        s.name: [lf for lf in leaves if any(_under(lf.replace(".", "/"), k.replace(".", "/")) for k in s.params)]
        for s in stages
    }
    return Graph(
        root=root,
        stages=ordered,
        params=params,
        inputs=inputs,
        static_deps=static,
        leaves={lf: get_key(params, lf) for lf in leaves},
        stage_leaves=stage_leaves,
    )
