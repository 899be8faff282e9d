"""The data revision of a Kubeflow run, resolved to a content hash before submission.

KFP's cache key covers a component and its arguments, not the data behind them
(kubeflow/pipelines#7241). So a run takes its data as a content hash that changes
exactly when the data does, given to the first data tasks as an input parameter:

- embedded world: SHA-256 over what the generator stages read: their command, their
  non-stage deps (generator code, calibration files; from dvc.yaml) and their params
  values (the synth section keys they list);
- DVC data: the md5s that `dvc.lock` records for the source stages' outs at a pinned
  commit. A branch or tag is resolved to its commit here and never passed through.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.graph import Graph, build_graph, get_key


class DataRevisionError(ValueError):
    """The data revision cannot be resolved (unknown commit, no dvc.lock entry)."""


@dataclass(frozen=True)
class DataRevision:
    """What a run gets as data: a content hash, and the git commit it came from."""

    data_hash: str
    git_rev: str
    source: str  # "embedded" | "dvc"


def _git(root: Path, *args: str) -> str:
    proc = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise DataRevisionError(f"git {' '.join(args)} in {root}: {proc.stderr.strip() or 'failed'}")
    return proc.stdout.strip()


def resolve_commit(root: str | Path, rev: str = "HEAD") -> str:
    """The full commit id of `rev` (branch, tag or commit) in the repository at `root`."""
    return _git(Path(root), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")


def head_or_unknown(root: str | Path) -> str:
    """HEAD's commit, or `unknown` outside a git repository (provenance only)."""
    try:
        return resolve_commit(root, "HEAD")
    except (DataRevisionError, FileNotFoundError):
        return "unknown"


def data_stages(graph: Graph, params: dict[str, Any]) -> list:
    """The source stages that make data: all but those reading a `kubeflow.file_params` file.

    The baseline stage is a source stage too, but its input (the production registry) is its
    own run argument: a promotion must re-run the gate, not the data stages.
    """
    files = set((params.get("kubeflow") or {}).get("file_params") or [])
    return [s for s in graph.source_stages() if not files & set(graph.static_deps[s.name])]


def embedded_hash(graph: Graph, params: dict[str, Any]) -> str:
    """Content hash of the embedded world: generator stages' cmd, static deps and params."""
    from thermops.io import hash_files

    h = hashlib.sha256()
    for stage in data_stages(graph, params):
        files = [graph.root / d for d in graph.static_deps[stage.name]]
        missing = [str(f) for f in files if not f.exists()]
        if missing:
            raise DataRevisionError(f"stage {stage.name}: deps missing: {', '.join(missing)}")
        values = {k: get_key(params, k) for k in stage.params}
        h.update(json.dumps({"stage": stage.name, "cmd": stage.cmd, "params": values}, sort_keys=True).encode())
        h.update(hash_files(files, root=graph.root).encode())
    return h.hexdigest()


def dvc_hash(root: str | Path, graph: Graph, commit: str, params: dict[str, Any] | None = None) -> str:
    """Hash of the md5s `dvc.lock` records, at `commit`, for the source stages' outs."""
    root = Path(root)
    try:
        text = _git(root, "show", f"{commit}:dvc.lock")
    except DataRevisionError:
        raise DataRevisionError(f"no dvc.lock at commit {commit}: run `dvc repro` and commit it") from None
    lock = yaml.safe_load(text) or {}
    stages = lock.get("stages", {})
    record = {}
    for stage in data_stages(graph, params or {}):
        entry = stages.get(stage.name, {})  # foreach stages are recorded as `name@item`
        outs = entry.get("outs")
        if not outs:
            raise DataRevisionError(f"dvc.lock at {commit[:12]} records no outs for stage {stage.name}")
        record[stage.name] = sorted((o["path"], o.get("md5") or o.get("hash", "")) for o in outs)
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def resolve(
    root: str | Path,
    params: dict[str, Any],
    data_source: str = "embedded",
    rev: str | None = None,
    graph: Graph | None = None,
) -> DataRevision:
    """Resolve the run's data to (content hash, commit) before submission.

    Args:
        root: the repository (dvc.yaml, params.yaml, git history).
        params: the params the run will use (after overrides).
        data_source: `embedded` (hash what the generator reads) or `dvc` (hash dvc.lock).
        rev: git revision of the data (branch, tag or commit; default HEAD).

    Returns:
        The data hash and the full commit id it belongs to.
    """
    root = Path(root).resolve()
    graph = graph or build_graph(root, params)
    if data_source == "dvc":
        commit = resolve_commit(root, rev or "HEAD")
        return DataRevision(dvc_hash(root, graph, commit, params), commit, "dvc")
    if data_source != "embedded":
        raise DataRevisionError(f"data source {data_source!r}: expected embedded or dvc")
    commit = resolve_commit(root, rev) if rev else head_or_unknown(root)
    return DataRevision(embedded_hash(graph, params), commit, "embedded")
