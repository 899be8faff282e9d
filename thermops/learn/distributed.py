"""Distributed training helpers: the torchrun process group, ranks and DDP wrappers.

Launched by `torchrun`, `setup_distributed` joins the process group (NCCL on GPUs,
gloo on CPU); outside a process group every helper is a no-op for one process.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn


def dist_info() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def setup_distributed(device: str = "auto") -> torch.device:
    """Join the torchrun process group when WORLD_SIZE > 1 and return this rank's device."""
    want_cuda = device in ("auto", "cuda") and torch.cuda.is_available()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if want_cuda else "gloo")
    if want_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or the module itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def is_main() -> bool:
    return dist_info()[0] == 0


def barrier() -> None:
    if dist_info()[1] > 1:
        dist.barrier()


def sync_buffers(model: nn.Module) -> None:
    """Broadcast buffers (BatchNorm running stats) from rank 0 so every rank holds the same state."""
    for b in unwrap(model).buffers():
        dist.broadcast(b, src=0)
