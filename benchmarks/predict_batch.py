"""Evaluation speed of `thermops.learn.engine.predict` by batch size, side by side in one process.

Every evaluation in training (val selection per epoch, the test split, the ten few-label runs,
the linear probes' embeddings) and the `evaluate` step go through `predict`. This times it on
N inputs of the default model (`model` and `input` params, random weights and inputs: the
speed does not depend on their values) at each batch size, interleaved round by round so that
the shared machine's load falls on every size alike, and reports the median seconds and the
ratio to the first size.

    OMP_NUM_THREADS=2 python benchmarks/predict_batch.py --params params.yaml --n 3098 --sizes 256 64 --rounds 5

Results are written down in benchmarks/RESULTS.md (## Evaluation batch size).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from thermops.config import load_params, section  # noqa: E402
from thermops.learn.engine import predict  # noqa: E402
from thermops.model.network import ModelConfig, TubeletClassifier  # noqa: E402
from thermops.model.preprocess import InputSpec  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--n", type=int, default=3098, help="inputs per evaluation (the default test split: 3,098)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 64])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    params = load_params(args.params)
    spec = section(params, "input", InputSpec)
    torch.manual_seed(0)
    model = TubeletClassifier(section(params, "model", ModelConfig), len(params["classes"]))
    device = torch.device(args.device)
    model.to(device)
    x = torch.randn(args.n, 1, spec.frames, spec.size, spec.size)
    predict(model, x[:128], device, 64)  # warm-up: first-call allocations and kernel choice
    times: dict[int, list[float]] = {b: [] for b in args.sizes}
    outs = {}
    for _ in range(args.rounds):
        for b in args.sizes:
            t = time.perf_counter()
            outs[b] = predict(model, x, device, b)
            times[b].append(time.perf_counter() - t)
    ref = args.sizes[0]
    print(
        f"device {device} x{torch.get_num_threads()} threads, torch {torch.__version__}, n {args.n}, "
        f"{args.rounds} rounds, load average {os.getloadavg()[0]:.2f}"
    )
    print("| batch | seconds per evaluation, median (min-max) | ratio to batch " + f"{ref} | max abs logit diff |")
    print("|---|---|---|---|")
    for b in args.sizes:
        med = statistics.median(times[b])
        diff = float((outs[b] - outs[ref]).abs().max())
        print(
            f"| {b} | {med:.2f} ({min(times[b]):.2f}-{max(times[b]):.2f}) | "
            f"{med / statistics.median(times[ref]):.2f} | {diff:.1e} |"
        )


if __name__ == "__main__":
    main()
