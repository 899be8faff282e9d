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


def decode_file(value: str) -> bytes:
    """Inverse of `pipeline.pipeline.encode_file` (`base64:<...>`)."""
    import base64

    if not value.startswith("base64:"):
        raise ValueError("a file argument must be 'base64:<data>' (pipeline.pipeline.encode_file)")
    return base64.b64decode(value[len("base64:") :], validate=True)


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


def _inline_images(page: str, folder: Path) -> str:
    """Inline the images a page references by relative path (a KFP HTML artifact is shown alone)."""
    import base64
    import mimetypes
    import re

    def repl(m: re.Match) -> str:
        quote, ref = m.group(2), m.group(3)
        target = (folder / ref).resolve()
        if ref.startswith(("data:", "http:", "https:", "//", "#")) or not target.is_file():
            return m.group(0)
        mime = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        data = base64.b64encode(target.read_bytes()).decode("ascii")
        return f"{m.group(1)}{quote}data:{mime};base64,{data}{quote}"

    return re.sub(r"(<img\b[^>]*?\bsrc=)(['\"])([^'\"]+)\2", repl, page)


def _confusion_table(labels: list[str], matrix: list[list[int]]) -> str:
    import html

    head = "".join(f"<th>{html.escape(x)}</th>" for x in labels)
    rows = "".join(
        f"<tr><th>{html.escape(lab)}</th>" + "".join(f"<td>{v}</td>" for v in row) + "</tr>"
        for lab, row in zip(labels, matrix)
    )
    return f"<table><tr><th>actual \\ predicted</th>{head}</tr>{rows}</table>"


def _report_html(src: Path, extra: str = "") -> str:
    """The self-contained HTML view of a report out.

    A report folder's own `index.html` is the view (images inlined if it references any by
    path); otherwise a page is made: every PNG/SVG inlined with its name, text files shown,
    and `extra` (e.g. the stage's confusion matrix) appended.
    """
    import html

    if src.is_dir():
        index = src / "index.html"
        if index.is_file():
            return _inline_images(index.read_text(), src)
        files = sorted(p for p in src.rglob("*") if p.is_file())
    else:
        if src.suffix == ".html":
            return _inline_images(src.read_text(), src.parent)
        files = [src]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><style>body{font-family:sans-serif;margin:1em}"
        "table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:2px 8px;text-align:right}</style>"
        f"</head><body><h1>{html.escape(src.name)}</h1>"
    ]
    for f in files:
        rel = html.escape(f.relative_to(src).as_posix() if src.is_dir() else f.name)
        if f.suffix.lower() in (".png", ".svg", ".jpg", ".jpeg", ".gif"):
            parts.append(f"<h2>{rel}</h2><img src='{rel}' alt='{rel}' style='max-width:100%'>")
        elif f.suffix in (".json", ".md", ".txt", ".csv", ".yaml"):
            parts.append(f"<h2>{rel}</h2><pre>{html.escape(f.read_text()[:100_000])}</pre>")
        else:
            parts.append(f"<p>{rel} ({f.stat().st_size} bytes)</p>")
    if extra:
        parts.append(extra)
    page = "\n".join(parts + ["</body></html>"])
    return _inline_images(page, src if src.is_dir() else src.parent)


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
    files = spec.get("files") or {}
    try:
        for dep in spec["static_deps"]:
            if _is_code(root, dep) or dep in files:
                continue
            src = root / dep
            if not src.exists():
                raise FileNotFoundError(f"stage {spec['stage']}: dep {dep} not found under {root}")
            _link(src, work / dep)
        for path, name in files.items():  # small deps that travel as arguments (the production registry)
            (work / path).parent.mkdir(parents=True, exist_ok=True)
            (work / path).write_bytes(decode_file(args[name]))
        for i in spec["inputs"]:
            _link(Path(args[i["name"]].path), work / i["path"])
        enc = set(spec.get("encoded", []))
        params = {leaf: decode_param(args[name], leaf in enc) for leaf, name in spec["params"].items()}
        (work / "params.yaml").write_text(yaml.safe_dump(nest(params), sort_keys=False))
        prov = _provenance(args, spec, [args[i["name"]] for i in spec["inputs"]])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        # the pod's BentoML store and the step timings live in the scratch tree: nothing of
        # either leaves the pod unless exported below
        env["BENTOML_HOME"] = str(work / ".bentoml")
        env["THERMOPS_TIMINGS_DIR"] = str(work / ".thermops" / "timings")
        cmd = _command(spec["cmd"], int(spec.get("nproc_per_node", 1)))
        print(f"[thermops] stage {spec['stage']}: {cmd}", flush=True)
        proc = subprocess.run(cmd, shell=True, cwd=work / spec["wdir"], env=env)
        verdict = _gate_verdict(work, spec.get("gate"))
        refused = verdict is False and proc.returncode in (0, EXIT_GATE_FAILED)
        if proc.returncode != 0 and not refused:
            raise RuntimeError(f"stage {spec['stage']}: `{spec['cmd']}` exited {proc.returncode}")
        # a gate that exits 3 on a failed verdict (gate.enforce) stops `dvc repro` before
        # packaging; here it is a plain False output, and dsl.If skips the packaging
        timings = _timings(work)
        extra = _confusion_view(work, spec, params)
        for o in spec["outputs"]:
            src = work / o["path"]
            if not src.exists():
                raise FileNotFoundError(f"stage {spec['stage']}: declared out {o['path']} was not written")
            art = args[o["name"]]
            _export(art, o, src, params, extra)
            art.metadata.update({"stage": spec["stage"], "path": o["path"], **prov})
            if timings:
                art.metadata["timings_s"] = timings  # metadata, not metrics: KFP's metrics are decision figures
        if spec.get("export"):
            _export_candidate(work, spec, args, env, prov)
        if spec.get("gate"):
            if verdict is None:
                raise FileNotFoundError(
                    f"stage {spec['stage']}: no verdict {spec['gate']['key']} in {spec['gate']['metrics']}"
                )
            return verdict
        return None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _timings(work: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in sorted((work / ".thermops" / "timings").glob("*.json")):
        out[f.stem] = json.loads(f.read_text())
    return out


def _confusion_view(work: Path, spec: dict[str, Any], params: dict[str, Any]) -> str:
    """The stage's confusion matrix as an HTML table, for its report view (empty when it has none)."""
    for o in spec["outputs"]:
        if o["type"] == "ClassificationMetrics" and (work / o["path"]).exists():
            classes = params.get("classes")
            labels, matrix = read_confusion(work / o["path"], classes if isinstance(classes, list) else None)
            return f"<h2>Confusion matrix ({o['path']})</h2>" + _confusion_table(labels, matrix)
    return ""


def _export_candidate(work: Path, spec: dict[str, Any], args: dict[str, Any], env: dict[str, str], prov: dict) -> None:
    """The gated model and its bento leave the pod: into the store (S3 API), and as the bento_archive artifact."""
    exp = spec["export"]
    store = args[exp["store_param"]]
    archive = Path(args["bento_archive"].path)
    archive.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pipeline.production", "--root", str(work), "--store", store, "export"]
    cmd += ["--bento-json", str(work / exp["bento_json"]), "--archive-out", str(archive)]
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"stage {spec['stage']}: export to {store} failed: {proc.stderr.strip()[-2000:]}")
    result = json.loads(proc.stdout)
    print(f"[thermops] candidate {result['model_tag']} exported to {store} as {result['digest']}", flush=True)
    args["bento_archive"].metadata.update({**result, "stage": spec["stage"], **prov})


def _export(art: Any, o: dict[str, Any], src: Path, params: dict[str, Any] | None = None, extra: str = "") -> None:
    """Copy an out into its artifact and fill the typed parts (metrics, matrix, views)."""
    if o["role"] == "html":
        Path(art.path).parent.mkdir(parents=True, exist_ok=True)
        Path(art.path).write_text(_report_html(src, extra))
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


ASKPASS = """#!/bin/sh
# git asks for a username, then a password: answer from the environment, never from a URL
case "$1" in
    Username*) printf '%s' "${THERMOPS_GIT_USER:-x-access-token}" ;;
    *) printf '%s' "$THERMOPS_GIT_TOKEN" ;;
esac
"""


def redact(text: str, secrets: list[str]) -> str:
    """`text` with every secret value replaced by `***` (for anything a failed command prints)."""
    for value in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):
        text = text.replace(value, "***")
    return text


def _secret_values(env: dict[str, str]) -> list[str]:
    keys = ("TOKEN", "PASSWORD", "SECRET", "ACCESS_KEY")
    return [v for k, v in env.items() if any(s in k for s in keys)]


def _run_redacted(cmd: list[str], env: dict[str, str], cwd: Path | None = None, what: str = "") -> None:
    """Run `cmd`; print its output and raise on failure, with every secret of `env` redacted."""
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    secrets = _secret_values(env)
    out = redact((proc.stdout or "") + (proc.stderr or ""), secrets)
    if out.strip():
        print(out.rstrip(), flush=True)
    if proc.returncode != 0:
        tail = "\n".join(out.strip().splitlines()[-5:])
        raise RuntimeError(f"{what or cmd[0]} failed (exit {proc.returncode}): {tail}")


def run_fetch_task(spec_json: str, args: dict[str, Any]) -> None:
    """Inside a KFP task: clone the data repo at a pinned commit and `dvc pull` the source stages' outs.

    Credentials for git and the DVC remote come from the environment, which the pipeline
    fills from Kubernetes secrets. The git token reaches git through GIT_ASKPASS, never the
    clone URL, and every secret value is redacted from what a failed command prints.
    """
    spec = json.loads(spec_json)
    work = Path(tempfile.mkdtemp(prefix="thermops-fetch-"))
    helper = Path(tempfile.mkdtemp(prefix="thermops-askpass-"))
    try:
        commit = args["git_rev"]
        url = args["data_repo"]
        env = dict(os.environ)
        token = env.pop("GIT_TOKEN", None)  # from the dvc_remote secret, for a private repo
        env["GIT_TERMINAL_PROMPT"] = "0"
        if token:
            askpass = helper / "askpass.sh"
            askpass.write_text(ASKPASS)
            askpass.chmod(0o700)
            env.update(GIT_ASKPASS=str(askpass), THERMOPS_GIT_TOKEN=token)
        _run_redacted(["git", "clone", "--quiet", url, str(work)], env, what=f"git clone {url}")
        _run_redacted(["git", "-C", str(work), "checkout", "--quiet", commit], env, what=f"git checkout {commit}")
        pull = [sys.executable, "-m", "dvc", "pull", *spec["stages"]]
        if args.get("dvc_remote"):
            pull += ["--remote", args["dvc_remote"]]
        _run_redacted(pull, env, cwd=work, what="dvc pull")
        for o in spec["outputs"]:
            art = args[o["name"]]
            _copy_out(work / o["path"], Path(art.path))
            art.metadata.update(
                {"stage": "fetch", "path": o["path"], "data_hash": args["data_hash"], "git_rev": commit}
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(helper, ignore_errors=True)
