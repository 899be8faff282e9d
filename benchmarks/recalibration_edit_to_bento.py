"""Edit-to-new-bento time of a one-camera recalibration, against a full `dvc repro`, same machine, same run.

    .venv/bin/python benchmarks/recalibration_edit_to_bento.py --out /tmp/recal_bench.json [--camera fence_mid]

In a scratch copy of the working tree (tracked and untracked files, no pipeline outputs,
default params.yaml, a temporary BENTOML_HOME):

1. `dvc repro` from nothing (the full run: every camera synthesized, pretrain, finetune,
   gate, package), timed;
2. that model promoted to production (`pipeline.production promote`, into the copy's own
   store), committed; `--no-promote` skips this, so the retrain has no production model to
   start from and is a full one (what every retrain was before warm starts);
3. `recalibrate record CAMERA --set geometry.pitch_deg=+3 degrees`, committed;
4. `recalibrate watch --once --mode local` (the watcher's retrain, `dvc repro`, up to the
   new bento), timed; the stages it ran are read from its log.

Prints and writes the two wall times, their ratio, the stages of each, the warm-start plan,
the gate's per-camera regression checks against production (accuracy of the candidate and the
limit production sets, per camera), the load average before and after, and whether the new
bento carries the new calibration version.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SKIP = re.compile(r"^(dvc\.lock|models/|metrics/|reports/|checkpoints/|data/(?!calibration/|\.gitignore$))")


def _copy_tree(dst: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if SKIP.match(rel) or not src.is_file():
            continue
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst / rel)


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-4000:]}")
    return wall, out


def _git(root: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=bench", "-c", "user.email=bench@thermops.invalid", *args], cwd=root, check=True,
        capture_output=True,
    )  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--camera", default="fence_mid")
    ap.add_argument("--keep", action="store_true", help="keep the scratch copy")
    ap.add_argument("--no-promote", action="store_true", help="no production model: the retrain is a full one")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="recal-bench-"))
    root = tmp / "repo"
    _copy_tree(root)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "BENTOML_HOME": str(tmp / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "true",
        "GX_ANALYTICS_ENABLED": "false",
        "DVC_NO_ANALYTICS": "1",
        "PYTHONPATH": "",
    }
    _git(root, "init", "-q", "-b", "main")
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "scratch copy")
    load_before = os.getloadavg()
    full_s, full_log = _run([sys.executable, "-m", "dvc", "repro"], root, env)
    if not args.no_promote:
        _git(root, "add", "-A")
        _git(root, "commit", "-q", "-m", "first run")
        _run([sys.executable, "-m", "pipeline.production", "promote", "--note", "benchmark", "--commit"], root, env)
    pitch = yaml.safe_load((root / "data" / "calibration" / f"{args.camera}.yaml").read_text())["geometry"]["pitch_deg"]
    _run(
        [
            sys.executable,
            "-m",
            "pipeline.recalibrate",
            "record",
            args.camera,
            "--set",
            f"geometry.pitch_deg={pitch + 3}",
        ],
        root,
        env,
    )
    _git(root, "commit", "-q", "-am", f"{args.camera} re-aimed 3 degrees")
    version = yaml.safe_load((root / "data" / "calibration" / f"{args.camera}.yaml").read_text())["version"]
    recal_s, recal_log = _run(
        [sys.executable, "-m", "pipeline.recalibrate", "watch", "--once", "--mode", "local"], root, env
    )
    load_after = os.getloadavg()
    check = (
        "import json, bentoml; t = json.load(open('models/bento.json'))['model_tag']; "
        "print(json.dumps(bentoml.models.get(t).info.metadata['calibrations']))"
    )
    _, cals = _run([sys.executable, "-c", check], root, env)
    gate = json.loads((root / "reports" / "gate" / "gate.json").read_text())
    per_camera = {
        c["name"]: {"candidate": c["value"], "limit": c["limit"], "passed": c["passed"]}
        for c in gate["checks"]
        if c["name"].startswith("regression:clean_accuracy[")
    }
    stamps = [  # the watcher logs the retrain's output with a time stamp on every line
        (dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f"), m.group(2))
        for m in re.finditer(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+) \S+ \| (.*)$", recal_log, re.M)
    ]
    starts = [(t, m.group(1)) for t, line in stamps if (m := re.match(r"Running stage '([^']+)'", line))]
    end = stamps[-1][0] if stamps else None
    stage_s = {
        name: round(((starts[i + 1][0] if i + 1 < len(starts) else end) - t).total_seconds(), 1)
        for i, (t, name) in enumerate(starts)
    }
    result = {
        "camera": args.camera,
        "promoted_first": not args.no_promote,
        "plan": json.loads((root / "metrics" / "warmstart.json").read_text()),
        "full_repro_s": round(full_s, 1),
        "edit_to_bento_s": round(recal_s, 1),
        "ratio": round(recal_s / full_s, 3),
        "full_stages": sorted(set(re.findall(r"Running stage '([^']+)'", full_log))),
        "recalibration_stages": sorted(set(re.findall(r"Running stage '([^']+)'", recal_log))),
        "recalibration_stage_s": stage_s,
        "gate_passed": gate["passed"],
        "clean_accuracy": gate["clean_accuracy"],
        "per_camera_regression_checks": per_camera,
        "new_bento_calibration": json.loads(cals.strip().splitlines()[-1]).get(args.camera),
        "new_version": version,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "cpus": os.cpu_count(),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
