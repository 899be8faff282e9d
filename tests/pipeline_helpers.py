"""A toy DVC project for the pipeline tests: the generator must work on any dvc.yaml.

Five toy stages shaped like thermops's (a foreach generator, prepare, train, gate,
package), each a few lines of Python, so the KFP local runner and `dvc repro` run
them in seconds.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

TOY_STEP = '''
"""Toy stages: gen, prep, train, gate, package."""
import json, sys, random
from pathlib import Path
import yaml

p = yaml.safe_load(open("params.yaml"))
step = sys.argv[1]
if step == "gen":
    cam = sys.argv[2]
    out = Path("data/raw") / cam
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(p["seed"] + len(cam))
    calib = Path("calib", cam + ".txt").read_text()
    (out / "values.txt").write_text(calib + " ".join(str(rng.randint(0, 99)) for _ in range(p["gen"]["n"])))
elif step == "prep":
    out = Path("data/prepared"); out.mkdir(parents=True, exist_ok=True)
    vals = []
    for f in sorted(Path("data/raw").glob("*/values.txt")):
        vals += [int(v) * p["prep"]["scale"] for v in f.read_text().split("\\n")[-1].split()]
    (out / "values.json").write_text(json.dumps(vals))
elif step == "train":
    vals = json.loads(Path("data/prepared/values.json").read_text())
    Path("models/toy").mkdir(parents=True, exist_ok=True)
    mean = sum(vals) / len(vals)
    Path("models/toy/model.json").write_text(json.dumps({"mean": mean, "lr": p["train"]["lr"]}))
    Path("metrics").mkdir(exist_ok=True)
    Path("metrics/train.json").write_text(json.dumps({"accuracy": mean / 1000, "loss": 1 - mean / 1000}))
    Path("metrics/confusion.json").write_text(json.dumps({"labels": ["a", "b"], "matrix": [[3, 1], [0, 4]]}))
elif step == "gate":
    m = json.loads(Path("metrics/train.json").read_text())
    passed = m["accuracy"] >= p["gate"]["min_accuracy"]
    Path("reports/gate").mkdir(parents=True, exist_ok=True)
    Path("reports/gate/report.md").write_text("# gate\\n\\npassed: %s\\n" % passed)
    Path("metrics/gate.json").write_text(json.dumps({"passed": passed, "accuracy": m["accuracy"]}))
elif step == "package":
    Path("models").mkdir(exist_ok=True)
    Path("models/bento.json").write_text(json.dumps({"model": json.loads(Path("models/toy/model.json").read_text())}))
'''

TOY_DVC = {
    "stages": {
        "gen": {
            "foreach": "${gen.cams}",
            "do": {
                "cmd": "python step.py gen ${item}",
                "deps": ["step.py", "calib/${item}.txt"],
                "params": ["seed", "gen.n"],
                "outs": ["data/raw/${item}"],
            },
        },
        "prep": {
            "cmd": "python step.py prep",
            "deps": ["step.py", "data/raw"],
            "params": ["prep"],
            "outs": ["data/prepared"],
        },
        "train": {
            "cmd": "python step.py train",
            "deps": ["step.py", "data/prepared"],
            "params": ["train.lr", "seed"],
            "outs": ["models/toy"],
            "metrics": [{"metrics/train.json": {"cache": False}}],
            "plots": ["metrics/confusion.json"],
        },
        "gate": {
            "cmd": "python step.py gate",
            "deps": ["step.py", "metrics/train.json"],
            "params": ["gate.min_accuracy"],
            "outs": ["reports/gate"],
            "metrics": [{"metrics/gate.json": {"cache": False}}],
        },
        "package": {
            "cmd": "python step.py package",
            "deps": ["step.py", "models/toy", "metrics/gate.json"],
            "outs": ["models/bento.json"],
        },
    }
}


def kubeflow_section() -> dict:
    """A `kubeflow` params section like the project's, for the toy stages."""
    return {
        "image": "ghcr.io/thermops/thermops@sha256:" + "0123456789abcdef" * 4,
        "project_root": "/app",
        "pipeline_name": "toy",
        "data_source": "embedded",
        "data_repo": "https://example.invalid/thermops.git",
        "dvc_remote": "",
        "caching": True,
        "retries": 2,
        "resources": {"default": {"cpu": "500m", "memory": "1Gi"}, "train": {"cpu": "4", "memory": "8Gi"}},
        "gpu": {
            "stages": ["train", "gate"],
            "accelerator": "nvidia.com/gpu",
            "gpus_per_node": 2,
            "ddp_stages": ["train"],
            "node_selector": {"nvidia.com/gpu.present": "true"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        },
        "gate": {"stage": "gate", "metrics": "metrics/gate.json", "key": "passed"},
        "file_params": [],
        "export": {"stage": "", "bento_json": "models/bento.json"},
        "serving_image": {"registry": "", "builder": ""},
        "secrets": {
            "dvc_remote": {
                "secret": "toy-dvc-remote",
                "env": {"AWS_ACCESS_KEY_ID": "access_key_id", "AWS_SECRET_ACCESS_KEY": "secret_access_key"},
                "stages": ["fetch"],
            },
            "registry": {
                "secret": "toy-registry",
                "env": {"REGISTRY_USERNAME": "username", "REGISTRY_PASSWORD": "password"},
                "stages": ["package"],
            },
        },
    }


def toy_params() -> dict:
    """Params of the toy project."""
    return {
        "seed": 7,
        "gen": {"n": 5, "cams": ["cam_a", "cam_b"]},
        "prep": {"scale": 2.0, "offset": 0},
        "train": {"lr": 0.1, "epochs": 1},
        "gate": {"min_accuracy": 0.0},
        "kubeflow": kubeflow_section(),
    }


def git(root: Path, *args: str) -> str:
    """Run git in `root` and return its stdout."""
    return subprocess.run(
        ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def make_toy_repo(root: Path, params: dict | None = None) -> Path:
    """Write the toy project (git + DVC initialized, one commit) under `root`."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "step.py").write_text(TOY_STEP)
    (root / "calib").mkdir(exist_ok=True)
    for cam in ("cam_a", "cam_b"):
        (root / "calib" / f"{cam}.txt").write_text(f"calibration {cam} v1\n")
    (root / "dvc.yaml").write_text(yaml.safe_dump(TOY_DVC, sort_keys=False))
    (root / "params.yaml").write_text(yaml.safe_dump(params or toy_params(), sort_keys=False))
    git(root, "init", "-q", "-b", "main")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=root, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "config", "core.autostage", "false"], cwd=root, check=True)
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "toy")
    return root


# Tiny params for the real stages: one camera, few clips, one epoch, small gate subsets.
TINY_OVERRIDES = {
    "synth": {"clips": {"train": 2, "val": 1, "test": 2}, "stills": {"train": 4, "val": 2, "test": 4}},
    "pretrain": {"optim": {"epochs": 1, "batch_size": 16, "warmup_epochs": 0}},
    "finetune": {
        "optim": {"epochs": 1, "batch_size": 8, "warmup_epochs": 0},
        "low_label": {"optim": {"epochs": 1, "batch_size": 4, "warmup_epochs": 0}},
    },
    "gate": {
        "attack_subset": 8,
        "cw": {"subset": 4, "steps": 5, "search_steps": 1},
        "corruptions": {"subset": 8},
        "perspective": {"subset": 8, "worst_case": {"subset": 4, "steps": 2}},
    },
    "unlabeled": {"clips_per_camera": 1, "frames_per_clip": 8},
}
# A gate every one-epoch model passes: only the mechanism (gate -> package, baseline) is under test.
LOOSE_GATE = {
    "gate": {
        "thresholds": {
            "clean_accuracy": 0.0,
            "max_mean_ce": 1.0e6,
            "max_flip_rate": 1.0,
            "max_stability_slope": 1.0e9,
            "robust_accuracy": {"linf": {0.01: 0.0}, "l2": {0.25: 0.0}},
        },
        "sanity": {
            "monotone_tol": 1.0,
            "large_eps_max_accuracy": 1.0,
            "more_steps_tol": 1.0,
            "max_zero_grad_fraction": 1.0,
            "black_box_tol": 1.0,
        },
        # a one-epoch model against another one-epoch model
        "regression": {"accuracy_tol": 1.0, "relative_tol": 100.0, "z": 1.0},
    },
}


def copy_repo(src: Path, dst: Path, params: dict) -> Path:
    """A temp copy of the working tree (tracked + untracked, not ignored) with `params`, committed."""
    import shutil

    files = subprocess.run(
        ["git", "-C", str(src), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split("\0")
    from pipeline.graph import load_stages

    outs = [o.path for st in load_stages(src) for o in st.outs]  # outputs are made, not copied
    for rel in filter(None, files):
        s = src / rel
        if not s.is_file() or rel == "dvc.lock" or rel.startswith(("tests/", "docs/", "benchmarks/")):
            continue
        if any(rel == o or rel.startswith(o + "/") for o in outs):
            continue
        d = dst / rel
        d.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(s, d)
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(dst, "init", "-q", "-b", "main")
    git(dst, "add", ".")
    git(dst, "commit", "-q", "-m", "copy")
    return dst


# -- reading a compiled pipeline spec ------------------------------------------------------


def _walk_tasks(
    spec: dict[str, Any], dag: dict[str, Any], out: dict[str, dict[str, Any]], parent_inputs: dict[str, Any]
) -> None:
    for key, task in dag.get("tasks", {}).items():
        comp = spec["components"][task["componentRef"]["name"]]
        ins = task.get("inputs", {})
        params = {}
        for name, p in ins.get("parameters", {}).items():
            if "componentInputParameter" in p:  # a pipeline parameter, or a condition's channel
                params[name] = parent_inputs.get(p["componentInputParameter"], ("param", p["componentInputParameter"]))
            elif "taskOutputParameter" in p:
                params[name] = ("task", p["taskOutputParameter"]["producerTask"])
            else:
                params[name] = ("constant", json.dumps(p.get("runtimeValue", {}), sort_keys=True))
        arts = {}
        for name, a in ins.get("artifacts", {}).items():
            if "taskOutputArtifact" in a:
                arts[name] = a["taskOutputArtifact"]["producerTask"]
            else:
                src = parent_inputs.get(a.get("componentInputArtifact"), ("artifact", a.get("componentInputArtifact")))
                arts[name] = src[1] if src[0] == "task" else src
        if "dag" in comp:  # a condition: its tasks see the channels under the names given here
            inner = {n: (v if not isinstance(v, str) else ("task", v)) for n, v in {**params, **arts}.items()}
            _walk_tasks(spec, comp["dag"], out, inner)
            continue
        display = task.get("taskInfo", {}).get("name", key)
        out[key] = {"display": display, "component": task["componentRef"]["name"], "params": params, "artifacts": arts}


def task_inputs(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every executing task of a compiled pipeline spec with where each input comes from.

    `params[name]` is ("param", pipeline parameter) / ("task", producer) / ("constant", v);
    `artifacts[name]` is the producing task's key. Condition sub-DAGs are flattened.
    """
    out: dict[str, dict[str, Any]] = {}
    _walk_tasks(spec, spec["root"]["dag"], out, {})
    return out


def resolved_inputs(spec: dict[str, Any], arguments: dict[str, Any]) -> dict[str, str]:
    """Per task, a digest of its resolved inputs (parameters and, recursively, producers).

    This is what KFP's cache key covers besides the component: two runs whose digests
    agree for a task would hit the cache for it; a changed digest means a re-run.
    """
    defaults = {
        k: v.get("defaultValue") for k, v in spec["root"].get("inputDefinitions", {}).get("parameters", {}).items()
    }
    values = {**defaults, **arguments}
    tasks = task_inputs(spec)
    digests: dict[str, str] = {}

    def digest(key: str) -> str:
        if key in digests:
            return digests[key]
        t = tasks[key]
        label = spec["components"][t["component"]].get("executorLabel")
        executor = spec.get("deploymentSpec", {}).get("executors", {}).get(label, {})
        parts: dict[str, Any] = {"component": json.dumps(executor, sort_keys=True)}
        for name, src in sorted(t["params"].items()):
            kind, ref = src
            parts[name] = (
                values.get(ref) if kind == "param" else digest(ref) if kind == "task" and ref in tasks else ref
            )
        for name, producer in sorted(t["artifacts"].items()):
            parts[name] = digest(producer) if isinstance(producer, str) and producer in tasks else str(producer)
        digests[key] = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
        return digests[key]

    return {k: digest(k) for k in tasks}


def directly_changed(spec: dict[str, Any], args_a: dict[str, Any], args_b: dict[str, Any]) -> set[str]:
    """Tasks whose own parameter inputs differ between two argument sets (what `dvc status` reports)."""
    defaults = {
        k: v.get("defaultValue") for k, v in spec["root"].get("inputDefinitions", {}).get("parameters", {}).items()
    }
    a, b = {**defaults, **args_a}, {**defaults, **args_b}
    out = set()
    for key, t in task_inputs(spec).items():
        for kind, ref in t["params"].values():
            if kind == "param" and a.get(ref) != b.get(ref):
                out.add(key)
    return out


def load_spec(text_or_path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pipeline spec, Kubernetes platform spec) of a compiled pipeline YAML."""
    text = (
        Path(text_or_path).read_text()
        if isinstance(text_or_path, Path) or "\n" not in str(text_or_path)
        else str(text_or_path)
    )
    docs = [d for d in yaml.safe_load_all(text) if d]
    spec = next(d for d in docs if "root" in d)
    platform = next((d for d in docs if "platforms" in d), {})
    return spec, platform.get("platforms", {}).get("kubernetes", {})
