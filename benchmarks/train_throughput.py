"""Training throughput: tubelets/s and achieved FLOP/s as a fraction of this machine's matmul FLOP/s.

FLOPs of one training step (forward + backward) are counted with
`torch.utils.flop_counter.FlopCounterMode`; the reference is a large matmul timed
in the same run, in the dtype the training uses (float32 on CPU, bf16 on CUDA).
On CUDA the step runs with bf16 autocast and channels-last-3d, as the engine does.
Needs only torch (and thermops), so it runs on a bare GPU node:

    python benchmarks/train_throughput.py --sizes tiny --batch 64 --steps 5          # CPU
    python benchmarks/train_throughput.py --sizes small base --batch 256 --steps 30  # GPU

Results are written down in benchmarks/RESULTS.md (## Training throughput).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from thermops.config import load_params, section, section_from_mapping  # noqa: E402
from thermops.learn.engine import OptimConfig, amp_context, make_optimizer, to_device  # noqa: E402
from thermops.learn.ssl import SimCLR, SSLConfig, simclr_loss  # noqa: E402
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


def bench(size: str, mode: str, batch: int, steps: int, device: torch.device, frames: int, px: int) -> dict:
    """Time `steps` training steps of `mode` (finetune: cross-entropy; pretrain: SimCLR, two views)."""
    torch.manual_seed(0)
    params = load_params(ROOT / "params.yaml")
    cfg = dataclasses.replace(section(params, "model", ModelConfig), size=size)
    if mode == "pretrain":
        ssl = section_from_mapping(SSLConfig, params["pretrain"]["ssl"], "pretrain.ssl")
        model: torch.nn.Module = SimCLR(TubeletEncoder(cfg), ssl)
        loss_fn = simclr_loss(ssl)
    else:
        model = TubeletClassifier(cfg, 4)
        loss_fn = lambda m, b, g: torch.nn.functional.cross_entropy(m(b[0]), b[1])  # noqa: E731
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last_3d)
    optim = section_from_mapping(OptimConfig, params[mode]["optim"], f"{mode}.optim")
    opt = make_optimizer(model, dataclasses.replace(optim, epochs=1, batch_size=batch, lr=1e-3))
    x = to_device(torch.randn(batch, 1, frames, px, px), device)
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
        "batch": batch,
        "steps": steps,
        "params": sum(p.numel() for p in model.parameters()),
        "gflop_per_tubelet": flops_step / batch / 1e9,
        "tubelets_per_s": batch * steps / dt,
        "achieved_tflops": flops_step * steps / dt / 1e12,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["tiny"])
    ap.add_argument("--modes", nargs="+", default=["finetune", "pretrain"])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
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
    peak = matmul_flops(device, n, 20 if device.type == "cuda" else 5)
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.processor() or 'cpu'} x{torch.get_num_threads()} threads"
    )
    rows = [bench(s, m, args.batch, args.steps, device, args.frames, args.px) for s in args.sizes for m in args.modes]
    peak_after = matmul_flops(device, n, 20 if device.type == "cuda" else 5)  # bracket the run: shared machines drift
    ref = max(peak, peak_after)
    for r in rows:
        r["matmul_tflops"] = ref / 1e12
        r["ratio"] = r["achieved_tflops"] * 1e12 / ref
    result = {
        "device": name,
        "torch": torch.__version__,
        "dtype": "bf16 autocast + channels_last_3d" if device.type == "cuda" else "float32",
        "matmul_n": n,
        "matmul_tflops_before_after": [peak / 1e12, peak_after / 1e12],
        "rows": rows,
    }
    print(
        f"device: {name}; torch {torch.__version__}; matmul {n}^3: {peak / 1e12:.3f} / {peak_after / 1e12:.3f} TFLOP/s (before/after)"
    )
    print("| size | step | batch | GFLOP/tubelet | tubelets/s | achieved TFLOP/s | / matmul |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['size']} | {r['mode']} | {r['batch']} | {r['gflop_per_tubelet']:.3f} | {r['tubelets_per_s']:.0f} | "
            f"{r['achieved_tflops']:.4f} | {r['ratio']:.3f} |"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
