"""Locust users for the serving load tests; benchmarks/serve_load.py runs them headless.

Users (pick one or several by class name on the locust command line):

- `JsonClient`, `NpyClient`: send one good 8 x 32 x 32 tubelet again and again, as a JSON
  array to /classify or as an .npy upload to /classify_upload, with no wait between
  requests (a closed loop: with -u N, N requests in flight).
- `StormGood`, `StormBad`: the mixed storm. Good users cycle through good requests of
  several shapes, cameras and encodings and check every answer against the answer the
  same request got alone (`expected`); bad users cycle through the hostile requests
  (declared-size and compression bombs, truncated and mixed-page TIFFs, wrong parts, ...)
  and check each gets its 4xx.

Every request is recorded with its exact latency (time.perf_counter around the call;
locust's own statistics round to whole milliseconds below 100 ms); when the run stops,
a summary goes to the JSON file named in the THERMOPS_LOAD configuration:
per request kind, the count, status histogram, answers per second after the warm-up,
latency percentiles, and for the storm the mismatches against the solo answers and the
statuses per request. A 503 "overloaded" with Retry-After (above the stated capacity)
is recorded as status 1503, apart from server errors.

    THERMOPS_LOAD='{"out": "/tmp/x.json", "warmup_s": 2}' locust -f benchmarks/locustfile.py \
        --headless -u 32 -r 32 -t 20s --host http://127.0.0.1:3000 NpyClient
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from locust import FastHttpUser, constant, events, task

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from serving_payloads import good_payloads, hostile_payloads  # noqa: E402

CONFIG = json.loads(os.environ.get("THERMOPS_LOAD", "{}"))
LIMITS = SimpleNamespace(**CONFIG.get("limits", {"max_frames": 64, "max_elements": 262144}))
GOOD = good_payloads()
BY_NAME = {p.name: p for p in GOOD}
HOSTILE = hostile_payloads(LIMITS) if CONFIG.get("limits") else []
EXPECTED: dict[str, dict[str, float]] = (
    json.loads(Path(CONFIG["expected"]).read_text()) if CONFIG.get("expected") else {}
)
TOLERANCE = float(CONFIG.get("tolerance", 1e-5))
RECORDS: list[tuple[float, str, float, int, bool]] = []  # (start, kind, ms, status, as expected)
STORM_STATUSES: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))  # payload -> status -> count
MISMATCHES: list[dict] = []
T0 = time.perf_counter()
CAPACITY = 1503  # recorded status of a 503 "overloaded" with Retry-After


def _send(user: FastHttpUser, payload, kind: str) -> tuple[int, bytes]:
    start = time.perf_counter()
    with user.client.post(
        payload.route, data=payload.body, headers=payload.headers, name=kind, catch_response=True
    ) as resp:
        ms = (time.perf_counter() - start) * 1000
        status = int(resp.status_code or 0)
        body = resp.content or b""
        ok = status in payload.statuses
        if ok and payload.fragment:
            ok = payload.fragment.encode() in body
        if status == 503 and resp.headers.get("retry-after") and b'"overloaded"' in body:
            status = CAPACITY  # above the stated capacity: refused as documented, counted apart
            ok = not payload.good  # a good request below capacity must never get it
        if ok:
            resp.success()
        else:
            resp.failure(f"{payload.name}: {status}")
    RECORDS.append((start - T0, kind, ms, status, ok))
    if kind.startswith("storm"):
        STORM_STATUSES[payload.name][str(status)] += 1
    return status, body


def _check(payload, body: bytes) -> bool:
    """A good answer equals the answer the request got alone."""
    want = EXPECTED.get(payload.name)
    if want is None:
        return True
    got = json.loads(body)
    diff = max(abs(got["scores"][k] - v) for k, v in want["scores"].items())
    if got["label"] != want["label"] or diff > TOLERANCE:
        MISMATCHES.append({"name": payload.name, "label": got["label"], "want": want["label"], "max_diff": diff})
        return False
    return True


class JsonClient(FastHttpUser):
    """One 8 x 32 x 32 counts tubelet as a JSON array, back to back."""

    wait_time = constant(0)
    payload = BY_NAME["json-counts-8x32x32"]

    @task
    def classify(self) -> None:
        _send(self, self.payload, "json")


class NpyClient(FastHttpUser):
    """The same tubelet as an .npy upload, back to back."""

    wait_time = constant(0)
    payload = BY_NAME["npy-counts-8x32x32"]

    @task
    def classify(self) -> None:
        _send(self, self.payload, "npy")


class StormGood(FastHttpUser):
    """Good requests of several kinds; every answer is checked against the solo answer."""

    wait_time = constant(0)

    def on_start(self) -> None:
        self.cycle = itertools.cycle(GOOD)

    @task
    def good(self) -> None:
        payload = next(self.cycle)
        status, body = _send(self, payload, "storm-good")
        if status == 200 and not _check(payload, body):
            RECORDS[-1] = (*RECORDS[-1][:4], False)


class StormBad(FastHttpUser):
    """Hostile requests; each must get its 4xx."""

    wait_time = constant(0)

    def on_start(self) -> None:
        self.cycle = itertools.cycle(HOSTILE)

    @task
    def bad(self) -> None:
        _send(self, next(self.cycle), "storm-bad")


def summarize(records, warmup_s: float) -> dict:
    """Per request kind: counts, statuses, answers per second and latency after the warm-up."""
    out: dict[str, dict] = {}
    kinds: dict[str, list] = defaultdict(list)
    for r in records:
        kinds[r[1]].append(r)
    for kind, rows in kinds.items():
        t_end = max(r[0] + r[2] / 1000 for r in rows)
        t_first = min(r[0] for r in rows)
        steady = [r for r in rows if r[0] >= t_first + warmup_s]
        window = max(t_end - (t_first + warmup_s), 1e-9)
        lat = np.array([r[2] for r in steady if r[3] == 200]) if steady else np.array([])
        statuses: dict[str, int] = defaultdict(int)
        for r in rows:
            statuses[str(r[3])] += 1
        out[kind] = {
            "requests": len(rows),
            "statuses": dict(statuses),
            "as_expected": sum(r[4] for r in rows),
            "not_as_expected": sum(not r[4] for r in rows),
            "server_errors": sum(500 <= r[3] < 600 for r in rows),
            "capacity_refusals": sum(r[3] == CAPACITY for r in rows),
            "good_answers_per_s": sum(r[3] == 200 and r[4] for r in steady) / window,
            "window_s": window,
            **(
                {f"p{q}_ms": float(np.percentile(lat, q)) for q in (50, 95, 99)} | {"mean_ms": float(lat.mean())}
                if lat.size
                else {}
            ),
        }
    return out


@events.quitting.add_listener
def _write_summary(environment, **_) -> None:
    if not CONFIG.get("out"):
        return
    result = {
        "kinds": summarize(RECORDS, float(CONFIG.get("warmup_s", 2.0))),
        "mismatches": MISMATCHES[:50],
        "by_name": {k: dict(v) for k, v in sorted(STORM_STATUSES.items())},
    }
    Path(CONFIG["out"]).write_text(json.dumps(result, indent=2))
