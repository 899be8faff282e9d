"""Serving benchmark: in-process model throughput vs HTTP throughput, latencies, framework cost.

Measures, on the machine it runs on:
  1. in-process batched throughput of the model (tubelets/s at the service's max batch size);
  2. HTTP throughput of `bentoml serve` with adaptive batching under C concurrent clients
     (.npy uploads to /classify_upload), and the ratio HTTP / in-process;
  3. p50/p95/p99 latency of single sequential requests: JSON (/classify) vs .npy upload
     (/classify_upload), and the no-model endpoint /parse_only (framework + preprocessing cost);
  4. the same concurrent load with batching off (`--arg batching=false`);
and logs the real batch sizes the model saw (/stats), so batching is reported only if it happened.

The model is an untrained `tiny` TubeletClassifier packaged by the real package step
(the cost of serving does not depend on the weights). Results go to stdout as JSON
and to --out.

    .venv/bin/python benchmarks/serve_throughput.py --out /tmp/serve_bench.json
    .venv/bin/python benchmarks/serve_throughput.py --inprocess-only --device cuda   # GPU figures
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import platform
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def percentiles(xs: list[float]) -> dict[str, float]:
    """p50/p95/p99 and mean of latencies (ms)."""
    a = np.asarray(xs) * 1000
    return {
        "p50_ms": float(np.percentile(a, 50)),
        "p95_ms": float(np.percentile(a, 95)),
        "p99_ms": float(np.percentile(a, 99)),
        "mean_ms": float(a.mean()),
        "n": int(a.size),
    }


def inprocess(
    batch: int, seconds: float, device: str, threads: int | None, extra_batches: tuple[int, ...] = ()
) -> dict:
    """Model-only throughput at `batch` and at 1, on already-normalized inputs."""
    from thermops.config import load_params, section
    from thermops.model.network import ModelConfig, TubeletClassifier

    if threads:
        torch.set_num_threads(threads)
    cfg = dataclasses.replace(
        section(load_params(ROOT / "params.yaml"), "model", ModelConfig), size="tiny", embed_dim=32
    )
    model = TubeletClassifier(cfg, 4).eval().to(device)
    out = {"device": device, "torch": torch.__version__, "threads": torch.get_num_threads()}
    for b in sorted({batch, 1, *extra_batches}, reverse=True):
        x = torch.randn(b, 1, 8, 32, 32, device=device)
        with torch.inference_mode():
            for _ in range(3):
                model(x)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                model(x)
                n += 1
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
        out[f"batch{b}_tubelets_per_s"] = n * b / dt
        out[f"batch{b}_ms_per_call"] = 1000 * dt / n
    return out


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def load(url: str, clients: int, requests_per_client: int, payload: bytes) -> dict:
    """C clients each sending R .npy uploads back to back: throughput and latency."""
    import requests

    lat: list[float] = []
    lock = threading.Lock()
    errors: dict[int, int] = {}

    def client(_: int) -> None:
        s = requests.Session()
        for _ in range(requests_per_client):
            t0 = time.perf_counter()
            r = s.post(
                url + "/classify_upload", files={"file": ("t.npy", payload)}, data={"camera_id": "cam-lin"}, timeout=120
            )
            dt = time.perf_counter() - t0
            with lock:
                if r.status_code == 200:
                    lat.append(dt)
                else:
                    errors[r.status_code] = errors.get(r.status_code, 0) + 1

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.perf_counter() - t0
    return {
        "clients": clients,
        "requests": clients * requests_per_client,
        "ok": len(lat),
        "errors": errors,
        "wall_s": wall,
        "tubelets_per_s": len(lat) / wall,
        **percentiles(lat),
    }


def sequential(url: str, route: str, n: int, **kw) -> dict:
    """One client, `n` requests one after another (after 3 warm-ups)."""
    import requests

    s = requests.Session()
    lat = []
    for i in range(n + 3):
        t0 = time.perf_counter()
        r = s.post(url + route, timeout=60, **kw)
        dt = time.perf_counter() - t0
        assert r.status_code == 200, r.text
        if i >= 3:
            lat.append(dt)
    return percentiles(lat)


def stats(url: str) -> dict[str, int]:
    """Model calls by batch size so far, plus `retries` (in-process proxy retries)."""
    import requests

    s = requests.post(url + "/stats", json={}, timeout=30).json()
    return {**s["batch_sizes"], "retries": s.get("proxy_retries", 0)}


def served_figures(server, args, payload: bytes, json_body: dict) -> dict:
    before = stats(server.url)
    res = {"load": load(server.url, args.clients, args.requests, payload)}
    after = stats(server.url)
    res["proxy_retries"] = after.pop("retries") - before.pop("retries")
    res["batch_sizes_seen"] = {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}
    return res


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=12, help="per client")
    ap.add_argument("--sequential", type=int, default=60)
    ap.add_argument("--seconds", type=float, default=3.0, help="per in-process measurement")
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads in-process; 1 matches the served worker (OMP_NUM_THREADS=1)",
    )
    ap.add_argument("--inprocess-only", action="store_true")
    ap.add_argument("--extra-batches", type=int, nargs="*", default=[], help="more in-process batch sizes")
    a = ap.parse_args(argv)

    import yaml

    if a.inprocess_only:  # a bare GPU node may lack pydantic: read the one knob needed
        max_batch = int(yaml.safe_load((ROOT / "params.yaml").read_text())["package"]["max_batch_size"])
    else:
        from thermops.config import load_params, section
        from thermops.serve.requests import PackageParams

        params = section(load_params(ROOT / "params.yaml"), "package", PackageParams)
        max_batch = params.max_batch_size
    result: dict = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": __import__("os").cpu_count(),
            "python": platform.python_version(),
        },
        "command": " ".join(["benchmarks/serve_throughput.py", *(argv if argv is not None else sys.argv[1:])]),
        "max_batch_size": max_batch,
    }
    if a.device.startswith("cuda"):
        result["machine"]["gpu"] = torch.cuda.get_device_name(0)
    result["inprocess"] = inprocess(max_batch, a.seconds, a.device, a.threads, tuple(a.extra_batches))
    if not a.inprocess_only:
        from tests.serving_helpers import (
            Server,
            counts_tubelet,
            make_gated_model,
            package_in_subprocess,
            write_params,
        )
        from thermops.io import read_json

        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            paths = make_gated_model(root)
            home = root / "bentoml"
            out = root / "bento.json"
            t0 = time.perf_counter()
            proc = package_in_subprocess(paths, home, out, write_params(root / "params.yaml", params))
            if proc.returncode:
                raise SystemExit(proc.stderr)
            result["package_s"] = time.perf_counter() - t0
            tags = read_json(out)
            arr = counts_tubelet(8, 32, 32)
            payload = _npy(arr)
            body = {"tubelet": arr.tolist(), "camera_id": "cam-lin"}

            # Batching on: the bento as built.
            server = Server(tags["bento_tag"], home, root, root / "serve-on.log")
            try:
                server.wait_ready()
                on = served_figures(server, a, payload, body)
                on["single_npy"] = sequential(
                    server.url,
                    "/classify_upload",
                    a.sequential,
                    files={"file": ("t.npy", payload)},
                    data={"camera_id": "cam-lin"},
                )
                on["single_json"] = sequential(server.url, "/classify", a.sequential, json=body)
                on["no_model_json"] = sequential(server.url, "/parse_only", a.sequential, json=body)
                result["batching_on"] = on
            finally:
                server.stop()

            # Batching off: the same service and model, from the source tree, with batching=false.
            bento_args = __import__("yaml").safe_load(
                (home / "bentos" / tags["bento_tag"].replace(":", "/") / "bento.yaml").read_text()
            )["args"]
            extra = [x for k, v in {**bento_args, "batching": False}.items() for x in ("--arg", f"{k}={v}")]
            server = Server("service:ThermopsClassifier", home, ROOT, root / "serve-off.log", extra=extra)
            try:
                server.wait_ready()
                off = served_figures(server, a, payload, body)
                off["single_npy"] = sequential(
                    server.url,
                    "/classify_upload",
                    a.sequential,
                    files={"file": ("t.npy", payload)},
                    data={"camera_id": "cam-lin"},
                )
                result["batching_off"] = off
            finally:
                server.stop()
        ip = result["inprocess"][f"batch{max_batch}_tubelets_per_s"]
        result["ratio_http_batched_over_inprocess"] = result["batching_on"]["load"]["tubelets_per_s"] / ip
        result["ratio_http_unbatched_over_inprocess"] = result["batching_off"]["load"]["tubelets_per_s"] / ip
    text = json.dumps(result, indent=2)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
