"""A STAND-IN for the Kubeflow Pipelines v2beta1 REST API, for tests only.

Not a KFP server: a tiny `http.server` on 127.0.0.1 in a thread that answers the
few endpoints `kfp.Client` uses to create and find a run (healthz, list/create
experiment, create/get/list runs, the list filtered by display name) with the shapes
of the v2beta1 API, and records every request so a test can check what the client
sent. `fail_runs_with` makes run creation answer an error status, to test how errors
reach the user. A slow server: `run_delay_s` holds the answer to a run creation that
long (the run exists from the start unless `create_after_delay`), `healthz_delay_s`
holds the health check; `slow_requests` shows whether a delayed request is in flight.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse


def _public(run: dict[str, Any]) -> dict[str, Any]:
    """A run as the server shows it: without the stand-in's own `_` bookkeeping keys."""
    return {k: v for k, v in run.items() if not k.startswith("_")}


@dataclass
class Recorded:
    """One request the stand-in received."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


@dataclass
class KfpStandIn:
    """The stand-in server; use as a context manager, `url` is its address."""

    fail_runs_with: int | None = None
    run_delay_s: float = 0.0
    create_after_delay: bool = False
    healthz_delay_s: float = 0.0
    # states a run goes through, one per GET of the run (the last one stays): follows `--wait`
    run_states: list[str] = field(default_factory=lambda: ["PENDING"])
    requests: list[Recorded] = field(default_factory=list)
    experiments: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __enter__(self) -> KfpStandIn:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def _reply(self, status: int, obj: Any) -> None:
                data = json.dumps(obj).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client died waiting: its problem
                    pass

            def _record(self) -> Recorded:
                url = urlparse(self.path)
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                body = json.loads(raw) if raw else None
                rec = Recorded(self.command, url.path, parse_qs(url.query), dict(self.headers), body)
                standin.requests.append(rec)
                return rec

            def do_GET(self) -> None:
                rec = self._record()
                if rec.path == "/apis/v2beta1/healthz":
                    time.sleep(standin.healthz_delay_s)
                    return self._reply(200, {"multi_user": False})
                if rec.path == "/apis/v2beta1/runs":
                    flt = json.loads(rec.query.get("filter", ["{}"])[0] or "{}")
                    names = [
                        p.get("string_value") or p.get("stringValue")
                        for p in flt.get("predicates", [])
                        if p.get("key") == "display_name" and p.get("operation") == "EQUALS"
                    ]
                    found = [_public(r) for r in standin.runs.values() if not names or r.get("display_name") in names]
                    return self._reply(200, {"runs": found, "total_size": len(found)} if found else {})
                if rec.path == "/apis/v2beta1/experiments":
                    flt = json.loads(rec.query.get("filter", ["{}"])[0] or "{}")
                    names = [p.get("string_value") or p.get("stringValue") for p in flt.get("predicates", [])]
                    found = [e for e in standin.experiments.values() if not names or e["display_name"] in names]
                    return self._reply(200, {"experiments": found, "total_size": len(found)} if found else {})
                if rec.path.startswith("/apis/v2beta1/runs/"):
                    run = standin.runs.get(rec.path.rsplit("/", 1)[-1])
                    if run:
                        seen = run.setdefault("_gets", 0)
                        run["state"] = standin.run_states[min(seen, len(standin.run_states) - 1)]
                        run["_gets"] = seen + 1
                        if run["state"] == "FAILED":
                            run["error"] = {"code": 2, "message": "stand-in: task gate_task failed"}
                    return self._reply(200 if run else 404, _public(run) if run else {"message": "run not found"})
                return self._reply(404, {"message": f"stand-in: no route {rec.path}"})

            def do_POST(self) -> None:
                rec = self._record()
                if rec.path == "/apis/v2beta1/experiments":
                    exp = {**rec.body, "experiment_id": str(uuid.uuid4())}
                    standin.experiments[exp["experiment_id"]] = exp
                    return self._reply(200, exp)
                if rec.path == "/apis/v2beta1/runs":
                    if standin.fail_runs_with:
                        return self._reply(
                            standin.fail_runs_with,
                            {
                                "error": "stand-in failure",
                                "code": 13,
                                "message": "internal error: stand-in refused the run",
                            },
                        )
                    run = {**rec.body, "run_id": str(uuid.uuid4()), "state": "PENDING"}
                    if not standin.create_after_delay:
                        standin.runs[run["run_id"]] = run
                    time.sleep(standin.run_delay_s)  # a slow answer; the client may die waiting
                    standin.runs[run["run_id"]] = run
                    return self._reply(200, run)
                return self._reply(404, {"message": f"stand-in: no route {rec.path}"})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        """http://127.0.0.1:<port>"""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()

    def set_state(self, state: str, message: str = "") -> None:
        """Every run moves to `state` (SUCCEEDED, FAILED, ...), with an error message if given."""
        for run in self.runs.values():
            run["state"] = state
            if message:
                run["error"] = {"code": 2, "message": message}

    def posted(self, path: str) -> list[Recorded]:
        """The POST requests to `path`."""
        return [r for r in self.requests if r.method == "POST" and r.path == path]
