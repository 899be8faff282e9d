"""What runs inside a Kubeflow task: one DVC stage in a scratch working tree.

The generated component (`pipeline.codegen`) calls `run_stage_task` with its stage
description and KFP arguments: input artifacts are linked at their `dvc.yaml`
paths, params are written into the scratch `params.yaml`, the stage's own `cmd`
runs, and every declared out is copied to its typed output artifact with its
provenance and views. `run_fetch_task` clones the data repository at a pinned
commit and pulls the source stages' outputs from the DVC remote.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from components._cli import EXIT_GATE_FAILED
from pipeline.codegen import decode_param
from pipeline.graph import nest


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
        refused = verdict is False and proc.returncode in (0, EXIT_GATE_FAILED)
        if proc.returncode != 0 and not refused:
            raise RuntimeError(f"stage {spec['stage']}: `{spec['cmd']}` exited {proc.returncode}")
        # a gate that exits 3 on a failed verdict (gate.enforce) stops `dvc repro` before
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
                raise FileNotFoundError(
                    f"stage {spec['stage']}: no verdict {spec['gate']['key']} in {spec['gate']['metrics']}"
                )
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
            url = "https://x-access-token:" + token + "@" + url[len("https://") :]
        subprocess.run(["git", "clone", "--quiet", url, str(work)], check=True)
        subprocess.run(["git", "-C", str(work), "checkout", "--quiet", commit], check=True)
        pull = [sys.executable, "-m", "dvc", "pull", *spec["stages"]]
        if args.get("dvc_remote"):
            pull += ["--remote", args["dvc_remote"]]
        subprocess.run(pull, check=True, cwd=work)
        for o in spec["outputs"]:
            art = args[o["name"]]
            _copy_out(work / o["path"], Path(art.path))
            art.metadata.update(
                {"stage": "fetch", "path": o["path"], "data_hash": args["data_hash"], "git_rev": commit}
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
