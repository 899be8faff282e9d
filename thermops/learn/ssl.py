"""Self-supervised pretraining of the tubelet encoder: SimCLR with thermal and temporal views.

Reference: Chen et al., "A Simple Framework for Contrastive Learning of Visual
Representations" (ICML 2020), NT-Xent loss; for video, Qian et al., "Spatiotemporal
Contrastive Video Representation Learning" (CVPR 2021).

Why contrastive rather than masked reconstruction here: a tubelet is 8 x 32 x 32 of
mostly background; reconstructing it rewards modelling sensor noise and background
texture, while the classes differ in the shape and motion of a small warm object.
The views (`thermops.learn.augment`) change exactly what must not change a class (playback
speed, direction, crop, gain, offset, NETD, column stripes), so the embedding keeps
shape and motion. It trains in seconds on CPU with a tiny encoder and small batches
(4 classes need few negatives), and scales on GPUs with the batch: under DDP the
embeddings of all ranks are gathered so every sample meets the global batch's negatives.

Shapes: input (N, 1, T, H, W); encoder embedding (N, D); projection (N, P).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from thermops.learn.augment import AugmentConfig, augment
from thermops.learn.engine import predict
from thermops.model.network import TubeletEncoder


@dataclass(frozen=True)
class SimCLRConfig:
    """SimCLR knobs (params `pretrain.simclr`)."""

    proj_dim: int
    proj_hidden: int
    temperature: float


class SimCLR(nn.Module):
    """Encoder plus an MLP projection head; forward gives L2-normalized projections (N, P)."""

    def __init__(self, encoder: TubeletEncoder, cfg: SimCLRConfig):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Sequential(
            nn.Linear(encoder.embed_dim, cfg.proj_hidden),
            nn.BatchNorm1d(cfg.proj_hidden),
            nn.ReLU(inplace=True),
            nn.Linear(cfg.proj_hidden, cfg.proj_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.encoder(x)), dim=1)


def _gather(z: torch.Tensor) -> torch.Tensor:
    """All ranks' rows of z (with gradients flowing back to this rank's rows)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return z
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(z))


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent over normalized projections z1, z2 (N, P): view i's positive is the other view of i."""
    z1, z2 = _gather(z1), _gather(z2)
    n = z1.shape[0]
    z = torch.cat([z1, z2]).float()
    sim = z @ z.t() / temperature
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


def simclr_loss(cfg: SimCLRConfig, augment_cfg: AugmentConfig):
    """The engine's loss function: two augmented views through one forward, NT-Xent."""

    def loss_fn(model: nn.Module, batch: tuple[torch.Tensor, ...], gen: torch.Generator) -> torch.Tensor:
        x, px = batch[0], (batch[1] if len(batch) > 1 else None)  # (x, [px]): `load_unlabeled`
        v = torch.cat([augment(x, augment_cfg, gen, px), augment(x, augment_cfg, gen, px)])
        z = model(v)
        z1, z2 = z.chunk(2)
        return nt_xent(z1, z2, cfg.temperature)

    return loss_fn


@torch.no_grad()
def embeddings(
    encoder: nn.Module, x: torch.Tensor, device: torch.device, batch_size: int | None = None
) -> torch.Tensor:
    """Frozen-encoder embeddings (N, D) in eval mode (`batch_size` None: `predict`'s per device)."""
    return predict(encoder, x, device, batch_size)


def fit_linear(
    feats: torch.Tensor, labels: torch.Tensor, num_classes: int, weight_decay: float = 1e-3, iters: int = 100
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression on features (N, D) by L-BFGS: weight (K, D) and bias (K,), in the raw
    feature space (the standardization is folded in), so it can initialize a `nn.Linear` head."""
    f = feats.double()
    mu, sd = f.mean(0), f.std(0)
    # near-constant features (dead units) would get huge raw-space weights once the scaling is folded in;
    # train-mode BatchNorm then moves them and the folded head explodes: floor their scale
    sd = sd.clamp_min(max(1e-6, 0.1 * float(sd.median())))
    z = (f - mu) / sd
    w = torch.zeros(z.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=iters, line_search_fn="strong_wolfe")
    y = labels.long()

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z @ w + b, y) + weight_decay * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w_raw = (w / sd[:, None]).detach()
    b_raw = (b - (mu / sd) @ w).detach()
    return w_raw.t().float(), b_raw.float()


def linear_probe(
    encoder: nn.Module,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: int,
    device: torch.device,
    weight_decay: float = 1e-3,
    iters: int = 100,
) -> float:
    """Test accuracy of a logistic regression on frozen embeddings of `encoder`."""
    encoder.to(device)
    w, b = fit_linear(embeddings(encoder, train_x, device), train_y, num_classes, weight_decay, iters)
    fte = embeddings(encoder, test_x, device)
    return float(((fte @ w.t() + b).argmax(1) == test_y).double().mean())


def init_head_by_probe(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    device: torch.device,
    weight_decay: float = 1e-3,
    iters: int = 100,
    geo: torch.Tensor | None = None,
) -> None:
    """LP-FT (Kumar et al., ICLR 2022): set a TubeletClassifier's head to the linear probe of its frozen
    encoder before fine-tuning, so the first gradient steps do not wreck pretrained features with a random head.

    The probe is fit on what the head sees (`TubeletClassifier.features`): the image embedding and, for a
    classifier that takes geometry features (`geo`: (N, G) of the rows of `x`), the embedding of those
    beside it, as its geometry layers stand now."""
    model.to(device)
    head_input = _HeadInput(model)
    head_input.training = model.training  # predict puts the classifier back in this mode
    feats = predict(head_input, x, device, geo=geo)
    w, b = fit_linear(feats, y, model.head.out_features, weight_decay, iters)
    with torch.no_grad():
        model.head.weight.copy_(w.to(model.head.weight.device))
        model.head.bias.copy_(b.to(model.head.bias.device))


class _HeadInput(nn.Module):
    """A classifier's `features` as a module's forward, for `predict`."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor, geo: torch.Tensor | None = None) -> torch.Tensor:
        return self.classifier.features(x, geo)


# -- masked tube modelling -------------------------------------------------------------------


@dataclass(frozen=True)
class MTMConfig:
    """Masked tube modelling knobs (params `pretrain.mtm`).

    Attributes:
        mask_ratio: share of the cell columns hidden in every tubelet (VideoMAE: 0.9; tube
            masking: a hidden cell is hidden in every frame, so it cannot be copied from a neighbour frame).
        cell: side of a masked cell in input pixels (4: the `fast` encoder's patch).
        decoder_dim: channels of the light convolutional decoder.
    """

    mask_ratio: float
    cell: int
    decoder_dim: int

    def __post_init__(self):
        if not 0 < self.mask_ratio < 1 or self.cell < 1 or self.decoder_dim < 1:
            raise ValueError(f"pretrain.mtm: need 0 < mask_ratio < 1, cell >= 1, decoder_dim >= 1; got {self}")


class MaskedTubeModel(nn.Module):
    """Encoder plus a light decoder that predicts the pixels of every cell from the encoder's last
    feature map (upsampled to the cell grid): (N, 1, T, H, W) -> (N, cell*cell, T, H/cell, W/cell).

    Reference: Tong et al., "VideoMAE: Masked Autoencoders are Data-Efficient Learners for
    Self-Supervised Video Pre-Training" (NeurIPS 2022): tube masking at a high ratio, the
    loss on the hidden cells only. A convolutional encoder sees the masked cells as zeros
    (the tubelet median after normalization) instead of dropping their tokens.
    """

    def __init__(self, encoder: TubeletEncoder, cfg: MTMConfig):
        super().__init__()
        self.encoder = encoder
        self.cfg = cfg
        c, d, k = encoder.out_channels, cfg.decoder_dim, cfg.cell * cfg.cell
        self.decoder = nn.Sequential(
            nn.Conv3d(c, d, 1, bias=False),
            nn.BatchNorm3d(d),
            nn.ReLU(inplace=True),
            nn.Conv3d(d, d, (1, 3, 3), padding=(0, 1, 1), bias=False),
            nn.BatchNorm3d(d),
            nn.ReLU(inplace=True),
            nn.Conv3d(d, k, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, t, h, w = x.shape
        f = self.encoder.features(x)
        f = F.interpolate(f, size=(t, h // self.cfg.cell, w // self.cfg.cell), mode="trilinear", align_corners=False)
        return self.decoder(f)


def cells(x: torch.Tensor, cell: int) -> torch.Tensor:
    """(N, 1, T, H, W) -> (N, cell*cell, T, H/cell, W/cell): the pixels of every cell as channels."""
    n, _, t, h, w = x.shape
    if h % cell or w % cell:
        raise ValueError(f"input {tuple(x.shape)}: H and W must be multiples of the cell {cell}")
    x = x.reshape(n, t, h // cell, cell, w // cell, cell).permute(0, 3, 5, 1, 2, 4)
    return x.reshape(n, cell * cell, t, h // cell, w // cell)


def tube_mask(n: int, gh: int, gw: int, ratio: float, gen: torch.Generator, device) -> torch.Tensor:
    """(N, gh, gw) bool, exactly round(ratio * gh * gw) cells True per sample (random, from `gen`)."""
    k = max(1, min(gh * gw - 1, int(round(ratio * gh * gw))))
    order = torch.rand(n, gh * gw, generator=gen, device=device).argsort(dim=1)
    mask = torch.zeros(n, gh * gw, dtype=torch.bool, device=device)
    mask.scatter_(1, order[:, :k], True)
    return mask.reshape(n, gh, gw)


def mtm_loss(cfg: MTMConfig, augment_cfg: AugmentConfig | None):
    """The engine's loss function: one augmented view, tube-masked; MSE of the hidden cells' pixels."""

    def loss_fn(model: nn.Module, batch: tuple[torch.Tensor, ...], gen: torch.Generator) -> torch.Tensor:
        x, px = batch[0], (batch[1] if len(batch) > 1 else None)  # (x, [px]): `load_unlabeled`
        if augment_cfg is not None:
            x = augment(x, augment_cfg, gen, px)
        n, _, t, h, w = x.shape
        c = cfg.cell
        mask = tube_mask(n, h // c, w // c, cfg.mask_ratio, gen, x.device)  # (N, gh, gw)
        pix = mask.repeat_interleave(c, 1).repeat_interleave(c, 2)[:, None, None]  # (N, 1, 1, H, W)
        pred = model(x.masked_fill(pix, 0.0))  # (N, c*c, T, gh, gw)
        target = cells(x, c)
        err = ((pred.float() - target.float()) ** 2).mean(dim=(1, 2))  # (N, gh, gw)
        return (err * mask).sum() / mask.sum()

    return loss_fn
