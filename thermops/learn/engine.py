"""One training engine for pretraining and fine-tuning (after torchvision's references).

`fit` runs `train_one_epoch` for each epoch with a warmup + cosine schedule, writes
a checkpoint dict (model, optimizer, scheduler, epoch, config, fingerprint, history,
best state) after every epoch, resumes from it, selects the best epoch on a
validation score, and raises on a non-finite loss.

Determinism and resume: every random draw of an epoch (data order, augmentation,
dropout) comes from seeds derived from (seed, epoch, rank), never from a generator
carried over from earlier epochs. So a run resumed after epoch k replays epochs
k+1.. exactly as the uninterrupted run does, and ends with the same weights.

Distributed: launched by `torchrun`, `setup_distributed` joins the process group
(NCCL on GPUs, gloo on CPU); the model is wrapped in DDP; each rank takes an
interleaved share of one global permutation (as `DistributedSampler` does), with
the global batch size split across ranks, so the optimizer sees the same global
batch as a single process. BatchNorm running statistics are broadcast from rank 0
at the end of every epoch so that all ranks hold identical weights and buffers.

Memory format: channels-last-3d on CPU and CUDA (oneDNN's and cuDNN's fast layout for
3D convolutions: 1.4-2.9x faster training steps on 2 CPU cores, benchmarks/RESULTS.md);
on CUDA also bf16 autocast.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from thermops.learn.adversarial import adversarial_loss
from thermops.learn.augment import augment, augment_with_geometry
from thermops.learn.datasets import TubeletDataset, unpack
from thermops.learn.distributed import barrier, dist_info, is_main, sync_buffers, unwrap

LossFn = Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Generator], torch.Tensor]
CKPT_NAME = "last.pt"


@dataclass(frozen=True)
class OptimConfig:
    """Optimization knobs of one training run.

    Attributes:
        epochs: passes over the training set.
        batch_size: global batch size (split across DDP ranks).
        lr: peak learning rate of AdamW (reached after warmup, then cosine to 0).
        weight_decay: AdamW decoupled weight decay.
        warmup_epochs: linear warmup length.
        grad_clip: max global gradient norm; 0 switches clipping off.
        encoder_lr_scale: learning-rate factor of parameters under `encoder.` (discriminative
            fine-tuning: a pretrained encoder moves slower than its new head).
        bn_eval: keep BatchNorm layers in eval mode (running statistics frozen), for
            fine-tuning with batches too small for reliable batch statistics.
    """

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_epochs: int
    grad_clip: float
    encoder_lr_scale: float
    bn_eval: bool

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 2 or self.lr <= 0:
            raise ValueError(f"need epochs >= 1, batch_size >= 2, lr > 0; got {self}")


@dataclass
class FitResult:
    """What `fit` returns: per-epoch history and the selected epoch."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float | None = None
    resumed_from: int = 0


def _progress(iterable, total: int, desc: str):
    """tqdm bar on rank 0 when stderr is a terminal; a plain iterator otherwise."""
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional on a bare GPU node
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=False, disable=not (sys.stderr.isatty() and is_main()))


# -- one epoch ------------------------------------------------------------------------------


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> list[torch.Tensor]:
    """This rank's batches (index tensors) of one epoch.

    One global permutation from (seed, epoch); the tail that does not fill a global
    batch of >= 2 per rank is dropped (BatchNorm needs 2 samples); each global batch
    is split across ranks by interleaving, so the union over ranks of batch i is
    exactly the single-process batch i.
    """
    g = torch.Generator().manual_seed(seed * 1009 + epoch)
    perm = torch.randperm(n, generator=g)
    per_rank = max(2, batch_size // world)
    step = per_rank * world
    out = []
    for s in range(0, n, step):
        chunk = perm[s : s + step]
        mine = chunk[rank::world]
        if len(chunk) < 2 * world:
            break
        if len(chunk) < step:  # last partial batch: keep it only if every rank gets >= 2
            chunk = chunk[: (len(chunk) // world) * world]
            mine = chunk[rank::world]
        out.append(mine)
    return out


def amp_context(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA, a no-op on CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move a batch; (N, C, T, H, W) inputs go channels-last-3d."""
    x = x.to(device, non_blocking=True)
    if x.ndim == 5:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    return x


def train_one_epoch(
    model: nn.Module,
    loss_fn: LossFn,
    data: TubeletDataset,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    *,
    epoch: int,
    seed: int,
    batch_size: int,
    device: torch.device,
    grad_clip: float = 0.0,
    desc: str = "train",
    bn_eval: bool = False,
) -> float:
    """One pass; returns the mean loss over all ranks. Raises FloatingPointError on a non-finite loss."""
    rank, world = dist_info()
    model.train()
    if bn_eval:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    torch.manual_seed(seed * 7919 + epoch * 101 + rank)  # dropout and anything else on the global RNG
    gen = torch.Generator(device=device).manual_seed(seed * 6007 + epoch * 37 + rank)  # augmentations
    batches = epoch_batches(len(data), batch_size, seed, epoch, rank, world)
    total = torch.zeros(2, dtype=torch.float64)
    for i, idx in enumerate(_progress(batches, len(batches), f"{desc} {epoch + 1}")):
        batch = tuple(to_device(t, device) for t in data[idx])
        with amp_context(device):
            loss = loss_fn(model, batch, gen)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{desc}: non-finite loss {loss.item()} at epoch {epoch + 1}, step {i + 1}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total += torch.tensor([loss.item() * len(idx), len(idx)], dtype=torch.float64)
    if world > 1:
        dist.all_reduce(total)
        sync_buffers(model)
    return float(total[0] / max(total[1], 1))


@torch.no_grad()
def predict(
    model: nn.Module,
    x: torch.Tensor,
    device: torch.device,
    batch_size: int | None = None,
    geo: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits (or embeddings) of (N, 1, T, H, W) inputs, in eval mode, on CPU as float32.

    `geo` (N, G): geometry features for a classifier that takes them (`TubeletClassifier.geo_dim`).
    `batch_size` None: 64 on CPU (a batch's activations stay in cache: 2.4x faster than 256 on 2
    cores, benchmarks/RESULTS.md), 512 on a GPU.
    """
    batch_size = batch_size or (512 if device.type == "cuda" else 64)
    m = unwrap(model)
    was = m.training
    m.eval()
    out = []
    for s in range(0, len(x), batch_size):
        args = (to_device(x[s : s + batch_size], device),)
        if geo is not None:
            args += (geo[s : s + batch_size].to(device),)
        with amp_context(device):
            out.append(m(*args).float().cpu())
    m.train(was)
    return torch.cat(out) if out else torch.zeros((0,))


def evaluate(model: nn.Module, data: TubeletDataset, classes: list[str], device: torch.device) -> tuple[dict, Any]:
    """Metrics dict and ConfusionMatrix of a classifier on a labelled dataset."""
    from thermops.learn.metrics import classification_metrics

    preds = predict(model, data.inputs, device, geo=data.geo).argmax(1)
    return classification_metrics(preds, data.labels, classes)


# -- schedules and checkpoints --------------------------------------------------------------


def make_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases and norm parameters (1-D tensors); encoder lr x `encoder_lr_scale`."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((p.ndim > 1, name.startswith("encoder.")), []).append(p)
    return torch.optim.AdamW(
        [
            {
                "params": ps,
                "weight_decay": cfg.weight_decay if decay else 0.0,
                "lr": cfg.lr * (cfg.encoder_lr_scale if enc else 1.0),
            }
            for (decay, enc), ps in sorted(groups.items())
        ],
        lr=cfg.lr,
    )


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, steps_per_epoch: int):
    """Per-step linear warmup then cosine decay to zero."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = cfg.warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def run_fingerprint(*parts: object) -> str:
    """A short hash of JSON-able parts: the identity a checkpoint must match to be resumed."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save to a temporary file, then rename: a kill mid-write leaves the previous checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(state, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path) -> dict | None:
    """The checkpoint dict, or None if there is none (loaded with weights_only=True)."""
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def _clone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in unwrap(model).state_dict().items()}


def fit(
    model: nn.Module,
    loss_fn: LossFn,
    train: TubeletDataset,
    cfg: OptimConfig,
    *,
    seed: int,
    device: torch.device,
    ckpt_dir: str | Path | None = None,
    resume: bool = True,
    fingerprint: str = "",
    select: Callable[[nn.Module], float] | None = None,
    stop_after: int | None = None,
    desc: str = "train",
    log: Callable[[str], None] | None = None,
) -> FitResult:
    """Train `model` for cfg.epochs with checkpoints, resume and best-epoch selection.

    Args:
        model: the module to train (moved to `device`; wrapped in DDP under torchrun).
        loss_fn: (model, batch on device, augmentation generator) -> scalar loss.
        train: the training dataset (inputs (N, 1, T, H, W), labels optional).
        cfg: optimization knobs; part of the checkpoint's identity.
        seed: the run's seed; each epoch's randomness derives from (seed, epoch, rank).
        ckpt_dir: where `last.pt` is written after every epoch (None: no checkpoints).
        resume: continue from `last.pt` when its config and `fingerprint` match.
        fingerprint: identity of everything else the run depends on (data, init weights).
        select: model -> validation score (higher is better), evaluated after every
            epoch; the best epoch's weights are restored at the end. None: keep the last.
        stop_after: stop after this many completed epochs (simulates an interruption).
    Returns:
        FitResult with the per-epoch history, the selected epoch and the epoch resumed from.
    """
    log = log or (lambda s: None)
    rank, world = dist_info()
    model.to(device)
    model.to(memory_format=torch.channels_last_3d)
    steps = len(epoch_batches(len(train), cfg.batch_size, seed, 0, rank, world))
    if steps == 0:
        raise ValueError(f"{desc}: {len(train)} samples do not fill one batch of {cfg.batch_size} over {world} rank(s)")
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, steps)
    result = FitResult()
    best_state: dict[str, torch.Tensor] | None = None
    ckpt_path = Path(ckpt_dir) / CKPT_NAME if ckpt_dir else None
    start = 0
    if ckpt_path is not None and resume:
        ckpt = load_checkpoint(ckpt_path)
        if ckpt is not None and ckpt.get("config") == asdict(cfg) and ckpt.get("fingerprint") == fingerprint:
            unwrap(model).load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            start = int(ckpt["epoch"])
            result.history = list(ckpt["history"])
            result.best_epoch, result.best_score = int(ckpt["best_epoch"]), ckpt["best_score"]
            best_state = ckpt.get("best_state")
            result.resumed_from = start
            log(f"{desc}: resumed from {ckpt_path} after epoch {start}")
        elif ckpt is not None:
            log(f"{desc}: {ckpt_path} belongs to another config or data; starting fresh")
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    for epoch in range(start, cfg.epochs):
        if stop_after is not None and epoch >= stop_after:
            break
        loss = train_one_epoch(
            net,
            loss_fn,
            train,
            optimizer,
            scheduler,
            epoch=epoch,
            seed=seed,
            batch_size=cfg.batch_size,
            device=device,
            grad_clip=cfg.grad_clip,
            desc=desc,
            bn_eval=cfg.bn_eval,
        )
        row = {"epoch": epoch + 1, "loss": loss, "lr": optimizer.param_groups[0]["lr"]}
        if select is not None:
            score = float(select(model))
            row["score"] = score
            if result.best_score is None or score > result.best_score:
                result.best_score, result.best_epoch, best_state = score, epoch + 1, _clone_state(model)
        else:
            result.best_epoch = epoch + 1
        result.history.append(row)
        log(
            f"{desc}: epoch {epoch + 1}/{cfg.epochs} loss {loss:.4f}"
            + (f" score {row['score']:.4f}" if "score" in row else "")
        )
        if ckpt_path is not None and rank == 0:
            save_checkpoint(
                ckpt_path,
                {
                    "model": _clone_state(model),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "epoch": epoch + 1,
                    "config": asdict(cfg),
                    "fingerprint": fingerprint,
                    "history": result.history,
                    "best_epoch": result.best_epoch,
                    "best_score": result.best_score,
                    "best_state": best_state,
                },
            )
        barrier()
    if select is not None and best_state is not None and (stop_after is None or stop_after >= cfg.epochs):
        unwrap(model).load_state_dict(best_state)
    return result


def classification_loss(
    augment_cfg=None, label_smoothing: float = 0.0, adversarial=None, geometry: tuple[str, ...] = ()
) -> LossFn:
    """Cross-entropy on (optionally augmented) batches; PGD adversarial training when `adversarial.enabled`.

    Batches are `(x, [geo], [px], y)` (`thermops.learn.datasets.unpack`): `geo` for a classifier with
    the geometry features `geometry` (the range augmentation moves their `pixel_scale` with the
    view), `px` the camera pixels across each window (the range augmentation blurs a view to the
    pixels it would have k times farther)."""
    prepare = (lambda x, g, px=None: augment(x, augment_cfg, g, px)) if augment_cfg is not None else None
    if adversarial is not None and adversarial.enabled:
        return adversarial_loss(adversarial, prepare, label_smoothing)

    def loss_fn(model: nn.Module, batch: tuple[torch.Tensor, ...], gen: torch.Generator) -> torch.Tensor:
        x, geo, px, y = unpack(batch)
        if geo is not None:
            if augment_cfg is not None:
                x, geo = augment_with_geometry(x, geo, augment_cfg, gen, geometry, px)
            return F.cross_entropy(model(x, geo), y, label_smoothing=label_smoothing)
        if prepare is not None:
            x = prepare(x, gen, px)
        return F.cross_entropy(model(x), y, label_smoothing=label_smoothing)

    return loss_fn
