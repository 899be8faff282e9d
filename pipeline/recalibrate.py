"""Camera registry CLI and the calibration watcher (retrain on material calibration changes).

    python -m pipeline.recalibrate add CAMERA --width 640 --height 512      # display8, unknown geometry
    python -m pipeline.recalibrate add CAMERA --from my_camera.yaml         # a fully calibrated camera
    python -m pipeline.recalibrate record CAMERA --set geometry.pitch_deg=8.0 [--valid-from 2026-11-22]
    python -m pipeline.recalibrate record CAMERA --confirm                  # re-calibrated, nothing moved
    python -m pipeline.recalibrate history CAMERA
    python -m pipeline.recalibrate fmt [CAMERA ...] [--check]               # the canonical form DVC agrees with
    python -m pipeline.recalibrate diff CAMERA [--against VERSION] [--json]
    python -m pipeline.recalibrate watch [--once | --interval S | --poll] [--mode local|cluster]
    python -m pipeline.recalibrate status [--json]
    python -m pipeline.recalibrate reset (CAMERA [--version V] | --all)

`watch` compares every camera's calibration with the one the deployed model was
trained and gated on (`pipeline.watch.deployed_lineage`, the one place that says what
is deployed): `--deployed-model DIR` if given, else the production model
(deploy/production.json and the store `production.store`, what the cluster serves;
an unreadable store is an error: `python -m pipeline.production pull`), and only when
nothing was ever promoted the packaged candidate of models/bento.json; never the
gate's output folder. On a material change it retrains once: locally the
`trigger.retrain_command` (`dvc repro`) as a supervised process group, on the
cluster one Kubeflow run whose intent (a deterministic run name) is recorded
before it is submitted. A retrain that passed the gate is a candidate: its camera
is `awaiting_promotion` (handled, not retrained again) until
`python -m pipeline.production promote --note ...` makes it production, or the
watcher promotes it itself when `trigger.auto_promote` is true. A refused retrain is
never handled: it stays `refused` and is retried by policy. Each camera ends a pass
in one state (`pipeline.watch.STATES`); the states go to the log, the state file
and a metrics file.

Exit status of `watch --once`: 0 no camera needs an operator; 1 the pass could not
run (bad params, configuration, deployed model); 2 bad command line; 3 a camera
waits on a gate refusal; 4 another camera needs an operator (malformed file, failed
or blocked retrain, retries used up); 128+N the watcher was stopped by signal N
(its retrain was stopped with it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.watch import (
    ATTENTION,
    CameraState,
    Deployed,
    GateVerdict,
    LocalJob,
    Outcome,
    Scan,
    StateStore,
    Stopped,
    TriggerState,
    WatcherBusy,
    cameras_in_use,
    deployed_calibration,
    deployed_lineage,
    describe,
    exit_status,
    install_stop_handlers,
    iso,
    parse_iso,
    prune_records,
    resolve_command,
    scan,
    stop_signals_held,
    utcnow,
    write_metrics,
)
from thermops.camera.calibration import CalibrationError
from thermops.camera.change import ChangeReport, Envelope, TriggerParams, compare
from thermops.camera.registry import (
    DEFAULT_DIR,
    add_camera,
    calibration_history,
    find_calibration_version,
    format_calibration,
    is_canonical,
    parse_assignment,
    record_calibration,
)
from thermops.config import ParamsError, load_params, section

log = logging.getLogger("thermops.trigger")

DEFAULT_BENTO_JSON = Path("models/bento.json")
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_REFUSED, EXIT_ATTENTION = 0, 1, 2, 3, 4
KEEP_RETRAIN_RECORDS = 20
# Kubeflow run states after which a run will not change any more.
RUN_SUCCEEDED = ("SUCCEEDED",)
RUN_FAILED = ("FAILED", "CANCELED", "SKIPPED")


class TriggerError(RuntimeError):
    """The watcher is not configured to retrain (e.g. cluster mode without a Kubeflow host).

    A configuration error: the pass exits 1 and nothing is counted against max_attempts.
    """


# -- the cluster: one Kubeflow run per intent -----------------------------------------------


def run_parameters(cameras: dict[str, str]) -> dict[str, str]:
    """Kubeflow run parameters for a retrain: the cameras and their new calibration versions."""
    return {"camera_id": ",".join(cameras), "calibration_version": ",".join(cameras.values())}


def _declared_inputs(pipeline_yaml: str) -> set[str]:
    """Names of the compiled pipeline's run parameters."""
    import yaml

    spec = next(iter(yaml.safe_load_all(pipeline_yaml)), None) or {}  # 2nd document: platform spec
    return set(((spec.get("root") or {}).get("inputDefinitions") or {}).get("parameters") or {})


def run_name_for(cameras: dict[str, dict[str, Any]], attempt: int) -> str:
    """The deterministic display name of a retrain's Kubeflow run.

    The same cameras, versions, contents and attempt always give the same name, so
    a pass can look the run up before submitting; the key (a hash of all of them)
    keeps the name unique when the camera list is cut to fit 100 characters.
    """
    ident = json.dumps(
        [[c, cameras[c]["version"], cameras[c].get("fingerprint", "")] for c in sorted(cameras)] + [attempt]
    )
    key = hashlib.sha256(ident.encode()).hexdigest()[:12]
    suffix = f" attempt {attempt} [{key}]"
    listed = " ".join(f"{c}={cameras[c]['version']}" for c in sorted(cameras))
    head = "recalibration "
    room = 100 - len(head) - len(suffix)
    if len(listed) > room:
        listed = listed[: room - 3] + "..."
    return head + listed + suffix


@dataclass
class RunInfo:
    """A Kubeflow run as the server reports it."""

    run_id: str
    state: str
    error: str = ""


class KubeflowBackend:
    """Submit a retrain and find it again by its name, through `pipeline.submit` and `kfp.Client`."""

    def __init__(
        self,
        root: Path,
        host: str,
        *,
        namespace: str | None = None,
        experiment: str | None = None,
        token: str | None = None,
    ):
        self.root, self.host, self.namespace, self.experiment, self.token = root, host, namespace, experiment, token

    def _client(self) -> Any:
        import kfp

        _probe(self.host)
        # a non-default namespace keeps the constructor from probing the server
        return kfp.Client(host=self.host, namespace=self.namespace or "kubeflow", existing_token=self.token)

    def find(self, run_name: str) -> RunInfo | None:
        """The run with this display name, or None; raises RuntimeError when the server cannot be asked."""
        import kfp_server_api

        flt = {"predicates": [{"key": "display_name", "operation": "EQUALS", "string_value": run_name}]}
        try:
            res = self._client().list_runs(page_size=10, filter=json.dumps(flt), namespace=self.namespace)
        except kfp_server_api.ApiException as err:
            raise RuntimeError(f"KFP at {self.host}: listing runs: {err.status} {err.reason}") from None
        runs = [r for r in (res.runs or []) if r.display_name == run_name]
        if not runs:
            return None
        run = runs[0]
        error = getattr(run, "error", None)
        message = getattr(error, "message", None) or (error.get("message") if isinstance(error, dict) else "")
        return RunInfo(str(run.run_id), str(run.state or "RUNTIME_STATE_UNSPECIFIED"), str(message or ""))

    def submit(self, cameras: dict[str, str], run_name: str) -> str:
        """Create the run (compiled from this checkout's dvc.yaml, on its commit); returns its id."""
        from pipeline import submit as kfp_submit  # heavy (kfp): only in cluster mode

        sub = kfp_submit.prepare_submission(self.host, None, self.namespace, self.experiment, self.root, None, run_name)
        declared = _declared_inputs(sub.pipeline_yaml)
        sub.arguments.update({k: v for k, v in run_parameters(cameras).items() if k in declared})
        run_id, url = kfp_submit.send(sub, self.token)
        log.warning("submitted Kubeflow run %s (%s) %s", run_id, url, json.dumps(sub.summary(), sort_keys=True))
        return str(run_id)


def _probe(host: str, timeout: float = 10.0) -> None:
    """Fail fast when nothing answers at `host` (kfp.Client would retry for half a minute)."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"{host.rstrip('/')}/apis/v2beta1/healthz", timeout=timeout).close()
    except urllib.error.HTTPError:
        pass  # something answers
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise RuntimeError(f"KFP at {host} unreachable: {getattr(err, 'reason', err)}") from None


# -- one pass --------------------------------------------------------------------------------


@dataclass
class WatchResult:
    """What one pass of the watcher did, and where every camera stands."""

    triggered: bool = False
    action: str = "none"
    material: list[ChangeReport] = field(default_factory=list)
    immaterial: list[ChangeReport] = field(default_factory=list)
    already_handled: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    gave_up: list[str] = field(default_factory=list)
    problems: dict[str, str] = field(default_factory=dict)
    states: list[CameraState] = field(default_factory=list)
    outcome: Outcome | None = None
    busy: bool = False
    exit_code: int = EXIT_OK

    def state_of(self, camera: str) -> CameraState | None:
        return next((s for s in self.states if s.camera == camera), None)


def _window(params: dict[str, Any]) -> tuple[float, int]:
    prep = params.get("prepare")
    if not isinstance(prep, dict) or "window_m" not in prep or "size" not in prep:
        raise ParamsError("params: prepare.window_m and prepare.size are needed to convert the envelope to pixels")
    return float(prep["window_m"]), int(prep["size"])


def _gate_verdict(params: dict[str, Any], root: Path) -> GateVerdict | None:
    """Where the gate writes its verdict: params `kubeflow.gate` (stage, metrics, key)."""
    gate = (params.get("kubeflow") or {}).get("gate") if isinstance(params.get("kubeflow"), dict) else None
    if not isinstance(gate, dict) or not {"stage", "metrics", "key"} <= set(gate):
        return None
    path = Path(gate["metrics"])
    return GateVerdict(str(gate["stage"]), path if path.is_absolute() else root / path, str(gate["key"]))


@dataclass
class _Pass:
    """What a pass needs, resolved once."""

    params: dict[str, Any]
    trigger: TriggerParams
    mode: str
    root: Path
    calibration_dir: Path
    store: StateStore
    gate: GateVerdict | None
    window_m: float
    size: int
    backend: KubeflowBackend | None
    bento_json: Path = DEFAULT_BENTO_JSON  # the workspace's packaged candidate (auto_promote promotes it)


def watch_once(
    *,
    params_path: Path = Path("params.yaml"),
    calibration_dir: Path = DEFAULT_DIR,
    deployed_model: Path | None = None,
    bento_json: Path = DEFAULT_BENTO_JSON,
    mode: str | None = None,
    kfp_host: str | None = None,
    namespace: str | None = None,
    experiment: str | None = None,
    backend: KubeflowBackend | None = None,
) -> WatchResult:
    """One pass: follow an earlier retrain, compare every camera, retrain once if needed, report.

    Paths are relative to the project root (the folder of `params_path`).
    `deployed_model`: a model folder to take as the deployed model (default: the
    production model; the packaged candidate of `bento_json` only when nothing was ever
    promoted, see `pipeline.watch.deployed_lineage`). Cluster mode talks to `kfp_host` (token from
    KFP_TOKEN) unless a `backend` is given. Raises ParamsError, CalibrationError (the
    deployed model or the registry folder) or TriggerError when the pass cannot run;
    every per-camera problem is a camera state instead, and `exit_code` sums them up.
    """
    params = load_params(params_path)
    trigger = section(params, "trigger", TriggerParams)
    mode = mode or trigger.mode
    if mode not in ("local", "cluster"):
        raise ParamsError(f"mode must be local or cluster, not {mode!r}")
    window_m, size = _window(params)
    root = params_path.resolve().parent
    resolve = lambda p: p if p.is_absolute() else root / p  # noqa: E731
    if mode == "cluster" and backend is None:
        if not kfp_host:
            raise TriggerError("cluster mode needs the Kubeflow API: --kfp-host or KFP_HOST")
        backend = KubeflowBackend(
            root, kfp_host, namespace=namespace, experiment=experiment, token=os.environ.get("KFP_TOKEN")
        )
    ctx = _Pass(
        params,
        trigger,
        mode,
        root,
        resolve(calibration_dir),
        StateStore(resolve(Path(trigger.state_file))),
        _gate_verdict(params, root),
        window_m,
        size,
        backend,
    )
    ctx.bento_json = resolve(bento_json)
    result = WatchResult()
    try:
        with ctx.store.pass_lock():
            _one_pass(ctx, result, deployed_model, bento_json)
    except WatcherBusy as err:
        log.warning("%s; this pass does nothing", err)
        result.busy = True
    return result


def _one_pass(ctx: _Pass, result: WatchResult, deployed_model: Path | None, bento_json: Path) -> None:
    # 1. A retrain an earlier pass started: adopt it (local) or look it up (cluster).
    job = ctx.store.read().job
    if job is not None:
        if job.get("kind") == "local":
            result.outcome = _finish_local(ctx, LocalJob(job), proc=None)
        elif ctx.backend is not None:
            run = _follow_cluster(ctx, job)
            if run is not None:  # the recorded intent was not on the server: submitted now
                result.triggered = True
                result.action = f"cluster: kubeflow run {run} (intent {job['run_name']!r})"
        else:
            log.warning(
                "a Kubeflow run of an earlier pass is recorded (%s); a cluster pass follows it", job["run_name"]
            )
    # 2. What is deployed (after the adopted retrain, which may have changed it).
    deployed = deployed_lineage(ctx.root, model_dir=deployed_model, bento_json=bento_json)
    if deployed is None:
        log.info(
            "no deployed model (nothing promoted in deploy/production.json, no %s): nothing to compare against; "
            "`dvc repro` trains a candidate",
            bento_json,
        )
        _finish_pass(ctx, result, Scan(), None)
        return
    log.info("deployed model: %s", deployed.source)
    # 3. Every camera against it; immaterial changes are handled at once.
    in_use = cameras_in_use(ctx.params)
    with ctx.store.transaction() as state:
        found = scan(
            ctx.calibration_dir,
            deployed,
            state,
            trigger=ctx.trigger,
            window_m=ctx.window_m,
            input_size=ctx.size,
            in_use=in_use,
        )
        for rep in found.reports:
            if not rep.material:
                state.record(rep, found.fingerprints[rep.camera_id], "none: inside the envelope and thresholds")
        job = state.job
    result.already_handled, result.unchanged, result.unused = found.already_handled, found.unchanged, found.unused
    result.problems = dict(found.problems)
    for rep in found.reports:
        (result.material if rep.material else result.immaterial).append(rep)
    # 4. One retrain for every material change that is due.
    material = result.material
    if material:
        state = ctx.store.read()
        now = utcnow()
        result.gave_up = [
            r.camera_id for r in material if state.attempts(r.camera_id, r.new_version) >= ctx.trigger.max_attempts
        ]
        live = [r for r in material if r.camera_id not in result.gave_up]
        due = [
            r
            for r in live
            if (parse_iso((state.pending_record(r.camera_id, r.new_version) or {}).get("next_try_at")) or now) <= now
        ]
        blockers = sorted(c for c in found.problems if in_use is None or c in in_use)  # the steps read only these
        if job is not None and due:
            where = job.get("run_name") or f"local job {job.get('id')}"
            with ctx.store.transaction() as st:
                for r in due:
                    if r.camera_id not in (job.get("cameras") or {}):
                        st.note(r.camera_id, r.new_version, "queued", f"waits for {where} to end", counted=False)
        elif due and blockers:
            msg = (
                f"deferred: the pipeline reads the calibration of {', '.join(blockers)}, which is malformed "
                "(fix it; this is not counted as a failed retrain)"
            )
            with ctx.store.transaction() as st:
                for r in live:
                    st.note(r.camera_id, r.new_version, "deferred", msg, counted=False)
        elif due:
            cameras = {
                r.camera_id: {
                    "version": r.new_version,
                    "fingerprint": found.fingerprints[r.camera_id],
                    "deployed_version": r.old_version,
                    "summary": r.summary(),
                }
                for r in live
            }
            for r in live:
                log.warning("%s", r.summary())
            if ctx.mode == "local":
                result.outcome = _run_local(ctx, cameras)
                result.triggered = True
                result.action = f"local: {' '.join(ctx.trigger.retrain_command)} {result.outcome.kind}"
            else:
                result.outcome, run = _submit_cluster(ctx, cameras)
                result.triggered = run is not None
                if run is not None:
                    result.action = f"cluster: kubeflow run {run} {json.dumps(run_parameters({c: v['version'] for c, v in cameras.items()}))}"
    _finish_pass(ctx, result, found, deployed)


# -- local retrains ---------------------------------------------------------------------------


def _run_local(ctx: _Pass, cameras: dict[str, dict[str, Any]]) -> Outcome:
    """Start the retrain command as a supervised process group, recorded before it starts; wait for it."""
    job = LocalJob.new(ctx.store, resolve_command(ctx.trigger.retrain_command), ctx.root, cameras)
    job.record["display_cmd"] = " ".join(ctx.trigger.retrain_command)
    with ctx.store.transaction() as st:
        st.job = job.record  # the intent, before anything runs
    log.warning(
        "retraining locally for %s: %s (job %s, log %s)",
        ", ".join(cameras),
        " ".join(ctx.trigger.retrain_command),
        job.record["id"],
        job.log_path,
    )
    proc = None
    try:
        proc = job.start()
        with ctx.store.transaction() as st:
            st.job = job.record  # now with its pid
    except OSError as err:
        with ctx.store.transaction() as st:
            st.job = None
        raise TriggerError(f"cannot start the retrain runner: {err}") from None
    except (Stopped, KeyboardInterrupt):  # stopped between start and record: stop what started
        if proc is not None:
            with stop_signals_held():
                job.stop(ctx.trigger.stop_grace_s)
        raise
    return _finish_local(ctx, job, proc)


def _finish_local(ctx: _Pass, job: LocalJob, proc: Any) -> Outcome:
    """Wait for a local retrain (ours, or adopted from a watcher that died) and record how it ended."""
    rec = job.record
    cams = rec.get("cameras") or {}
    if proc is None and job.exit_info() is None and job.alive():
        info = job.start_info() or {}
        log.warning(
            "adopting the retrain %s for %s (runner pid %s, started %s by watcher pid %s): not starting another",
            rec["id"],
            ", ".join(cams),
            info.get("pid"),
            info.get("started_at"),
            rec.get("watcher_pid"),
        )
        with ctx.store.transaction() as st:
            st.event("adopted", f"watcher pid {os.getpid()} adopted retrain {rec['id']}", job=rec["id"])
            if st.job and st.job.get("id") == rec["id"]:
                st.job["adopted_by"] = os.getpid()
    started = parse_iso((job.start_info() or {}).get("started_at")) or parse_iso(rec.get("recorded_at")) or utcnow()
    try:
        job.wait(proc)
    except (Stopped, KeyboardInterrupt) as stop:
        signum = stop.signum if isinstance(stop, Stopped) else 2
        with stop_signals_held():
            log.warning("stopping (signal %d): terminating the retrain's process group %s", signum, job.pgid())
            job.stop(ctx.trigger.stop_grace_s)
            msg = f"the watcher was stopped (signal {signum}) and stopped its retrain {rec['id']}; not counted"
            with ctx.store.transaction() as st:
                st.job = None
                st.event("interrupted", msg, job=rec["id"])
                for cam, info in cams.items():
                    st.note(cam, info["version"], "interrupted", msg, counted=False)
        raise
    outcome = job.outcome(started, ctx.gate)
    with ctx.store.transaction() as st:
        if st.job and st.job.get("id") == rec["id"]:
            st.job = None
        if outcome.kind == "succeeded":
            how = _retrain_kind(ctx.root)
            st.mark_retrained(cams, f"retrained{how}: {rec.get('display_cmd') or ' '.join(rec['cmd'])}")
        else:
            for cam, info in cams.items():
                st.note(
                    cam,
                    info["version"],
                    outcome.kind,
                    outcome.message,
                    counted=outcome.counted,
                    reasons=outcome.reasons,
                    backoff_s=ctx.trigger.retry_backoff_s,
                    extra={"job": rec["id"]},
                )
        if outcome.kind in ("interrupted", "lock"):
            st.event(outcome.kind, outcome.message, job=rec["id"])
    (log.warning if outcome.kind == "succeeded" else log.error)(
        "retrain %s for %s: %s%s", rec["id"], ", ".join(cams), outcome.message,
        f" ({'; '.join(outcome.reasons)})" if outcome.reasons else "",
    )  # fmt: skip
    if outcome.kind == "succeeded" and ctx.trigger.auto_promote:
        _auto_promote(ctx, cams)
    prune_records(ctx.store.retrains_dir, KEEP_RETRAIN_RECORDS, set())
    return outcome


WARMSTART_METRICS = "metrics/warmstart.json"  # the warmstart stage's plan (dvc.yaml)


def _retrain_kind(root: Path) -> str:
    """' (warm, from production version N)' or ' (full: why)' from the warmstart stage's metrics, or ''."""
    try:
        m = json.loads((Path(root) / WARMSTART_METRICS).read_text())
    except (OSError, ValueError):
        return ""
    if m.get("mode") == "warm":
        return f" (warm, from production version {m.get('production')})"
    return f" (full: {'; '.join(m.get('reasons') or [])})" if m.get("mode") == "full" else ""


def _auto_promote(ctx: _Pass, cams: dict[str, dict[str, Any]]) -> None:
    """`trigger.auto_promote`: make the candidate a successful local retrain packaged production, and say so."""
    from pipeline import production

    note = "watcher: " + ", ".join(
        f"{cam} {info.get('deployed_version') or 'new'}->{info['version']}" for cam, info in cams.items()
    )
    try:
        rel = production.promote(ctx.root, note=note, bento_json=ctx.bento_json)
    except (ValueError, OSError) as err:  # RegistryError, StoreError: the camera stays awaiting_promotion
        msg = f"automatic promotion ({note}) failed: {err}"
        log.error("%s", msg)
        with ctx.store.transaction() as st:
            st.event("promote_failed", msg)
            for cam, info in cams.items():
                rec = st.get(cam, info["version"])
                if rec is not None:
                    rec["promotion_error"] = str(err)
        return
    msg = f"promoted {rel.tag} to production version {rel.version} ({note}); commit {production.REGISTRY}"
    log.warning("%s", msg)
    with ctx.store.transaction() as st:
        st.event("promoted", msg, version=rel.version, tag=rel.tag, digest=rel.digest)
        for cam, info in cams.items():
            rec = st.get(cam, info["version"])
            if rec is not None:
                rec["promoted"] = f"production version {rel.version} ({rel.tag})"
                rec.pop("promotion_error", None)


# -- cluster retrains -------------------------------------------------------------------------


def _submit_cluster(ctx: _Pass, cameras: dict[str, dict[str, Any]]) -> tuple[Outcome, str | None]:
    """Record the intent (deterministic run name), then submit; returns the outcome and the run id."""
    state = ctx.store.read()
    attempt = 1 + max(state.attempts(c, v["version"]) for c, v in cameras.items())
    run_name = run_name_for(cameras, attempt)
    job = {
        "kind": "cluster",
        "id": run_name.rsplit("[", 1)[-1].rstrip("]"),
        "run_name": run_name,
        "attempt": attempt,
        "cameras": cameras,
        "recorded_at": iso(utcnow()),
        "answered": False,  # True once the server answered a submission (or nothing was sent)
        "host": ctx.backend.host if ctx.backend else None,
    }
    with ctx.store.transaction() as st:
        st.job = job  # the intent, before anything is sent
    log.warning("submitting Kubeflow run %r", run_name)
    return _post(ctx, job)


def _post(ctx: _Pass, job: dict[str, Any]) -> tuple[Outcome, str | None]:
    assert ctx.backend is not None
    versions = {c: v["version"] for c, v in job["cameras"].items()}
    try:
        run_id = ctx.backend.submit(versions, job["run_name"])
    except Exception as err:  # noqa: BLE001 - any refusal (unreachable, server error, compile) blocks this try
        first = str(err).splitlines()[0] if str(err) else repr(err)
        msg = f"Kubeflow submission of {job['run_name']!r} failed: {first}"
        log.error("%s; looked up, then tried again on the next pass (not counted)", msg)
        with ctx.store.transaction() as st:
            if st.job and st.job.get("run_name") == job["run_name"]:
                st.job["answered"] = True
                st.job["last_error"] = msg
            for cam, info in job["cameras"].items():
                st.note(cam, info["version"], "blocked", msg, counted=False)
        return Outcome("blocked", msg), None
    with ctx.store.transaction() as st:
        if st.job and st.job.get("run_name") == job["run_name"]:
            st.job.update({"run_id": run_id, "answered": True, "submitted_at": iso(utcnow())})
        for cam, info in job["cameras"].items():
            st.note(cam, info["version"], "retraining", f"Kubeflow run {run_id} ({job['run_name']})", counted=False)
    return Outcome("submitted", f"Kubeflow run {run_id}"), run_id


def _follow_cluster(ctx: _Pass, job: dict[str, Any]) -> str | None:
    """Look the recorded run up by its name: adopt it, finish it, or (re)submit it (returns the new run id)."""
    assert ctx.backend is not None
    name = job["run_name"]
    try:
        run = ctx.backend.find(name)
    except Exception as err:  # noqa: BLE001 - cannot ask the server: nothing is decided this pass
        msg = f"cannot look up Kubeflow run {name!r}: {err}"
        log.error("%s", msg)
        with ctx.store.transaction() as st:
            for cam, info in job["cameras"].items():
                st.note(cam, info["version"], "blocked", msg, counted=False)
        return None
    if run is None:
        recorded = parse_iso(job.get("recorded_at")) or utcnow()
        if job.get("run_id"):
            msg = f"Kubeflow run {job['run_id']} ({name}) is no longer on the server; not counted"
            log.error("%s", msg)
            with ctx.store.transaction() as st:
                st.job = None
                st.event("vanished", msg)
                for cam, info in job["cameras"].items():
                    st.note(cam, info["version"], "interrupted", msg, counted=False)
            return None
        wait = recorded + dt.timedelta(seconds=ctx.trigger.submit_grace_s) - utcnow()
        if not job.get("answered") and wait.total_seconds() > 0:
            log.warning(
                "intent %r recorded at %s, no such run on the server yet: its submission may still be in flight; "
                "not resubmitted before %s (trigger.submit_grace_s)",
                name,
                job.get("recorded_at"),
                iso(recorded + dt.timedelta(seconds=ctx.trigger.submit_grace_s)),
            )
            return None
        log.warning("intent %r recorded at %s is not on the server: submitting it", name, job.get("recorded_at"))
        with ctx.store.transaction() as st:
            if st.job and st.job.get("run_name") == name:
                st.job["answered"] = False
                st.job["resubmitted_at"] = iso(utcnow())
        return _post(ctx, job)[1]
    with ctx.store.transaction() as st:
        if st.job and st.job.get("run_name") == name and st.job.get("run_id") != run.run_id:
            st.job.update({"run_id": run.run_id, "answered": True})
            st.event("adopted", f"found run {run.run_id} of intent {name!r} on the server", job=job["id"])
            log.warning("found run %s of intent %r on the server: following it, not submitting", run.run_id, name)
        if run.state in RUN_SUCCEEDED:
            st.job = None
            st.mark_retrained(job["cameras"], f"retrained: Kubeflow run {run.run_id} succeeded")
            log.warning("Kubeflow run %s (%s) succeeded", run.run_id, name)
        elif run.state in RUN_FAILED:
            st.job = None
            msg = f"Kubeflow run {run.run_id} ended {run.state}" + (f": {run.error}" if run.error else "")
            for cam, info in job["cameras"].items():
                st.note(
                    cam,
                    info["version"],
                    "failed",
                    msg,
                    counted=True,
                    backoff_s=ctx.trigger.retry_backoff_s,
                    extra={"run_id": run.run_id},
                )
            log.error("%s", msg)
        else:
            for cam, info in job["cameras"].items():
                st.note(cam, info["version"], "retraining", f"Kubeflow run {run.run_id} is {run.state}", counted=False)
            log.info("Kubeflow run %s (%s) is %s", run.run_id, name, run.state)
    return None


# -- the end of a pass: camera states, log, metrics, exit status --------------------------------


def promote_command(camera: str, old: str | None, new: str, *, cluster: bool) -> str:
    """The exact command that makes a camera's retrained candidate production."""
    digest = " --digest DIGEST" if cluster else ""  # the candidate the Kubeflow run exported to the store
    return f"python -m pipeline.production promote{digest} --note 'recalibration: {camera} {old or 'new'} -> {new}'"


def awaiting_message(camera: str, rec: dict[str, Any], deployed_version: str | None, deployed: Deployed | None) -> str:
    """Why a handled (retrained, gate passed) version is not deployed yet, and the command that deploys it."""
    action = str(rec.get("action") or "retrained")
    cluster = "Kubeflow run" in action
    where = deployed.source if deployed else "the deployed model"
    msg = (
        f"{action} at {rec.get('at')}; not retrained again. {where} still has {deployed_version}: "
        f"promote the candidate: {promote_command(camera, deployed_version, rec['version'], cluster=cluster)}"
    )
    if cluster:
        msg += " (DIGEST: the candidate that run's package task exported to the store)"
    if rec.get("promotion_error"):
        msg += f"; automatic promotion failed: {rec['promotion_error']}"
    return msg


def camera_states(
    found: Scan, state: TriggerState, deployed: Deployed | None, trigger: TriggerParams
) -> list[CameraState]:
    """Where every camera stands after the pass."""
    out: list[CameraState] = []
    deployed_versions = deployed.calibrations if deployed else {}
    job = state.job or {}
    job_cams = job.get("cameras") or {}
    for cam, err in found.problems.items():
        out.append(CameraState(cam, "malformed", None, deployed_versions.get(cam), err))
    for cam in found.unchanged:
        out.append(
            CameraState(
                cam,
                "deployed",
                found.versions.get(cam),
                deployed_versions.get(cam),
                "same calibration as the deployed model",
            )
        )
    for cam in found.already_handled:
        ver = found.versions[cam]
        rec = state.get(cam, ver) or {}
        out.append(CameraState(cam, "immaterial", ver, deployed_versions.get(cam), rec.get("summary", "")))
    for cam, rec in found.awaiting.items():
        out.append(
            CameraState(
                cam,
                "awaiting_promotion",
                rec["version"],
                deployed_versions.get(cam),
                awaiting_message(cam, rec, deployed_versions.get(cam), deployed),
            )
        )
    for cam in found.unused:
        out.append(
            CameraState(
                cam, "unused", found.versions.get(cam), None, "not in the deployed model and not in data.sources"
            )
        )
    for rep in found.reports:
        cam, ver = rep.camera_id, rep.new_version
        if not rep.material:
            out.append(CameraState(cam, "immaterial", ver, rep.old_version, rep.summary()))
            continue
        done = state.get(cam, ver)
        pend = state.pending_record(cam, ver) or {}
        attempts = int(pend.get("attempts", 0))
        if done is not None:
            what = str(done.get("action", ""))
            if done.get("promoted"):
                what += f"; promoted: {done['promoted']}"
            elif done.get("promotion_error"):
                what += f"; automatic promotion failed: {done['promotion_error']}"
            out.append(CameraState(cam, "retrained", ver, rep.old_version, what, attempts))
        elif (
            cam in job_cams
            and job_cams[cam].get("version") == ver
            and (job.get("kind") == "local" or job.get("run_id") or not job.get("answered"))
        ):  # a local retrain, a Kubeflow run, or a submission in flight (an answered failure is `blocked`)
            what = job.get("run_name") or f"local job {job.get('id')}"
            out.append(
                CameraState(
                    cam, "retraining", ver, rep.old_version, f"{what}: {pend.get('message', 'started')}", attempts
                )
            )
        elif attempts >= trigger.max_attempts:
            last = pend.get("outcome", "failed")
            why = "; ".join(pend.get("reasons") or []) or pend.get("message", "")
            out.append(
                CameraState(
                    cam,
                    "gave_up",
                    ver,
                    rep.old_version,
                    f"{attempts} retrains of {ver} ran and failed or were refused (last: {last}: {why}); not retried: "
                    f"`python -m pipeline.recalibrate reset {cam}` retries it, a new calibration is a new change",
                    attempts,
                    last,
                )
            )
        else:
            outcome = pend.get("outcome")
            nxt = pend.get("next_try_at")
            if outcome == "refused":
                why = "; ".join(pend.get("reasons") or [])
                msg = (
                    f"the gate refused the retrained model (attempt {attempts} of {trigger.max_attempts}): {why}; "
                    f"the deployed model keeps {rep.old_version}; next try after {nxt}"
                )
                out.append(CameraState(cam, "refused", ver, rep.old_version, msg, attempts))
            elif outcome == "failed":
                msg = f"{pend.get('message')} (attempt {attempts} of {trigger.max_attempts}); next try after {nxt}"
                out.append(CameraState(cam, "failed", ver, rep.old_version, msg, attempts))
            elif outcome == "queued":
                out.append(CameraState(cam, "queued", ver, rep.old_version, pend.get("message", ""), attempts))
            else:  # lock, deferred, blocked, interrupted: tried again next pass, not counted
                out.append(
                    CameraState(cam, "blocked", ver, rep.old_version, pend.get("message", "not started"), attempts)
                )
    return out


def _finish_pass(ctx: _Pass, result: WatchResult, found: Scan, deployed: Deployed | None) -> None:
    with ctx.store.transaction() as st:
        states = camera_states(found, st, deployed, ctx.trigger)
        code = exit_status(states)
        st.last_pass = {"at": iso(utcnow()), "exit_code": code, "cameras": [s.to_dict() for s in states]}
    result.states, result.exit_code = states, code
    for s in sorted(states, key=lambda s: s.camera):
        level = (
            logging.ERROR
            if s.state in ATTENTION
            else logging.WARNING
            if s.state in ("retraining", "retrained", "awaiting_promotion", "queued")
            else logging.INFO
        )
        log.log(level, "%s", describe(s))
    if found.noncanonical:
        log.info(
            "not in the canonical form the CLI writes (DVC hashes bytes, so `dvc repro` re-runs their stages "
            "for a comment or key order): %s; `python -m pipeline.recalibrate fmt` rewrites them",
            ", ".join(found.noncanonical),
        )
    for cam in found.removed:
        log.info("%s: in the deployed model, no calibration file any more", cam)
    write_metrics(
        ctx.root / ctx.trigger.metrics_file
        if not Path(ctx.trigger.metrics_file).is_absolute()
        else Path(ctx.trigger.metrics_file),
        states,
        code,
    )


def watch(*, interval_s: float | None, **kwargs: Any) -> WatchResult:
    """`watch_once`, or a pass every `interval_s` seconds until stopped (errors logged, polling goes on)."""
    if interval_s is None:
        return watch_once(**kwargs)
    while True:
        try:
            watch_once(**kwargs)
        except (ValueError, yaml.YAMLError, OSError, TriggerError) as err:  # ParamsError, CalibrationError
            log.error("error: %s", str(err).replace("\n", " "))
        except Exception:  # noqa: BLE001 - a long-running watcher logs a bug and keeps polling
            log.exception("bug in the watcher's pass (polling goes on)")
        time.sleep(interval_s)


# -- diff, status, reset ----------------------------------------------------------------------


def diff(
    camera_id: str,
    *,
    params_path: Path,
    calibration_dir: Path,
    deployed_model: Path | None,
    bento_json: Path,
    against: str | None = None,
) -> ChangeReport:
    """Compare a camera's current calibration with `against` (default: the deployed version)."""
    from thermops.camera.calibration import load_calibration
    from thermops.camera.change import new_camera_report
    from thermops.camera.registry import camera_path

    params = load_params(params_path)
    trigger = section(params, "trigger", TriggerParams)
    window_m, size = _window(params)
    current = load_calibration(camera_path(calibration_dir, camera_id))
    deployed = deployed_lineage(params_path.resolve().parent, model_dir=deployed_model, bento_json=bento_json)
    envelope = deployed.envelope if deployed else Envelope()
    if against is None:
        if deployed is None:
            raise CalibrationError(f"diff {camera_id}: no deployed model; give --against VERSION")
        if camera_id not in deployed.calibrations:
            return new_camera_report(current, envelope, window_m=window_m, input_size=size, grid=trigger.roi_grid)
        against = deployed.calibrations[camera_id]
    old = deployed_calibration(calibration_dir, camera_id, against, deployed or Deployed({}, envelope, "none"))
    if old is None:
        old = find_calibration_version(calibration_dir, camera_id, against)
    if old is None:
        raise CalibrationError(f"diff {camera_id}: version {against!r} not found in git history")
    return compare(old, current, trigger=trigger, envelope=envelope, window_m=window_m, input_size=size)


def _store(params_path: Path) -> StateStore:
    trigger = section(load_params(params_path), "trigger", TriggerParams)
    path = Path(trigger.state_file)
    return StateStore(path if path.is_absolute() else params_path.resolve().parent / path)


def status(params_path: Path) -> dict[str, Any]:
    """The watcher's state: the last pass's camera states, pending retries, the running retrain, events."""
    store = _store(params_path)
    state = store.read()
    job = state.job
    if job and job.get("kind") == "local":
        job = {**job, "running": LocalJob(job).alive()}
    return {
        "state_file": str(store.path),
        "last_pass": state.last_pass,
        "pending": state.pending,
        "job": job,
        "events": state.events[-10:],
    }


def _print_status(info: dict[str, Any]) -> None:
    last = info.get("last_pass")
    if not last:
        print(f"no pass recorded yet ({info['state_file']})")
    else:
        print(f"last pass {last['at']}: exit status {last['exit_code']}")
        for s in last["cameras"]:
            print("  " + describe(s))
    job = info.get("job")
    if job:
        if job.get("kind") == "local":
            alive = "running" if job.get("running") else "not running (the next pass finishes it)"
            print(f"retrain {job['id']} (local, pid {job.get('pid')}): {alive}; log {job['record']}.log")
        else:
            print(f"retrain {job['run_name']} (Kubeflow run {job.get('run_id') or 'not confirmed yet'})")
    for cam, versions in sorted((info.get("pending") or {}).items()):
        for ver, rec in versions.items():
            print(
                f"pending {cam} {ver}: attempts {rec.get('attempts', 0)}, last {rec.get('outcome')}: "
                f"{rec.get('message')}" + (f"; next try after {rec['next_try_at']}" if rec.get("next_try_at") else "")
            )
    for ev in info.get("events") or []:
        print(f"event {ev['at']} {ev['kind']}: {ev['message']}")


def reset(params_path: Path, camera_id: str | None, version: str | None) -> list[tuple[str, str]]:
    """Forget the failed attempts of a camera (or of all): its change is retried on the next pass."""
    with _store(params_path).transaction() as st:
        cleared = st.reset(camera_id, version)
        if cleared:
            st.event("reset", "attempts cleared: " + ", ".join(f"{c} {v}" for c, v in cleared))
    return cleared


# -- CLI -------------------------------------------------------------------------------------


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the interval must be more than 0 seconds")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (paths and registry edits only; thresholds come from params.yaml)."""
    ap = argparse.ArgumentParser(
        prog="python -m pipeline.recalibrate",
        description=__doc__.splitlines()[0],
        epilog="watch --once exit status: 0 all clear, 1 cannot run, 2 bad command line, 3 a gate refusal "
        "pending, 4 another camera needs an operator, 128+N stopped by signal N.",
    )
    ap.add_argument("--calibrations", type=Path, default=DEFAULT_DIR, help="registry folder (data/calibration)")
    sub = ap.add_subparsers(dest="command", required=True)

    a = sub.add_parser("add", help="register a new camera (then commit it; see docs/recalibration.md)")
    a.add_argument("camera_id")
    a.add_argument("--from", dest="from_file", type=Path, help="a full calibration YAML")
    a.add_argument("--width", type=int, help="image width (a camera of unknown geometry)")
    a.add_argument("--height", type=int, help="image height (a camera of unknown geometry)")
    a.add_argument("--version")
    a.add_argument("--valid-from", type=_date)
    a.add_argument("--description", help="(without --from) what the camera is")
    a.add_argument("--source", help="(without --from) where its footage comes from (default: real)")
    a.add_argument("--agc-mode", help="(without --from) its 8-bit AGC mode (default: unknown)")

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
    r.add_argument("--confirm", action="store_true", help="re-calibrated, nothing moved: a new version, same values")
    r.add_argument("--version")
    r.add_argument("--valid-from", type=_date)
    r.add_argument("--description")

    h = sub.add_parser("history", help="committed calibrations of a camera (git)")
    h.add_argument("camera_id")

    f = sub.add_parser("fmt", help="rewrite calibration files in the canonical form (content unchanged)")
    f.add_argument("cameras", nargs="*", help="default: every camera")
    f.add_argument("--check", action="store_true", help="only list files not in the canonical form (exit 1 if any)")

    for name, helptext in (
        ("diff", "compare a camera's calibration with the deployed one"),
        ("watch", "retrain on material calibration changes"),
        ("status", "the watcher's state: camera states, pending retries, the running retrain"),
        ("reset", "forget a camera's failed retrain attempts, so the next pass tries again"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--params", type=Path, default=Path("params.yaml"))
        if name in ("diff", "watch"):
            p.add_argument(
                "--deployed-model",
                type=Path,
                help="a model folder (card.json, calibration/) that is the deployed model "
                "(default: the production model of deploy/production.json; when nothing was ever "
                "promoted, the packaged candidate named in --bento-json)",
            )
            p.add_argument("--bento-json", type=Path, default=DEFAULT_BENTO_JSON, help="the package step's output")
    d = sub.choices["diff"]
    d.add_argument("camera_id")
    d.add_argument("--against", help="a committed version (default: the deployed one)")
    d.add_argument("--json", action="store_true")
    w = sub.choices["watch"]
    g = w.add_mutually_exclusive_group()
    g.add_argument("--once", action="store_true", help="one pass (the default)")
    g.add_argument("--interval", type=_positive, metavar="S", help="a pass every S seconds, until stopped")
    g.add_argument("--poll", action="store_true", help="a pass every trigger.poll_interval_s seconds, until stopped")
    w.add_argument("--mode", choices=["local", "cluster"], help="default: trigger.mode")
    w.add_argument("--kfp-host", help="Kubeflow API (cluster mode; default: env KFP_HOST)")
    w.add_argument("--namespace", help="multi-user Kubeflow namespace (cluster mode; default: env KFP_NAMESPACE)")
    w.add_argument("--experiment", help="Kubeflow experiment (cluster mode; default: the pipeline name)")
    s = sub.choices["status"]
    s.add_argument("--json", action="store_true")
    rs = sub.choices["reset"]
    rs.add_argument("camera_id", nargs="?")
    rs.add_argument("--version", help="only this version (default: every version of the camera)")
    rs.add_argument("--all", action="store_true", help="every camera")
    return ap


def _check_flags(args: argparse.Namespace) -> None:
    """Refuse contradictory flags (argparse cannot express these)."""
    if args.command == "add" and args.from_file is not None:
        given = [f"--{n.replace('_', '-')}" for n in ("description", "source", "agc_mode") if getattr(args, n)]
        if given:
            raise CalibrationError(f"add: --from FILE and {', '.join(given)} contradict (the file says them)")
    if args.command == "reset":
        if args.all and (args.camera_id or args.version):
            raise CalibrationError("reset: --all and a camera (or --version) contradict")
        if not args.all and not args.camera_id:
            raise CalibrationError("reset: name a camera, or --all")
    if args.command == "watch":
        mode = args.mode or section(load_params(args.params), "trigger", TriggerParams).mode
        cluster_only = [
            f
            for f, v in (
                ("--kfp-host", args.kfp_host),
                ("--namespace", args.namespace),
                ("--experiment", args.experiment),
            )
            if v
        ]
        if mode == "local" and cluster_only:
            raise CalibrationError(f"watch: {', '.join(cluster_only)} only apply to --mode cluster (mode is local)")


def _next_steps_after_add(camera_id: str) -> str:
    return (
        f"next: commit data/calibration/{camera_id}.yaml. The watcher's next pass reports {camera_id} as a new camera: "
        f"it is material (one retrain adds it) once the pipeline trains on it (listed in `cameras:` for the embedded "
        f"world, or the camera_id of a source in data.sources), else it is listed as unused. See docs/recalibration.md."
    )


def main(argv: list[str] | None = None) -> None:
    """CLI entry point; expected errors print `error: ...` and exit 1; `watch` exits with the pass's status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        _check_flags(args)
        if args.command == "add":
            cal = add_camera(
                args.calibrations,
                args.camera_id,
                from_file=args.from_file,
                width=args.width,
                height=args.height,
                version=args.version,
                valid_from=args.valid_from,
                description=args.description or "",
                source=args.source or "real",
                agc_mode=args.agc_mode or "unknown",
            )
            print(f"added {cal.camera_id} version {cal.version} (valid from {cal.valid_from}, {cal.units})")
            print(_next_steps_after_add(cal.camera_id))
        elif args.command == "record":
            old, new = record_calibration(
                args.calibrations,
                args.camera_id,
                assignments=[parse_assignment(s) for s in args.sets],
                from_file=args.from_file,
                version=args.version,
                valid_from=args.valid_from,
                description=args.description,
                confirm=args.confirm,
            )
            what = "confirmed" if args.confirm else "recorded"
            print(f"{what} {new.camera_id} version {new.version} (was {old.version}), valid from {new.valid_from}")
        elif args.command == "history":
            for e in calibration_history(args.calibrations, args.camera_id):
                what = f"{e.calibration.version} valid from {e.calibration.valid_from}" if e.calibration else e.error
                print(f"{e.commit[:10]} {e.committed} {what}")
        elif args.command == "fmt":
            _fmt(args)
        elif args.command == "diff":
            rep = diff(
                args.camera_id,
                params_path=args.params,
                calibration_dir=args.calibrations,
                deployed_model=args.deployed_model,
                bento_json=args.bento_json,
                against=args.against,
            )
            print(json.dumps(rep.to_dict(), indent=2, default=float) if args.json else rep.summary())
        elif args.command == "status":
            info = status(args.params)
            print(json.dumps(info, indent=2, sort_keys=True)) if args.json else _print_status(info)
        elif args.command == "reset":
            cleared = reset(args.params, None if args.all else args.camera_id, args.version)
            print(
                "reset: " + ", ".join(f"{c} {v}" for c, v in cleared) + " (retried on the next pass)"
                if cleared
                else "reset: nothing to reset"
            )
        elif args.command == "watch":
            interval = args.interval
            if args.poll:
                interval = section(load_params(args.params), "trigger", TriggerParams).poll_interval_s
            install_stop_handlers()
            try:
                res = watch(
                    interval_s=interval,
                    params_path=args.params,
                    calibration_dir=args.calibrations,
                    deployed_model=args.deployed_model,
                    bento_json=args.bento_json,
                    mode=args.mode,
                    kfp_host=args.kfp_host or os.environ.get("KFP_HOST"),
                    namespace=args.namespace or os.environ.get("KFP_NAMESPACE"),
                    experiment=args.experiment,
                )
            except Stopped as stop:
                print(f"stopped by signal {stop.signum}", file=sys.stderr)
                raise SystemExit(128 + stop.signum) from None
            if res.busy:
                print("another watcher is in a pass; nothing done")
            else:
                print(f"triggered: {res.action}" if res.triggered else "no retrain triggered")
                attention = [s for s in res.states if s.state in ATTENTION]
                for s in attention:
                    print(f"attention: {s.camera} {s.state}: {s.message}")
            raise SystemExit(res.exit_code)
    except (CalibrationError, ParamsError, TriggerError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_ERROR) from None


def _fmt(args: argparse.Namespace) -> None:
    from thermops.camera.calibration import load_calibration
    from thermops.camera.registry import camera_path

    cams = args.cameras or sorted(p.stem for p in Path(args.calibrations).glob("*.yaml"))
    if args.check:
        bad = [
            c
            for c in cams
            if not is_canonical(camera_path(args.calibrations, c), load_calibration(camera_path(args.calibrations, c)))
        ]
        for c in bad:
            print(f"not canonical: {camera_path(args.calibrations, c)}")
        if bad:
            raise SystemExit(EXIT_ERROR)
        print(f"{len(cams)} calibration file(s) in the canonical form")
        return
    for c in cams:
        changed = format_calibration(args.calibrations, c)
        print(f"{'rewrote' if changed else 'unchanged'}: {camera_path(args.calibrations, c)}")


if __name__ == "__main__":
    main()
