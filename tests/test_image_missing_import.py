"""A step that imports what the component image lacks fails in the image.

Needs the image (`make image-test` sets THERMOPS_IMAGE). Its own module, run after
tests/test_image_run.py: the step gets a fresh working container, as KFP gives every
step, and with vfs storage each container is a full copy of the 6.7 GB image, so this
one must not exist beside test_image_run's shared container (the module-scoped fixture
is removed when that module ends). See docs/image.md, "Disk".
"""

from __future__ import annotations

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

MISSING = """
import sys
from kfp import dsl, compiler
from kfp.dsl import Output, Dataset

@dsl.component(base_image=sys.argv[2], install_kfp_package=False)
def needs_schemathesis(out: Output[Dataset]) -> None:
    import schemathesis  # a dev-only package: in the venv, not in the image
    open(out.path, "w").write(schemathesis.__name__)

@dsl.pipeline(name="missing")
def p():
    needs_schemathesis()

compiler.Compiler().compile(p, sys.argv[1])
"""


def test_a_step_importing_what_the_image_lacks_fails(tmp_path):
    src = tmp_path / "missing.py"
    src.write_text(MISSING)
    yaml_path = tmp_path / "missing.yaml"
    subprocess.run([sys.executable, str(src), str(yaml_path), IMAGE], check=True)
    # on the host (the dev venv has schemathesis) the same step works ...
    env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    host = run_step.run_step(yaml_path, "needs-schemathesis", tmp_path / "host", runtime="host", env=env)
    assert host["ok"], host
    # ... in the image it fails, and the runner's CLI says so
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts/image/run_step.py"),
            "--pipeline",
            str(yaml_path),
            "--task",
            "needs-schemathesis",
            "--work",
            str(tmp_path / "img"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert "No module named 'schemathesis'" in proc.stdout + proc.stderr
    assert "outputs not written: out" in proc.stderr
