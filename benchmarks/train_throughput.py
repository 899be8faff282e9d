"""Training throughput: tubelets/s and achieved FLOP/s as a fraction of this machine's matmul FLOP/s.

FLOPs of one training step (forward + backward + optimizer) are counted with
`torch.utils.flop_counter.FlopCounterMode`; the reference is a large matmul timed
in the same process right before and right after each measurement, in the dtype
the training uses (float32 on CPU, bf16 on CUDA); the ratio uses the larger of the
two. The step runs as the engine runs it: channels-last-3d (on CUDA with bf16
autocast); the pretraining step includes its augmentations (and masking).
Needs only torch (and thermops), so it runs on a bare GPU node:

    python benchmarks/train_throughput.py --sizes tiny fast --repeats 5          # CPU
    python benchmarks/train_throughput.py --sizes small base --batch 256 --steps 30  # GPU

Results are written down in benchmarks/RESULTS.md (## Training throughput).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from components.pretrain import PretrainParams, build  # noqa: E402
from thermops.config import load_params, section, section_from_mapping  # noqa: E402
from thermops.learn.engine import OptimConfig, amp_context, make_optimizer, to_device  # noqa: E402
from thermops.model.network import ModelConfig, TubeletClassifier, TubeletEncoder  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_flops(device: torch.device, n: int, reps: int) -> float:
    """Measured FLOP/s of an n x n matmul (bf16 on CUDA, float32 on CPU)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t)


def bench(
    size: str, mode: str, batch: int, steps: int, device: torch.device, frames: int, px: int, layout: str
) -> dict:
    """Time `steps` training steps of `mode`: finetune (cross-entropy) or pretrain-<method> (simclr: two
    augmented views, NT-Xent; mtm: one augmented, tube-masked view, pixel MSE), as the engine runs them."""
    torch.manual_seed(0)
    params = load_params(ROOT / "params.yaml")
    cfg = dataclasses.replace(section(params, "model", ModelConfig), size=size, widths=None, patch=None)
    if mode.startswith("pretrain"):
        pre = section(params, "pretrain", PretrainParams)
        method = mode.split("-", 1)[1] if "-" in mode else pre.method
        model, loss_fn = build(dataclasses.replace(pre, method=method), TubeletEncoder(cfg))
    else:
        model = TubeletClassifier(cfg, 4)
        loss_fn = lambda m, b, g: torch.nn.functional.cross_entropy(m(b[0]), b[1])  # noqa: E731
    model.to(device)
    if layout == "channels_last":
        model.to(memory_format=torch.channels_last_3d)
    key = "pretrain" if mode.startswith("pretrain") else "finetune"
    optim = section_from_mapping(OptimConfig, params[key]["optim"], f"{key}.optim")
    opt = make_optimizer(model, dataclasses.replace(optim, epochs=1, batch_size=batch, lr=1e-3))
    x = torch.randn(batch, 1, frames, px, px, device=device)
    x = to_device(x, device) if layout == "channels_last" else x
    y = torch.randint(0, 4, (batch,), device=device)
    gen = torch.Generator(device=device).manual_seed(0)

    def step():
        with amp_context(device):
            loss = loss_fn(model, (x, y), gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    with FlopCounterMode(display=False) as fc:
        step()
    flops_step = fc.get_total_flops()
    for _ in range(2):
        step()
    sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    dt = time.perf_counter() - t
    return {
        "size": size,
        "mode": mode,
        "layout": layout,
        "batch": batch,
        "steps": steps,
        "params": sum(p.numel() for p in model.parameters()),
        "gflop_per_tubelet": flops_step / batch / 1e9,
        "tubelets_per_s": batch * steps / dt,
        "achieved_tflops": flops_step * steps / dt / 1e12,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["tiny", "fast"])
    ap.add_argument(
        "--modes",
        nargs="+",
        default=["pretrain", "finetune"],
        help="finetune | pretrain (params method) | pretrain-simclr | pretrain-mtm",
    )
    ap.add_argument("--layouts", nargs="+", default=["channels_last"], choices=["channels_last", "contiguous"])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=1, help="measure every row this often (each bracketed by matmuls)")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--px", type=int, default=32)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--matmul-n", type=int, default=0, help="matmul size (default 8192 on CUDA, 1024 on CPU)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    n = args.matmul_n or (8192 if device.type == "cuda" else 1024)
    reps = 20 if device.type == "cuda" else 5
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.processor() or 'cpu'} x{torch.get_num_threads()} threads"
    )
    load = [os.getloadavg()[0]] if hasattr(os, "getloadavg") else []
    rows = []
    # Every measurement is bracketed by the reference matmul, right before and right after it (shared
    # machines drift): its ratio uses the larger of the two. Repeats interleave the rows.
    for rep in range(args.repeats):
        for s in args.sizes:
            for m in args.modes:
                for layout in args.layouts:
                    before = matmul_flops(device, n, reps)
                    r = bench(s, m, args.batch, args.steps, device, args.frames, args.px, layout)
                    after = matmul_flops(device, n, reps)
                    r.update(
                        repeat=rep,
                        matmul_tflops=[before / 1e12, after / 1e12],
                        ratio=r["achieved_tflops"] * 1e12 / max(before, after),
                    )
                    rows.append(r)
    if load:
        load.append(os.getloadavg()[0])
    summary = []
    for s in args.sizes:
        for m in args.modes:
            for layout in args.layouts:
                rs = [r for r in rows if (r["size"], r["mode"], r["layout"]) == (s, m, layout)]
                ratios = sorted(r["ratio"] for r in rs)
                tps = sorted(r["tubelets_per_s"] for r in rs)
                summary.append(
                    {
                        "size": s,
                        "mode": m,
                        "layout": layout,
                        "gflop_per_tubelet": rs[0]["gflop_per_tubelet"],
                        "ratio_min": ratios[0],
                        "ratio_median": ratios[len(ratios) // 2],
                        "ratio_max": ratios[-1],
                        "tubelets_per_s_min": tps[0],
                        "tubelets_per_s_max": tps[-1],
                        "n": len(rs),
                    }
                )
    result = {
        "device": name,
        "torch": torch.__version__,
        "dtype": "bf16 autocast" if device.type == "cuda" else "float32",
        "matmul_n": n,
        "load_average_1min_before_after": load,
        "rows": rows,
        "summary": summary,
    }
    mm = [x for r in rows for x in r["matmul_tflops"]]
    print(
        f"device: {name}; torch {torch.__version__}; matmul {n}^3 fp: {min(mm):.3f}-{max(mm):.3f} TFLOP/s; "
        f"load average {load}; {args.repeats} repeat(s), batch {args.batch}, {args.steps} steps"
    )
    print("| size | step | layout | GFLOP/tubelet | tubelets/s (min-max) | / matmul: median (min-max) |")
    print("|---|---|---|---|---|---|")
    for r in summary:
        print(
            f"| {r['size']} | {r['mode']} | {r['layout']} | {r['gflop_per_tubelet']:.3f} | "
            f"{r['tubelets_per_s_min']:.0f}-{r['tubelets_per_s_max']:.0f} | "
            f"{r['ratio_median']:.3f} ({r['ratio_min']:.3f}-{r['ratio_max']:.3f}) |"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
