"""Compiled pipeline steps run inside the built component image.

Needs the image: `make image-test` builds it and runs this module with
THERMOPS_IMAGE set (e.g. localhost/thermops:latest); in the normal suite, where
no image is built, the module is skipped as a whole (building the image takes
minutes and 6+ GB of disk). Everything runs for real: the pipeline is compiled
with `python -m pipeline compile --local --image $THERMOPS_IMAGE`, and each step's
container command from the compiled YAML runs with `buildah run` in the image,
artifacts under a host folder mapped to /gcs as the KFP launcher maps a bucket.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IMAGE = os.environ.get("THERMOPS_IMAGE", "")
pytestmark = pytest.mark.skipif(not IMAGE, reason="needs the built image: run `make image-test`")

sys.path.insert(0, str(ROOT / "scripts" / "image"))
import run_step  # noqa: E402

STORAGE = ["--storage-driver", os.environ.get("STORAGE_DRIVER", "vfs")]


@pytest.fixture(scope="module")
def container():
    """One working container of IMAGE for this module's steps.

    With vfs storage a fresh container is a full copy of the 6.7 GB image (over a
    minute here), so the steps share one; each step still gets its own artifact
    folders and scratch tree. The failing-import test uses a fresh container, as
    KFP does for every step.
    """
    name = run_step.new_container(IMAGE)
    yield name
    run_step.remove_container(name)


def in_image(container: str, *cmd: str) -> subprocess.CompletedProcess:
    """Run a command in the module's working container of IMAGE; capture its output."""
    return subprocess.run(
        ["buildah", *STORAGE, "run", "--isolation", "chroot", container, "--", *cmd], capture_output=True, text=True
    )


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("kfp") / "pipeline.yaml"
    subprocess.run(
        # --local: an in-image test run (the image is a local build, not pushed and pinned)
        [sys.executable, "-m", "pipeline", "compile", "--local", "--out", str(out), "--image", IMAGE],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    return out


@pytest.fixture(scope="module")
def overrides(small_params, compiled) -> dict:
    """Pipeline parameter values for the small test run (params shrunk as the training tests do)."""
    from training_helpers import small_training_params

    p = small_training_params(small_params)
    p["finetune"]["low_label"]["seeds"] = p["finetune"]["low_label"]["seeds"][:1]
    spec = run_step.load_pipeline_spec(compiled)
    out = {}
    for name in spec["root"]["inputDefinitions"]["parameters"]:
        node = p
        try:
            for part in name.split("__"):
                node = node[part]
        except (KeyError, TypeError):
            continue  # data_hash, git_rev: compiled defaults
        out[name] = node
    return out


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("image-run")


def test_image_holds_the_pinned_project_and_no_data(container):
    proc = in_image(container, "sh", "-ec", "id -u; python3 -m pip freeze --all; ls -A /app; ls -A /app/data")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "1000"  # the non-root user
    frozen = dict(ln.split("==", 1) for ln in lines if "==" in ln)
    cons = dict(ln.split("==", 1) for ln in (ROOT / "constraints.txt").read_text().splitlines() if "==" in ln)
    norm = lambda n: n.lower().replace("_", "-").replace(".", "-")  # noqa: E731
    cons = {norm(k): v for k, v in cons.items()}
    drift = {k: (v, cons[norm(k)]) for k, v in frozen.items() if norm(k) in cons and cons[norm(k)] != v}
    assert not drift, f"image version != constraints.txt: {drift}"
    assert frozen["torch"] == cons["torch"]
    assert "thermops @ file:///app" in lines  # the project, installed from the tree at /app
    listing = set(lines)
    assert {"thermops", "components", "pipeline", "params.yaml", "dvc.yaml"} <= listing
    assert not {"models", "reports", "metrics", ".git", ".venv"} & listing
    assert lines[-1] == "calibration"  # /app/data holds only the calibration files


def _run(compiled: Path, task: str, work: Path, overrides: dict, artifacts: dict, container: str) -> dict:
    summary = run_step.run_step(compiled, task, work / task, params=overrides, artifacts=artifacts, container=container)
    assert summary["image"] == IMAGE and summary["compiled_image"] == IMAGE
    (work / f"{task}.summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    return summary


@pytest.fixture(scope="module")
def validated(compiled, work, overrides, prepared_dir, container) -> dict:
    return _run(compiled, "validate", work, overrides, {"data_prepared": prepared_dir}, container)


def test_validate_runs_in_the_image(validated):
    assert validated["ok"], validated
    report = Path(validated["outputs"]["reports_validation"]["path"])
    summary = json.loads((report / "summary.json").read_text())
    assert summary  # the GX summary the later stages read
    metrics = json.loads(Path(validated["outputs"]["metrics_validate_json"]["path"]).read_text())
    assert metrics
    assert Path(validated["outputs"]["reports_validation_html"]["path"]).read_text().lstrip().startswith("<")
    # provenance the launcher would record: stage, params hash
    meta = validated["executor_output"]["artifacts"]["reports_validation"]["artifacts"][0]["metadata"]
    assert meta["stage"] == "validate" and meta["params_hash"]


@pytest.fixture(scope="module")
def pretrained(compiled, work, overrides, prepared_dir, validated, container) -> dict:
    from training_helpers import full_plan, make_unlabeled

    report = Path(validated["outputs"]["reports_validation"]["path"])
    unlabeled = make_unlabeled(work / "unlabeled")  # the `unlabeled` step's output format, made on the host
    arts = {
        "data_prepared": prepared_dir,
        "reports_validation": report,
        "data_unlabeled": unlabeled,
        "models_warmstart": full_plan(work / "warmstart"),
    }
    return _run(compiled, "pretrain", work, overrides, arts, container)


@pytest.fixture(scope="module")
def finetuned(compiled, work, overrides, prepared_dir, validated, pretrained, container) -> dict:
    from training_helpers import full_plan

    assert pretrained["ok"], pretrained
    arts = {
        "data_prepared": prepared_dir,
        "reports_validation": Path(validated["outputs"]["reports_validation"]["path"]),
        "models_pretrained": Path(pretrained["outputs"]["models_pretrained"]["path"]),
        "models_warmstart": full_plan(work / "warmstart"),
    }
    return _run(compiled, "finetune", work, overrides, arts, container)


def test_finetune_runs_in_the_image(finetuned):
    assert finetuned["ok"], finetuned
    from thermops.model.card import load_model_dir

    model_dir = Path(finetuned["outputs"]["models_finetuned"]["path"])
    assert (model_dir / "model.pt").is_file() and (model_dir / "card.json").is_file()
    loaded = load_model_dir(model_dir)  # the host can load what the image wrote
    assert loaded is not None
    metrics = json.loads(Path(finetuned["outputs"]["metrics_finetune_json"]["path"]).read_text())
    assert metrics
    confusion = finetuned["executor_output"]["artifacts"]["metrics_confusion_csv"]["artifacts"][0]["metadata"]
    # logged for the KFP UI: one row per class of params.yaml, counts of the test split
    labels = [a["displayName"] for a in confusion["confusionMatrix"]["annotationSpecs"]]
    rows = [r["row"] for r in confusion["confusionMatrix"]["rows"]]
    assert len(rows) == len(labels) >= 2 and all(len(r) == len(labels) for r in rows)
    assert sum(map(sum, rows)) > 0
