"""Camera registry CLI and the calibration-change retraining trigger.

    python -m pipeline.recalibrate add CAMERA --width 640 --height 512      # display8, unknown geometry
    python -m pipeline.recalibrate add CAMERA --from my_camera.yaml         # a fully calibrated camera
    python -m pipeline.recalibrate record CAMERA --set geometry.pitch_deg=8.0 [--valid-from 2026-11-22]
    python -m pipeline.recalibrate history CAMERA
    python -m pipeline.recalibrate diff CAMERA [--against VERSION] [--json]
    python -m pipeline.recalibrate watch [--once | --interval S] [--mode local|cluster]

`watch` compares every camera's current calibration with the one the deployed model
(models/gated/card.json, else the bento in models/bento.json) was trained and gated
on. On a material change it retrains once: `dvc repro` (local mode; the calibration
files are DVC dependencies, so exactly the affected stages re-run) or a Kubeflow run
with the cameras and calibration versions as parameters (cluster mode). Handled
(camera, version) pairs go to the state file (`trigger.state_file`), so a restart or
a second run never triggers the same change twice.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.watch import Deployed, TriggerState, cameras_in_use, deployed_calibration, load_deployed, scan
from thermops.camera.calibration import CalibrationError
from thermops.camera.change import ChangeReport, Envelope, TriggerParams, compare
from thermops.camera.registry import (
    DEFAULT_DIR,
    add_camera,
    calibration_history,
    find_calibration_version,
    parse_assignment,
    record_calibration,
)
from thermops.config import ParamsError, load_params, section

log = logging.getLogger("thermops.trigger")

DEFAULT_CARD = Path("models/gated/card.json")
DEFAULT_BENTO_JSON = Path("models/bento.json")

# (command, cwd) -> exit status; the real one runs `dvc repro`, tests inject a counter.
Runner = Callable[[list[str], Path], int]
# (material reports) -> run id; the real one submits to Kubeflow through pipeline.submit.
Submitter = Callable[[list[ChangeReport]], str]


class TriggerError(RuntimeError):
    """The retraining could not be started (dvc repro failed, submission refused)."""


def _run_subprocess(cmd: list[str], cwd: Path) -> int:
    return subprocess.run(cmd, cwd=cwd).returncode


def local_command() -> list[str]:
    """The local retraining command: `dvc repro` from this environment's DVC."""
    return [sys.executable, "-m", "dvc", "repro"]


def run_parameters(reports: list[ChangeReport]) -> dict[str, str]:
    """Kubeflow run parameters for a retrain: the cameras and their new calibration versions."""
    return {
        "camera_id": ",".join(r.camera_id for r in reports),
        "calibration_version": ",".join(r.new_version for r in reports),
    }


def _declared_inputs(pipeline_yaml: str) -> set[str]:
    """Names of the compiled pipeline's run parameters."""
    import yaml

    spec = next(iter(yaml.safe_load_all(pipeline_yaml)), None) or {}  # 2nd document: platform spec
    return set(((spec.get("root") or {}).get("inputDefinitions") or {}).get("parameters") or {})


def kubeflow_submitter(
    root: Path,
    host: str | None,
    *,
    namespace: str | None = None,
    experiment: str | None = None,
    token: str | None = None,
) -> Submitter:
    """Submit one run of the project's pipeline through `pipeline.submit` (H6's submit path).

    The run is named after the cameras and versions (`recalibration fence_mid=2026-11-22.1`);
    `camera_id` and `calibration_version` are passed as run parameters where the
    compiled pipeline declares them. The new calibration itself reaches the run
    through `git_rev` and `data_hash`, which `pipeline.submit` resolves from the
    repository (so the calibration must be committed and pushed).
    """

    def submit(reports: list[ChangeReport]) -> str:
        from pipeline import submit as kfp_submit  # heavy (kfp): only in cluster mode

        if not host:
            raise TriggerError("cluster mode needs the Kubeflow API: --kfp-host or KFP_HOST")
        name = "recalibration " + " ".join(f"{r.camera_id}={r.new_version}" for r in reports)
        sub = kfp_submit.prepare_submission(host, None, namespace, experiment, root, None, name[:100])
        declared = _declared_inputs(sub.pipeline_yaml)
        sub.arguments.update({k: v for k, v in run_parameters(reports).items() if k in declared})
        run_id, url = kfp_submit.send(sub, token)
        log.warning("submitted Kubeflow run %s (%s) %s", run_id, url, json.dumps(sub.summary(), sort_keys=True))
        return str(run_id)

    return submit


@dataclass
class WatchResult:
    """What one pass of the watcher did."""

    triggered: bool = False
    action: str = "none"
    material: list[ChangeReport] = field(default_factory=list)
    immaterial: list[ChangeReport] = field(default_factory=list)
    already_handled: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    gave_up: list[str] = field(default_factory=list)


def _window(params: dict[str, Any]) -> tuple[float, int]:
    prep = params.get("prepare")
    if not isinstance(prep, dict) or "window_m" not in prep or "size" not in prep:
        raise ParamsError("params: prepare.window_m and prepare.size are needed to convert the envelope to pixels")
    return float(prep["window_m"]), int(prep["size"])


def watch_once(
    *,
    params_path: Path = Path("params.yaml"),
    calibration_dir: Path = DEFAULT_DIR,
    card: Path = DEFAULT_CARD,
    bento_json: Path = DEFAULT_BENTO_JSON,
    mode: str | None = None,
    runner: Runner | None = None,
    submitter: Submitter | None = None,
    kfp_host: str | None = None,
    namespace: str | None = None,
    experiment: str | None = None,
) -> WatchResult:
    """One pass: compare, log, trigger at most one retrain, record what was handled.

    Paths are relative to the project root (the folder of `params_path`). `runner`
    and `submitter` replace `dvc repro` / the Kubeflow submission (tests count calls);
    cluster mode sends to `kfp_host` (token from the KFP_TOKEN environment variable).
    Raises CalibrationError on a malformed calibration (nothing triggered, state
    untouched) and TriggerError when the retrain failed (the failure is counted, the
    change is not marked handled, so the next pass tries again).
    """
    params = load_params(params_path)
    trigger = section(params, "trigger", TriggerParams)
    mode = mode or trigger.mode
    if mode not in ("local", "cluster"):
        raise ParamsError(f"mode must be local or cluster, not {mode!r}")
    window_m, size = _window(params)
    root = params_path.resolve().parent
    resolve = lambda p: p if p.is_absolute() else root / p  # noqa: E731
    result = WatchResult()
    deployed = load_deployed(resolve(card), resolve(bento_json))
    if deployed is None:
        log.info("no deployed model (%s, %s): nothing to compare against; `dvc repro` trains one", card, bento_json)
        return result
    with TriggerState(resolve(Path(trigger.state_file))).locked() as state:
        found = scan(
            resolve(calibration_dir),
            deployed,
            state,
            trigger=trigger,
            window_m=window_m,
            input_size=size,
            in_use=cameras_in_use(params),
        )
        result.already_handled, result.unchanged, result.unused = found.already_handled, found.unchanged, found.unused
        result.gave_up = found.gave_up
        for cam in found.gave_up:
            log.error(
                "%s: retraining for its current calibration failed %d times; not retried (see %s, fix the "
                "cause, then record a new calibration or run the retrain by hand)",
                cam,
                trigger.max_attempts,
                trigger.state_file,
            )
        for cam in found.already_handled:
            log.info("%s: its current calibration was already handled; nothing to do", cam)
        for cam in found.unchanged:
            log.info("%s: same calibration as the deployed model", cam)
        for cam in found.unused:
            log.info("%s: not in the deployed model and not in data.sources; no retrain", cam)
        for rep in found.reports:
            (result.material if rep.material else result.immaterial).append(rep)
        for rep in result.immaterial:
            log.info("%s", rep.summary())
            state.record(rep, found.fingerprints[rep.camera_id], "none: inside the envelope and thresholds")
        if result.material:
            for rep in result.material:
                log.warning("%s", rep.summary())
            submitter = submitter or kubeflow_submitter(
                root, kfp_host, namespace=namespace, experiment=experiment, token=os.environ.get("KFP_TOKEN")
            )
            try:
                result.action = retrain(mode, result.material, root, runner=runner, submitter=submitter)
            except TriggerError as err:
                for rep in result.material:  # counted, not handled: retried on the next passes
                    state.record_failure(rep, str(err))
                state.save()
                raise TriggerError(f"{err}; retried on the next pass (at most trigger.max_attempts times)") from None
            for rep in result.material:
                state.record(rep, found.fingerprints[rep.camera_id], result.action)
            result.triggered = True
            cams = ", ".join(r.camera_id for r in result.material)
            log.warning("retrain triggered once for %s (%s)", cams, result.action)
        state.save()
    return result


def retrain(mode: str, reports: list[ChangeReport], root: Path, *, runner: Runner | None, submitter: Submitter) -> str:
    """Start one retrain for all material changes; returns what was done, raises TriggerError."""
    if mode == "local":
        cmd = local_command()
        log.warning("retraining locally: %s (in %s)", " ".join(cmd[1:]), root)
        status = (runner or _run_subprocess)(cmd, root)
        if status != 0:
            raise TriggerError(f"`dvc repro` exited with status {status}")
        return "local: dvc repro"
    try:
        run_id = submitter(reports)
    except Exception as err:  # noqa: BLE001 - any refusal (bad host, server error) is a failed trigger
        raise TriggerError(f"Kubeflow submission failed: {err}") from err
    return f"cluster: kubeflow run {run_id} {json.dumps(run_parameters(reports))}"


def watch(*, interval_s: float | None, **kwargs: Any) -> WatchResult:
    """`watch_once`, or poll every `interval_s` seconds forever (errors logged, polling goes on)."""
    if interval_s is None:
        return watch_once(**kwargs)
    while True:
        try:
            watch_once(**kwargs)
        except (CalibrationError, ParamsError, TriggerError) as err:
            log.error("error: %s", err)
        time.sleep(interval_s)


# -- diff ------------------------------------------------------------------------------------


def diff(
    camera_id: str,
    *,
    params_path: Path,
    calibration_dir: Path,
    card: Path,
    bento_json: Path,
    against: str | None = None,
) -> ChangeReport:
    """Compare a camera's current calibration with `against` (default: the deployed version)."""
    from thermops.camera.calibration import load_calibration
    from thermops.camera.registry import camera_path

    params = load_params(params_path)
    trigger = section(params, "trigger", TriggerParams)
    window_m, size = _window(params)
    current = load_calibration(camera_path(calibration_dir, camera_id))
    deployed = load_deployed(card, bento_json)
    envelope = deployed.envelope if deployed else Envelope()
    if against is None:
        if deployed is None or camera_id not in deployed.calibrations:
            raise CalibrationError(f"diff {camera_id}: no deployed model lists this camera; give --against VERSION")
        against = deployed.calibrations[camera_id]
    old = deployed_calibration(calibration_dir, camera_id, against, deployed or Deployed({}, envelope, "none"))
    if old is None:
        old = find_calibration_version(calibration_dir, camera_id, against)
    if old is None:
        raise CalibrationError(f"diff {camera_id}: version {against!r} not found in git history")
    return compare(old, current, trigger=trigger, envelope=envelope, window_m=window_m, input_size=size)


# -- CLI -------------------------------------------------------------------------------------


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (paths and registry edits only; thresholds come from params.yaml)."""
    ap = argparse.ArgumentParser(prog="python -m pipeline.recalibrate", description=__doc__.splitlines()[0])
    ap.add_argument("--calibrations", type=Path, default=DEFAULT_DIR, help="registry folder (data/calibration)")
    sub = ap.add_subparsers(dest="command", required=True)

    a = sub.add_parser("add", help="register a new camera")
    a.add_argument("camera_id")
    a.add_argument("--from", dest="from_file", type=Path, help="a full calibration YAML")
    a.add_argument("--width", type=int)
    a.add_argument("--height", type=int)
    a.add_argument("--version")
    a.add_argument("--valid-from", type=_date)
    a.add_argument("--description", default="")
    a.add_argument("--source", default="real")
    a.add_argument("--agc-mode", default="unknown")

    r = sub.add_parser("record", help="record a new calibration of a registered camera")
    r.add_argument("camera_id")
    r.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change a field, e.g. geometry.pitch_deg=8.0 (repeatable)",
    )
    r.add_argument("--from", dest="from_file", type=Path, help="the new calibration as a YAML file")
    r.add_argument("--version")
    r.add_argument("--valid-from", type=_date)
    r.add_argument("--description")

    h = sub.add_parser("history", help="committed calibrations of a camera (git)")
    h.add_argument("camera_id")

    for name, helptext in (
        ("diff", "compare a camera's calibration with the deployed one"),
        ("watch", "retrain on material calibration changes"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--params", type=Path, default=Path("params.yaml"))
        p.add_argument("--card", type=Path, default=DEFAULT_CARD, help="the gated model card")
        p.add_argument("--bento-json", type=Path, default=DEFAULT_BENTO_JSON, help="the package step's output")
    d = sub.choices["diff"]
    d.add_argument("camera_id")
    d.add_argument("--against", help="a committed version (default: the deployed one)")
    d.add_argument("--json", action="store_true")
    w = sub.choices["watch"]
    g = w.add_mutually_exclusive_group()
    g.add_argument("--once", action="store_true", help="one pass (the default)")
    g.add_argument("--interval", type=float, metavar="S", help="poll every S seconds")
    w.add_argument("--poll", action="store_true", help="poll every trigger.poll_interval_s seconds")
    w.add_argument("--mode", choices=["local", "cluster"], help="default: trigger.mode")
    w.add_argument("--kfp-host", default=os.environ.get("KFP_HOST"), help="Kubeflow API (cluster mode; env KFP_HOST)")
    w.add_argument("--namespace", default=os.environ.get("KFP_NAMESPACE"), help="multi-user Kubeflow namespace")
    w.add_argument("--experiment", help="Kubeflow experiment (default: the pipeline name)")
    return ap


def main(argv: list[str] | None = None) -> None:
    """CLI entry point; expected errors print `error: ...` and exit 1."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        if args.command == "add":
            cal = add_camera(
                args.calibrations,
                args.camera_id,
                from_file=args.from_file,
                width=args.width,
                height=args.height,
                version=args.version,
                valid_from=args.valid_from,
                description=args.description,
                source=args.source,
                agc_mode=args.agc_mode,
            )
            print(f"added {cal.camera_id} version {cal.version} (valid from {cal.valid_from}, {cal.units})")
        elif args.command == "record":
            old, new = record_calibration(
                args.calibrations,
                args.camera_id,
                assignments=[parse_assignment(s) for s in args.sets],
                from_file=args.from_file,
                version=args.version,
                valid_from=args.valid_from,
                description=args.description,
            )
            print(f"recorded {new.camera_id} version {new.version} (was {old.version}), valid from {new.valid_from}")
        elif args.command == "history":
            for e in calibration_history(args.calibrations, args.camera_id):
                what = f"{e.calibration.version} valid from {e.calibration.valid_from}" if e.calibration else e.error
                print(f"{e.commit[:10]} {e.committed} {what}")
        elif args.command == "diff":
            rep = diff(
                args.camera_id,
                params_path=args.params,
                calibration_dir=args.calibrations,
                card=args.card,
                bento_json=args.bento_json,
                against=args.against,
            )
            print(json.dumps(rep.to_dict(), indent=2, default=float) if args.json else rep.summary())
        elif args.command == "watch":
            interval = args.interval
            if args.poll:
                interval = section(load_params(args.params), "trigger", TriggerParams).poll_interval_s
            res = watch(
                interval_s=interval,
                params_path=args.params,
                calibration_dir=args.calibrations,
                card=args.card,
                bento_json=args.bento_json,
                mode=args.mode,
                kfp_host=args.kfp_host,
                namespace=args.namespace,
                experiment=args.experiment,
            )
            print(f"triggered: {res.action}" if res.triggered else "no retrain triggered")
    except (CalibrationError, ParamsError, TriggerError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
