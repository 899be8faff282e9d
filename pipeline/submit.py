"""Create a Kubeflow run of the pipeline: compile, resolve the data, send, report.

`submit_run` is what `python -m pipeline submit` and the calibration watcher call.
Overrides are params keys (`prepare.size=16`), mapped onto the pipeline parameters
(a key inside a section the stages read whole updates that section's value). The
data is resolved to a content hash and a commit before anything is sent
(`pipeline.datahash`), so KFP's cache misses exactly when the data changed.
"""

from __future__ import annotations

import copy
import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.graph import build_graph, get_key, param_ident, set_key

ROOT = Path(__file__).resolve().parent.parent


class SubmitError(RuntimeError):
    """The run could not be created (bad override, unreachable server, server error)."""


@dataclass
class Submission:
    """What a submission sends (also what `--dry-run` prints)."""

    host: str
    namespace: str | None
    experiment: str
    run_name: str
    arguments: dict[str, Any]
    data_hash: str
    git_rev: str
    pipeline_yaml: str = field(repr=False, default="")
    enable_caching: bool | None = None  # compiled into every task; None: kubeflow.caching
    image: str = ""

    def summary(self) -> dict[str, Any]:
        """JSON-able view without the pipeline spec."""
        return {
            "image": self.image,
            "enable_caching": self.enable_caching,
            "host": self.host,
            "namespace": self.namespace,
            "experiment": self.experiment,
            "run_name": self.run_name,
            "data_hash": self.data_hash,
            "git_rev": self.git_rev,
            "arguments": self.arguments,
        }


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` with a YAML value (`prepare.size=16`, `synth.weathers=[clear]`)."""
    if "=" not in text:
        raise SubmitError(f"override {text!r}: expected key=value")
    key, value = text.split("=", 1)
    key = key.strip()
    if not key:
        raise SubmitError(f"override {text!r}: empty key")
    return key, yaml.safe_load(value) if value.strip() else ""


def _templated_keys(root: Path) -> set[str]:
    # keys dvc.yaml interpolates (foreach lists, paths) shape the graph: compile time only
    text = (root / "dvc.yaml").read_text()
    return {m.strip() for m in re.findall(r"\$\{([^}]+)\}", text)} - {"item", "key", "value"}


def _cast(value: Any, default: Any, key: str) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise SubmitError(f"override {key}: expected true or false, got {value!r}")
    elif isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    elif isinstance(default, int) and not isinstance(default, bool):
        if not isinstance(value, int) or isinstance(value, bool):
            raise SubmitError(f"override {key}: expected an integer, got {value!r}")
    elif type(default) is not type(value) and not (isinstance(default, float) and isinstance(value, float)):
        raise SubmitError(f"override {key}: expected {type(default).__name__}, got {value!r}")
    return value


def apply_overrides(params: dict[str, Any], overrides: dict[str, Any], root: Path = ROOT) -> dict[str, Any]:
    """A copy of `params` with dotted-key overrides applied, type-checked against params.yaml."""
    out = copy.deepcopy(params)
    templated = _templated_keys(root)
    for key, value in overrides.items():
        if any(key == t or key.startswith(t + ".") or t.startswith(key + ".") for t in templated):
            raise SubmitError(
                f"override {key}: dvc.yaml builds the stage graph from it; edit params.yaml and recompile instead"
            )
        try:
            default = get_key(out, key)
        except KeyError:
            raise SubmitError(f"override {key}: no such key in params.yaml") from None
        set_key(out, key, _cast(value, default, key))
    return out


def prepare_submission(
    host: str,
    params_overrides: dict[str, Any] | None = None,
    namespace: str | None = None,
    experiment: str | None = None,
    root: str | Path = ROOT,
    data_rev: str | None = None,
    run_name: str | None = None,
    image: str | None = None,
    enable_caching: bool | None = None,
) -> Submission:
    """Compile the pipeline and resolve everything a run needs, without sending it.

    `image` overrides `kubeflow.image` (either must be pinned); `enable_caching` is KFP's
    run-wide switch (None keeps each task's compiled `kubeflow.caching`).
    """
    from kfp import compiler

    from pipeline import datahash
    from pipeline.codegen import encode_param
    from pipeline.pipeline import build_pipeline, kubeflow_params, pipeline_parameters
    from thermops.config import load_params

    root = Path(root).resolve()
    base = load_params(root / "params.yaml")
    params = apply_overrides(base, dict(params_overrides or {}), root)
    if enable_caching is not None:
        # compiled into every task, those inside the gate's condition too: kfp 2.17's
        # Client(enable_caching=...) only rewrites the root DAG's tasks
        params["kubeflow"]["caching"] = bool(enable_caching)
    kf = kubeflow_params(params)
    graph = build_graph(root, params)
    rev = datahash.resolve(root, params, data_source=kf.data_source, rev=data_rev, graph=graph)
    from pipeline.pipeline import ClusterConfigError

    try:
        pipe = build_pipeline(root=root, params=params, data_hash=rev.data_hash, git_rev=rev.git_rev, image=image)
    except ClusterConfigError as err:  # one error type for callers (the calibration watcher)
        raise SubmitError(str(err)) from None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pipeline.yaml"
        compiler.Compiler().compile(pipe, str(path))
        text = path.read_text()
    args: dict[str, Any] = {"data_hash": rev.data_hash, "git_rev": rev.git_rev}
    names = {n for n, _, _ in pipeline_parameters(graph, kf, rev.data_hash, rev.git_rev)}
    for leaf in graph.leaves:
        name = param_ident(leaf)
        if name in names and get_key(params, leaf) != get_key(base, leaf):
            args[name] = encode_param(get_key(params, leaf))
    for key in params_overrides or {}:
        if not any(key == lf or key.startswith(lf + ".") for lf in graph.leaves if param_ident(lf) in names):
            if key != "kubeflow" and not key.startswith("kubeflow."):
                raise SubmitError(f"override {key}: no stage of the pipeline reads it")
    name = run_name or f"{kf.pipeline_name} {rev.git_rev[:12]} data {rev.data_hash[:12]}"
    return Submission(
        host,
        namespace,
        experiment or kf.pipeline_name,
        name,
        args,
        rev.data_hash,
        rev.git_rev,
        text,
        enable_caching=enable_caching,
        image=image or kf.image,
    )


def _server_message(err: Exception) -> str:
    status = getattr(err, "status", None)
    body = getattr(err, "body", None) or ""
    try:
        body = json.loads(body).get("message") or json.loads(body).get("error") or body
    except (ValueError, AttributeError):
        pass
    if status:
        return f"server answered {status} {getattr(err, 'reason', '') or ''}: {str(body).strip()[:500]}".rstrip(": ")
    return str(err).splitlines()[0][:500]


def submit_run(
    host: str,
    params_overrides: dict[str, Any] | None = None,
    namespace: str | None = None,
    experiment: str | None = None,
    token: str | None = None,
    dry_run: bool = False,
    root: str | Path = ROOT,
    data_rev: str | None = None,
    run_name: str | None = None,
    image: str | None = None,
    enable_caching: bool | None = None,
) -> tuple[str | None, str | None]:
    """Create a run of the thermops pipeline on the KFP server at `host`.

    Args:
        host: KFP API endpoint (e.g. http://ml-pipeline-ui.kubeflow:80 or a port-forward).
        params_overrides: params keys to change for this run, e.g. {"finetune.epochs": 3}.
        namespace: Kubernetes namespace (multi-user Kubeflow; leave None on single-user).
        experiment: experiment name (created if missing; default: the pipeline name).
        token: bearer token for an authenticated endpoint.
        dry_run: compile and resolve only; nothing is sent.
        root: repository holding dvc.yaml and params.yaml.
        data_rev: git revision of the data (dvc data source); resolved to a commit.
        run_name: display name (default: pipeline, commit and data hash).
        image: overrides kubeflow.image (must be pinned).
        enable_caching: the run-wide caching switch (None: each task's compiled setting).

    Returns:
        (run id, run URL); (None, None) for a dry run.

    Raises:
        SubmitError: a bad override, an unreachable server or an error answer, in one line.
    """
    sub = prepare_submission(
        host, params_overrides, namespace, experiment, root, data_rev, run_name, image, enable_caching
    )
    if dry_run:
        return None, None
    return send(sub, token)


def _probe(host: str, timeout: float = 10.0) -> None:
    """Fail fast when nothing answers at `host` (kfp.Client would retry for half a minute)."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"{host.rstrip('/')}/apis/v2beta1/healthz", timeout=timeout).close()
    except urllib.error.HTTPError:
        pass  # something answers; the client reports what
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise SubmitError(f"KFP at {host} unreachable: {reason}") from None


def send(sub: Submission, token: str | None = None) -> tuple[str, str]:
    """Send a prepared submission with `kfp.Client`; (run id, URL)."""
    import kfp
    import kfp_server_api
    import urllib3

    _probe(sub.host)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pipeline.yaml"
        path.write_text(sub.pipeline_yaml)
        try:
            # a non-default namespace keeps the constructor from probing the server
            client = kfp.Client(host=sub.host, namespace=sub.namespace or "kubeflow", existing_token=token)
            result = client.create_run_from_pipeline_package(
                str(path),
                arguments=sub.arguments,
                run_name=sub.run_name,
                experiment_name=sub.experiment,
                namespace=sub.namespace,
            )
        except kfp_server_api.ApiException as err:
            raise SubmitError(f"KFP at {sub.host}: {_server_message(err)}") from None
        except (urllib3.exceptions.HTTPError, OSError, TimeoutError) as err:
            raise SubmitError(f"KFP at {sub.host} unreachable: {_server_message(err)}") from None
    run_id = result.run_id
    return run_id, f"{sub.host.rstrip('/')}/#/runs/details/{run_id}"


# What `submit --wait` exits with, by the run's final state (v2beta1 RuntimeState).
WAIT_EXIT = {"SUCCEEDED": 0, "FAILED": 3, "CANCELED": 4, "SKIPPED": 4}


def wait_for_run(
    sub: Submission, run_id: str, token: str | None = None, timeout: float = 86400.0, poll: float = 15.0
) -> str:
    """Follow a run to its end: print each state change; return the final state, or TIMEOUT.

    Polls `kfp.Client.get_run` (transient connection errors are retried until `timeout`).
    """
    import time

    import kfp
    import kfp_server_api
    import urllib3

    client = kfp.Client(host=sub.host, namespace=sub.namespace or "kubeflow", existing_token=token)
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            run = client.get_run(run_id)
            state = str(run.state or "PENDING")
        except kfp_server_api.ApiException as err:
            raise SubmitError(f"KFP at {sub.host}: {_server_message(err)}") from None
        except (urllib3.exceptions.HTTPError, OSError, TimeoutError):
            state = last or "UNKNOWN"  # the server blinked: keep following
        if state != last:
            print(f"run {run_id}: {state}", flush=True)
            last = state
        if state in WAIT_EXIT:
            if state != "SUCCEEDED" and getattr(run, "error", None):
                print(f"run {run_id}: {getattr(run.error, 'message', run.error)}", flush=True)
            return state
        if time.monotonic() >= deadline:
            return "TIMEOUT"
        time.sleep(max(0.0, min(poll, deadline - time.monotonic())))
