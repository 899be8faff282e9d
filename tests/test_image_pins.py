"""Fast checks of the component image's definition (no image build needed).

- No drift between image and project: the Dockerfile installs pyproject's
  dependencies under constraints.txt, its torch and python pins equal
  pyproject's, and every `==` pin of pyproject equals constraints.txt.
- The build context carries no training data (.dockerignore).
- scripts/image/run_step.py, which runs a compiled step as the KFP launcher
  would, resolves a compiled pipeline correctly: run here on the host against a
  tiny two-step pipeline (the in-image run is tests/test_image_run.py).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts" / "image"))
import run_step  # noqa: E402


def _pyproject_pins() -> dict[str, str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {}
    for d in deps:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s;]+)\s*", d)
        if m:
            pins[_norm(m.group(1))] = m.group(2)
    return pins


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _constraints() -> dict[str, str]:
    out = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            out[_norm(name)] = version.strip()
    return out


def _dockerfile_args() -> dict[str, str]:
    text = (ROOT / "Dockerfile").read_text()
    return dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, flags=re.M))


def test_pyproject_pins_match_constraints():
    cons = _constraints()
    pins = _pyproject_pins()
    assert "torch" in pins and "kfp" in pins
    drift = {n: (v, cons.get(n)) for n, v in pins.items() if cons.get(n) != v}
    assert not drift, f"pyproject pin != constraints.txt: {drift}"


def test_dockerfile_pins_match_project():
    args = _dockerfile_args()
    pins = _pyproject_pins()
    assert args["TORCH_VERSION"] == pins["torch"] == _constraints()["torch"]
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    lo, hi = re.fullmatch(r">=(\d+\.\d+),<(\d+\.\d+)", requires.replace(" ", "")).groups()
    assert args["PYTHON_VERSION"] == lo, f"Dockerfile python {args['PYTHON_VERSION']} vs requires-python {requires}"
    major, minor = lo.split(".")
    assert hi == f"{major}.{int(minor) + 1}", "requires-python allows more than one minor version"
    # the default cluster base ships the pinned torch, so its torch is kept (docs/image.md)
    base = args["BASE_IMAGE"]
    assert base.startswith(f"pytorch/pytorch:{pins['torch']}-cuda"), base
    assert base.endswith("-runtime"), base


def test_dockerfile_installs_project_deps_under_constraints():
    text = (ROOT / "Dockerfile").read_text()
    # dependencies come from pyproject, every version from constraints.txt
    assert "COPY pyproject.toml constraints.txt" in text
    assert "['project']['dependencies']" in text
    assert re.search(r"pip install [^\n]*-c constraints\.txt -r requirements\.txt", text)
    # no version literal of a pinned package hides in the Dockerfile
    code = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
    for name in _pyproject_pins():
        assert not re.search(rf"\b{re.escape(name)}==", code, flags=re.I), f"{name} pinned in Dockerfile"
    # the project and a non-root user, labelled with the revision
    assert re.search(r"^USER thermops$", text, flags=re.M)
    assert re.search(r"^WORKDIR /app$", text, flags=re.M)
    assert 'org.opencontainers.image.revision="${GIT_REVISION}"' in text
    assert "pip check" in text


def test_dockerignore_keeps_data_out():
    lines = {
        ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln.strip() and not ln.startswith("#")
    }
    for excluded in (".git", ".venv", ".dvc/cache", "models/", "reports/", "metrics/"):
        assert excluded in lines, f"{excluded} not excluded from the build context"
    assert "data/*" in lines and "!data/calibration" in lines  # data out, calibration configs in


TINY = """
from kfp import dsl, compiler
from kfp.dsl import Input, Output, Dataset, Model, Metrics

@dsl.component(base_image="localhost/thermops:latest", install_kfp_package=False)
def make(n: int, out: Output[Dataset]) -> None:
    out.metadata["n"] = n
    open(out.path, "w").write("x" * n)

@dsl.component(base_image="localhost/thermops:latest", install_kfp_package=False)
def use(data: Input[Dataset], model: Output[Model], m: Output[Metrics], scale: float = 2.0) -> bool:
    open(model.path, "w").write(open(data.path).read() + str(data.metadata["n"]))
    m.log_metric("len", len(open(data.path).read()) * scale)
    return True

@dsl.pipeline(name="tiny")
def p(n: int = 3):
    a = make(n=n)
    with dsl.If(n > 0):
        use(data=a.outputs["out"])

compiler.Compiler().compile(p, sys.argv[1])
"""


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tiny")
    (d / "tiny.py").write_text("import sys\n" + TINY)
    out = d / "tiny.yaml"
    subprocess.run([sys.executable, str(d / "tiny.py"), str(out)], check=True)
    return out


def test_find_step_resolves_parameters_through_sub_dags(tiny_pipeline):
    spec = run_step.load_pipeline_spec(tiny_pipeline)
    make = run_step.find_step(spec, "make")
    assert make.parameters == {"n": 3}  # root default, typed int
    assert make.container["image"] == "localhost/thermops:latest"
    use = run_step.find_step(spec, "use")  # inside the dsl.If sub-DAG
    assert use.parameters == {"scale": 2.0}
    assert use.input_artifacts == {"data": {"producer": "make", "key": "out"}}
    assert run_step.find_step(spec, "make", {"n": 7}).parameters == {"n": 7}
    with pytest.raises(run_step.StepError, match="no task 'nope'.*make"):
        run_step.find_step(spec, "nope")


def test_executor_input_maps_artifacts_to_gcs_mount(tiny_pipeline, tmp_path):
    spec = run_step.load_pipeline_spec(tiny_pipeline)
    step = run_step.find_step(spec, "use")
    layout = run_step.Layout(tmp_path, "run-x", "buildah")
    src = tmp_path / "in.txt"
    src.write_text("abc")
    ex = run_step.executor_input(step, layout, {"data": src})
    uri = ex["inputs"]["artifacts"]["data"]["artifacts"][0]["uri"]
    assert uri == "gs://thermops-root/run-x/make/out"
    assert (tmp_path / "gcs/thermops-root/run-x/make/out").read_text() == "abc"  # copied into the bucket
    assert ex["outputs"]["artifacts"]["model"]["artifacts"][0]["uri"] == "gs://thermops-root/run-x/use/model"
    assert ex["outputs"]["outputFile"] == "/tmp/kfp_outputs/output_metadata.json"
    argv = run_step.container_argv(step, ex, layout)
    assert argv[argv.index("--executor_input") + 1] == json.dumps(ex, sort_keys=True)
    assert argv[argv.index("--function_to_execute") + 1] == "use"
    with pytest.raises(run_step.StepError, match="input artifact 'data' needed"):
        run_step.executor_input(step, layout, {})


def test_compiled_steps_run_and_chain_on_host(tiny_pipeline, tmp_path):
    # the exact container command, run here (python3 = this venv) with local URIs
    env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    first = run_step.run_step(tiny_pipeline, "make", tmp_path / "a", params={"n": 4}, runtime="host", env=env)
    assert first["ok"], first
    out = Path(first["outputs"]["out"]["path"])
    assert out.read_text() == "xxxx"
    second = run_step.run_step(tiny_pipeline, "use", tmp_path / "b", artifacts={"data": out}, runtime="host", env=env)
    assert second["ok"], second
    # the upstream artifact's metadata travelled with it, as the launcher passes it on
    assert Path(second["outputs"]["model"]["path"]).read_text() == "xxxx4"
    assert second["output_parameters"]["Output"] is True
    metrics = second["executor_output"]["artifacts"]["m"]["artifacts"][0]["metadata"]
    assert metrics == {"len": 8.0}


def test_cli_reports_a_missing_input_clearly(tiny_pipeline, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts/image/run_step.py"),
            "--pipeline",
            str(tiny_pipeline),
            "--task",
            "use",
            "--work",
            str(tmp_path),
            "--runtime",
            "host",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: task 'use': input artifact 'data' needed: pass --artifact data=PATH"


def test_pip_sources_mount_the_local_folders_and_translate_for_uv(tmp_path):
    import pip_sources

    (tmp_path / "idx" / "simple").mkdir(parents=True)
    (tmp_path / "wheels").mkdir()
    index = (tmp_path / "idx" / "simple").as_uri()
    assert pip_sources.local_folder(index) == tmp_path / "idx"  # pages link to ../files
    assert pip_sources.local_folder(str(tmp_path / "wheels")) == tmp_path / "wheels"
    assert pip_sources.local_folder("https://pypi.org/simple") is None
    assert pip_sources.local_folder(str(tmp_path / "absent")) is None
    toml = pip_sources.uv_toml([str(tmp_path / "wheels"), index, "https://example.org/simple"])
    assert toml.splitlines() == [
        f'find-links = ["{tmp_path / "wheels"}"]',
        f'extra-index-url = ["{index}", "https://example.org/simple"]',
    ]


def test_pip_sources_name_the_constraint_file_a_pip_conf_points_to(tmp_path):
    """A pip.conf with `constraint = FILE` breaks every pip in the build unless FILE is mounted too."""

    constraints = tmp_path / "constraints.txt"
    constraints.write_text("torch<=2.14.1\n")
    conf = tmp_path / "pip.conf"
    conf.write_text(f"[global]\nconstraint = {constraints}\nfind-links = {tmp_path}\n")
    env = {**os.environ, "PIP_CONFIG_FILE": str(conf)}
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "image" / "pip_sources.py")],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout.splitlines()
    assert str(constraints) in out
    assert str(tmp_path) in out
