"""Serving benchmark: the thermops bento against the floor service, same client, same run.

What it measures, on the machine it runs on (the serving targets in benchmarks/RESULTS.md):

1. the in-process model call at batch 1 (p50, one torch thread, as the worker runs it)
   and per tubelet at the largest batch, between the HTTP phases;
2. one client, requests back to back: p50 / p99 of the floor and of thermops, for the
   same 8 x 32 x 32 tubelet as a JSON array (/classify) and as an .npy upload
   (/classify_upload); target: thermops p50 <= 1.3 x (floor p50 + model p50 at batch 1),
   p99 <= 3 x the floor's p99;
3. 32 clients (closed loop): good answers per second; target >= 0.8 x the floor's, with
   no error for a good request (32 is below the stated capacity);
4. the mixed storm: 64 clients for 60 s, half of them sending hostile requests; every
   good answer must equal the answer the same request got alone, every bad one its 4xx,
   no 5xx; the worker's resident memory is sampled throughout.

The load tool is locust (benchmarks/locustfile.py, headless, exact per-request times).
The floor is benchmarks/floor_service.py: the same routes and request types, no model,
no checks. The model is an untrained `tiny` TubeletClassifier packaged by the real
package step with params.yaml's `package` section (serving cost does not depend on the
weights). Both servers run one worker with OMP_NUM_THREADS=1; phases alternate floor /
thermops so that both see the same machine load, and the 1-minute load average is
recorded with each phase.

    .venv/bin/python benchmarks/serve_throughput.py --out /tmp/serve_bench.json
    .venv/bin/python benchmarks/serve_throughput.py --inprocess-only --device cuda   # GPU model figures
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def load_avg() -> float:
    return round(os.getloadavg()[0], 2)


# --------------------------------------------------------------------------- in-process model


def tiny_model(device: str):
    from thermops.config import load_params, section
    from thermops.model.network import ModelConfig, TubeletClassifier

    cfg = dataclasses.replace(
        section(load_params(ROOT / "params.yaml"), "model", ModelConfig), size="tiny", embed_dim=32
    )
    return TubeletClassifier(cfg, 4).eval().to(device)


def inprocess(model, device: str, batches: tuple[int, ...], seconds: float) -> dict:
    """p50 ms per call and tubelets/s of the model alone, per batch size."""
    out: dict = {}
    for b in batches:
        x = torch.randn(b, 1, 8, 32, 32, device=device)
        times = []
        with torch.inference_mode():
            for _ in range(3):
                model(x)
            t_end = time.perf_counter() + seconds
            while time.perf_counter() < t_end:
                t0 = time.perf_counter()
                model(x)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
        ms = float(np.percentile(times, 50) * 1000)
        out[f"batch{b}"] = {"p50_ms": ms, "tubelets_per_s": b * 1000 / ms, "calls": len(times)}
    return out


# --------------------------------------------------------------------------- locust


def locust(url: str, users: int, seconds: float, classes: list[str], config: dict, workdir: Path) -> dict:
    """One headless locust run; the locustfile's summary (exact latencies) is returned."""
    out = workdir / f"locust-{time.time_ns()}.json"
    env = dict(os.environ, THERMOPS_LOAD=json.dumps({**config, "out": str(out)}), PYTHONPATH=str(ROOT))
    cmd = [
        sys.executable, "-m", "locust", "-f", str(ROOT / "benchmarks" / "locustfile.py"), "--headless",
        "-u", str(users), "-r", str(users), "-t", f"{int(round(seconds))}s", "--host", url, "--only-summary",
        "--loglevel", "WARNING", "--stop-timeout", "10", "--csv", str(workdir / f"csv-{time.time_ns()}"), *classes,
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 120)
    if not out.exists():
        raise RuntimeError(f"locust wrote no summary (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


def worker_cpu(server) -> dict[str, float]:
    """CPU seconds (user + system) of the server's worker: its event-loop thread, its model
    thread (as /stats names them, for thermops) and all its other threads together."""
    import psutil

    try:
        ids = post(server.url, "/stats", json={}).json().get("threads", {})
    except Exception:  # noqa: BLE001  (the floor has no /stats)
        ids = {}
    names = {v: k for k, v in ids.items()}
    out: dict[str, float] = {}
    for proc in psutil.Process(server.proc.pid).children(recursive=True):
        try:
            for t in proc.threads():
                name = names.get(t.id, "other")
                out[name] = out.get(name, 0.0) + t.user_time + t.system_time
        except psutil.NoSuchProcess:
            pass
    return out


def post(url: str, route: str, **kw):
    import requests

    return requests.post(url + route, timeout=60, **kw)


class RssWatch:
    """Samples the resident memory of a server's worker processes every 0.5 s."""

    def __init__(self, server):
        from serving_helpers import worker_rss

        self.server, self.rss = server, worker_rss
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.rss(self.server))
            time.sleep(0.5)

    def __enter__(self) -> RssWatch:
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--repeats", type=int, default=3, help="rounds of the latency and throughput phases")
    ap.add_argument("--seconds", type=float, default=20.0, help="per 32-client phase")
    ap.add_argument("--sequential-seconds", type=float, default=15.0, help="per single-client phase")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--storm-clients", type=int, default=64)
    ap.add_argument("--storm-seconds", type=float, default=60.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--inprocess-only", action="store_true", help="only the model figures (e.g. on a GPU node)")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    result: dict = {
        "command": " ".join(["benchmarks/serve_throughput.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "load_avg_start": load_avg(),
        },
    }
    model = tiny_model(a.device)
    if a.inprocess_only:
        if a.device.startswith("cuda"):
            result["machine"]["gpu"] = torch.cuda.get_device_name(0)
        result["inprocess"] = inprocess(model, a.device, (1, 32, 256, 1024), 3.0)
        _finish(result, a.out)
        return

    from serving_helpers import Server, make_gated_model, package_in_subprocess, write_params
    from serving_payloads import good_payloads

    from thermops.config import load_params, section
    from thermops.io import read_json
    from thermops.serve.requests import PackageParams

    params = section(load_params(ROOT / "params.yaml"), "package", PackageParams)
    result["package_params"] = params.to_dict()
    limits = {
        k: getattr(params, k) for k in ("max_frames", "max_side", "max_elements", "max_json_bytes", "max_upload_bytes")
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = make_gated_model(root)
        home = root / "bentoml"
        proc = package_in_subprocess(paths, home, root / "bento.json", write_params(root / "params.yaml", params))
        if proc.returncode:
            raise SystemExit(proc.stderr)
        tag = read_json(root / "bento.json")["bento_tag"]
        ours = Server(tag, home, root, root / "thermops.log")
        floor = Server("benchmarks.floor_service:ThermopsFloor", home, ROOT, root / "floor.log")
        try:
            ours.wait_ready()
            floor.wait_ready()
            servers = {"floor": floor, "thermops": ours}
            rounds = []
            for rep in range(a.repeats):
                order = ["floor", "thermops"] if rep % 2 == 0 else ["thermops", "floor"]
                rnd: dict = {"model": inprocess(model, "cpu", (1, params.max_batch_size), 3.0), "load": {}}
                for kind, cls in (("json", "JsonClient"), ("npy", "NpyClient")):
                    for name in order:
                        url = servers[name].url
                        before = post(url, "/stats", json={}).json() if name == "thermops" else None
                        seq = locust(url, 1, a.sequential_seconds, [cls], {"warmup_s": 2}, root)["kinds"][kind]
                        rnd["load"][f"single-{kind}-{name}"] = load_avg()
                        cpu0 = worker_cpu(servers[name])
                        conc = locust(url, a.clients, a.seconds, [cls], {"warmup_s": 3}, root)["kinds"][kind]
                        cpu1 = worker_cpu(servers[name])
                        rnd["load"][f"{a.clients}-{kind}-{name}"] = load_avg()
                        conc["server_cpu_ms_per_answer"] = {
                            t: 1000 * (cpu1[t] - cpu0.get(t, 0.0)) / max(conc["statuses"].get("200", 0), 1)
                            for t in cpu1
                            if cpu1[t] - cpu0.get(t, 0.0) > 0.01
                        }
                        rnd[f"{kind}/{name}"] = {"single": seq, f"clients{a.clients}": conc}
                        if before is not None:
                            after = post(url, "/stats", json={}).json()
                            rnd[f"{kind}/{name}"]["batch_sizes"] = {
                                k: v - before["batch_sizes"].get(k, 0)
                                for k, v in after["batch_sizes"].items()
                                if v - before["batch_sizes"].get(k, 0)
                            }
                rnd["model_after"] = inprocess(model, "cpu", (1,), 2.0)
                rounds.append(rnd)
                print(json.dumps(_targets(rnd, a.clients)), flush=True)
            result["rounds"] = rounds
            result["targets"] = [_targets(r, a.clients) for r in rounds]

            # The storm: the solo answers first, then 64 clients, half of them hostile.
            expected = {}
            for p in good_payloads():
                r = post(ours.url, p.route, data=p.body, headers=p.headers)
                assert r.status_code == 200, r.text
                expected[p.name] = r.json()
            exp_file = root / "expected.json"
            exp_file.write_text(json.dumps(expected))
            base = _rss(ours)
            config = {"warmup_s": 0, "expected": str(exp_file), "limits": limits}
            with RssWatch(ours) as watch:
                storm = locust(ours.url, a.storm_clients, a.storm_seconds, ["StormGood", "StormBad"], config, root)
            result["storm"] = {
                **storm,
                "clients": a.storm_clients,
                "seconds": a.storm_seconds,
                "load_avg_end": load_avg(),
                "worker_rss_mib": {
                    "before": base >> 20,
                    "peak": max(watch.samples, default=0) >> 20,
                    "after": _rss(ours) >> 20,
                },
                "server_alive": ours.alive(),
                "tracebacks_in_log": ours.log.read_text(errors="replace").count("Traceback"),
                "stats": post(ours.url, "/stats", json={}).json(),
            }
        finally:
            ours.stop()
            floor.stop()
    result["machine"]["load_avg_end"] = load_avg()
    _finish(result, a.out)


def _rss(server) -> int:
    from serving_helpers import worker_rss

    return worker_rss(server)


def _targets(rnd: dict, clients: int) -> dict:
    """The issue's targets for one round: each figure, its bound and whether it holds."""
    out = {}
    m1 = rnd["model"]["batch1"]["p50_ms"]
    for kind in ("json", "npy"):
        f, t = rnd[f"{kind}/floor"], rnd[f"{kind}/thermops"]
        p50_bound = 1.3 * (f["single"]["p50_ms"] + m1)
        p99_bound = 3 * f["single"]["p99_ms"]
        rps_bound = 0.8 * f[f"clients{clients}"]["good_answers_per_s"]
        errs = t[f"clients{clients}"]["requests"] - t[f"clients{clients}"]["statuses"].get("200", 0)
        out[kind] = {
            "floor_p50_ms": f["single"]["p50_ms"],
            "model_b1_p50_ms": m1,
            "p50_ms": t["single"]["p50_ms"],
            "p50_bound_ms": p50_bound,
            "p50_ok": t["single"]["p50_ms"] <= p50_bound,
            "floor_p99_ms": f["single"]["p99_ms"],
            "p99_ms": t["single"]["p99_ms"],
            "p99_bound_ms": p99_bound,
            "p99_ok": t["single"]["p99_ms"] <= p99_bound,
            "floor_rps": f[f"clients{clients}"]["good_answers_per_s"],
            "rps": t[f"clients{clients}"]["good_answers_per_s"],
            "rps_ratio": t[f"clients{clients}"]["good_answers_per_s"] / f[f"clients{clients}"]["good_answers_per_s"],
            "rps_ok": t[f"clients{clients}"]["good_answers_per_s"] >= rps_bound,
            "errors_for_good": errs,
            "floor_server_cpu_ms": sum(f[f"clients{clients}"].get("server_cpu_ms_per_answer", {}).values()),
            "server_cpu_ms": t[f"clients{clients}"].get("server_cpu_ms_per_answer", {}),
        }
    return out


def _finish(result: dict, out: Path | None) -> None:
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        out.write_text(text + "\n")


if __name__ == "__main__":
    main()
