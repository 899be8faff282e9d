"""Serving cost of window geometry: the geometry-free path before and after, and a geometry model.

Three servers of the same service, one worker each (OMP_NUM_THREADS=1), all on 127.0.0.1:

- `base`:  the service of a baseline tree (`--baseline`, e.g. a `git worktree` of the commit
  before window geometry) serving an untrained tiny geometry-free model;
- `plain`: this tree's service, the same model;
- `geo`:   this tree's service, the same network with `input.geometry` [metric_scale,
  pixel_scale, known], requests carrying window_px and ground_px.

One client sends the same 8 x 32 x 32 JSON tubelet back to back; rounds alternate
base / plain / plain+fields / geo (each first in turn) so that all see the same machine load. Reported: p50 and
p90 per server (ms), and the ratios plain / base, plain+fields / plain and geo / plain with
the spread over rounds. The answers of base and plain are compared too (identical scores).

    mkdir /tmp/thermops-base && git archive f8bc5f1 | tar -x -C /tmp/thermops-base   # before geometry serving
    .venv/bin/python benchmarks/serve_geometry.py --baseline /tmp/thermops-base --out /tmp/serve_geometry.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

GEOMETRY = ("metric_scale", "pixel_scale", "known")


def package(root: Path, geometry: tuple[str, ...]) -> tuple[Path, str]:
    """Package an untrained tiny model (with or without geometry) with the real package step:
    (the BentoML home, the bento tag)."""
    from serving_helpers import make_gated_model, package_in_subprocess, small_package_params, write_params

    paths = make_gated_model(root, geometry=geometry)
    home = root / "bentoml"
    out = root / "bento.json"
    params = small_package_params(max_batch_size=16, max_concurrency=64)
    proc = package_in_subprocess(paths, home, out, write_params(root / "params.yaml", params))
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return home, json.loads(out.read_text())["bento_tag"]


def round_trip(session, url: str, body: bytes, n: int) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = session.post(url + "/classify", data=body, headers={"Content-Type": "application/json"}, timeout=60)
        times.append(1000 * (time.perf_counter() - t0))
        if r.status_code != 200:
            raise RuntimeError(f"{url}: {r.status_code} {r.text[:300]}")
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", type=Path, required=True, help="a tree of the service before geometry serving")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--requests", type=int, default=300, help="per server per round")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()

    import requests
    from serving_helpers import source_server
    from serving_payloads import counts_tubelet

    tmp = Path(tempfile.mkdtemp(prefix="serve-geometry-"))
    plain_home, plain_tag = package(tmp / "plain", ())
    geo_home, geo_tag = package(tmp / "geo", GEOMETRY)
    arr = counts_tubelet(8, 32, 32, seed=3)
    body = {"tubelet": arr.tolist(), "camera_id": "cam-lin"}
    fields = {"window_px": 48.0, "ground_px": [192.0, 200.0]}
    bodies = {
        "base": json.dumps(body).encode(),
        "plain": json.dumps(body).encode(),
        "plain+fields": json.dumps({**body, **fields}).encode(),
        "geo": json.dumps({**body, **fields}).encode(),
    }
    servers = {}
    try:
        for name, tree, home, tag in (
            ("base", a.baseline, plain_home, plain_tag),
            ("plain", ROOT, plain_home, plain_tag),
            ("geo", ROOT, geo_home, geo_tag),
        ):
            servers[name] = source_server(home, tag, tmp / f"{name}.log", tree=tree, state_dir=f"state-{name}")
        for server in servers.values():
            server.wait_ready(timeout=180)
        urls = {"base": servers["base"].url, "plain": servers["plain"].url, "plain+fields": servers["plain"].url}
        urls["geo"] = servers["geo"].url
        sessions = {k: requests.Session() for k in urls}
        answers = {k: sessions[k].post(urls[k] + "/classify", data=bodies[k], timeout=60).json() for k in urls}
        same = answers["base"]["scores"] == answers["plain"]["scores"] == answers["plain+fields"]["scores"]
        times: dict[str, list[float]] = {k: [] for k in urls}
        per_round: dict[str, list[float]] = {k: [] for k in urls}
        loads = []
        names = list(urls)
        for r in range(a.rounds):
            loads.append(round(os.getloadavg()[0], 2))
            for k in names[r % len(names) :] + names[: r % len(names)]:  # each server first in turn
                round_trip(sessions[k], urls[k], bodies[k], 30)  # warm the connection and the caches
                t = round_trip(sessions[k], urls[k], bodies[k], a.requests)
                times[k] += t
                per_round[k].append(statistics.median(t))
    finally:
        for server in servers.values():
            server.stop()

    def ratio(x: str, y: str) -> dict:
        rs = [p / q for p, q in zip(per_round[x], per_round[y])]
        return {"median": round(statistics.median(rs), 3), "min": round(min(rs), 3), "max": round(max(rs), 3)}

    result = {
        "p50_ms": {k: round(float(np.percentile(v, 50)), 3) for k, v in times.items()},
        "p90_ms": {k: round(float(np.percentile(v, 90)), 3) for k, v in times.items()},
        "ratio_p50_per_round": {
            "plain/base": ratio("plain", "base"),
            "plain+fields/plain": ratio("plain+fields", "plain"),
            "geo/plain": ratio("geo", "plain"),
        },
        "base_equals_plain_answers": same,
        "geo_answer_geometry": answers["geo"].get("geometry"),
        "load_1min": loads,
        "rounds": a.rounds,
        "requests_per_round": a.requests,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if a.out:
        a.out.write_text(text)


if __name__ == "__main__":
    main()
