"""The spatio-temporal tubelet encoder and its classifier, with named sizes.

Reference: Tran et al., "A Closer Look at Spatiotemporal Convolutions for Action
Recognition" (CVPR 2018): a (2+1)D block factors a 3D convolution into a spatial
(1 x k x k) and a temporal (k x 1 x 1) one, with a nonlinearity between them.

Shapes: input (N, 1, T, H, W); embedding (N, D); logits (N, num_classes).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ModelConfig:
    """Architecture knobs (from params `model`).

    Attributes:
        size: a named size from SIZES (`widths` and `patch` override it when given).
        widths: channels per stage; each stage halves H and W (and T after the first).
        blocks_per_stage: (2+1)D blocks per stage.
        embed_dim: embedding size D (a linear projection of the pooled features).
        dropout: before the classification head.
        patch: the stem. 1: a 3 x 3 x 3 convolution at full resolution, the first stage
            halves H and W (the original design). p > 1: space-to-depth, every p x p
            pixel cell becomes p*p channels (lossless, no FLOPs), then the 3 x 3 x 3 stem
            convolution runs at H/p x W/p and the first stage keeps that resolution.
            None: the named size's patch.
    """

    size: str
    widths: tuple[int, ...] | None
    blocks_per_stage: int
    embed_dim: int
    dropout: float
    patch: int | None

    def __post_init__(self):
        if self.patch is not None and self.patch < 1:
            raise ValueError(f"model.patch must be >= 1, got {self.patch}")

    def resolved_widths(self) -> tuple[int, ...]:
        if self.widths:
            return tuple(self.widths)
        if self.size not in SIZES:
            raise ValueError(f"model.size {self.size!r} is not one of {sorted(SIZES)}")
        return SIZES[self.size]

    def resolved_patch(self) -> int:
        if self.patch is not None:
            return int(self.patch)
        return PATCH.get(self.size, 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"] = list(self.resolved_widths())
        d["patch"] = self.resolved_patch()
        return d


# Named sizes: widths per stage, and the stem's patch (PATCH; 1 when not listed).
# tiny: the original CPU model (8-16-32 channels at full resolution: 79 MFLOP per 8x32x32
# tubelet forward+backward, but thin layers that reach ~0.1-0.2 of the matmul rate on CPU);
# fast: space-to-depth 4 x 4 then 32-64 channels (wider layers on 8 x 8 cells: more FLOPs,
# fewer memory passes, faster per tubelet on CPU); small and base for GPU nodes.
SIZES: dict[str, tuple[int, ...]] = {
    "tiny": (8, 16, 32),
    "fast": (32, 64),
    "small": (32, 64, 128),
    "base": (64, 128, 256, 384),
}
PATCH: dict[str, int] = {"fast": 4}


class Conv2Plus1D(nn.Sequential):
    """(1 x 3 x 3) spatial conv, norm, ReLU, then (3 x 1 x 1) temporal conv."""

    def __init__(self, c_in: int, c_out: int, stride_t: int = 1, stride_s: int = 1):
        mid = max(c_out, (c_in * c_out * 27) // (c_in * 9 + c_out * 3))  # parameter-matched, as in R(2+1)D
        super().__init__(
            nn.Conv3d(c_in, mid, (1, 3, 3), stride=(1, stride_s, stride_s), padding=(0, 1, 1), bias=False),
            nn.BatchNorm3d(mid),
            nn.ReLU(inplace=True),
            nn.Conv3d(mid, c_out, (3, 1, 1), stride=(stride_t, 1, 1), padding=(1, 0, 0), bias=False),
        )


class Block(nn.Module):
    """Residual (2+1)D block."""

    def __init__(self, c_in: int, c_out: int, stride_t: int, stride_s: int):
        super().__init__()
        self.conv1 = Conv2Plus1D(c_in, c_out, stride_t, stride_s)
        self.bn1 = nn.BatchNorm3d(c_out)
        self.conv2 = Conv2Plus1D(c_out, c_out)
        self.bn2 = nn.BatchNorm3d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.skip = (
            nn.Identity()
            if c_in == c_out and stride_t == 1 and stride_s == 1
            else nn.Sequential(
                nn.Conv3d(c_in, c_out, 1, stride=(stride_t, stride_s, stride_s), bias=False), nn.BatchNorm3d(c_out)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + self.skip(x))


class TubeletEncoder(nn.Module):
    """(N, 1, T, H, W) -> (N, D) embedding; `features` gives the last feature map."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        widths = cfg.resolved_widths()
        self.patch = cfg.resolved_patch()
        c_in = self.patch * self.patch
        self.stem = nn.Sequential(
            nn.Conv3d(c_in, widths[0], (3, 3, 3), padding=1, bias=False),
            nn.BatchNorm3d(widths[0]),
            nn.ReLU(inplace=True),
        )
        layers: list[nn.Module] = []
        c = widths[0]
        for i, w in enumerate(widths):
            for b in range(cfg.blocks_per_stage):
                first = b == 0
                stride_s = 2 if first and (i > 0 or self.patch == 1) else 1
                stride_t = 2 if first and i > 0 else 1
                layers.append(Block(c, w, stride_t, stride_s))
                c = w
        self.stages = nn.Sequential(*layers)
        self.proj = nn.Linear(c, cfg.embed_dim)
        self.out_channels = c
        self.embed_dim = cfg.embed_dim

    def space_to_depth(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, T, H, W) -> (N, p*p, T, H/p, W/p): every p x p pixel cell becomes p*p channels."""
        p = self.patch
        if p == 1:
            return x
        n, c, t, h, w = x.shape
        if c != 1 or h % p or w % p:
            raise ValueError(f"input {tuple(x.shape)}: expected 1 channel and H, W divisible by the patch {p}")
        x = x.reshape(n, t, h // p, p, w // p, p).permute(0, 3, 5, 1, 2, 4)
        return x.reshape(n, p * p, t, h // p, w // p)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, T, H, W) -> (N, C, T', H', W')."""
        return self.stages(self.stem(self.space_to_depth(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.features(x).mean(dim=(2, 3, 4)))


class TubeletClassifier(nn.Module):
    """Encoder plus a linear head: (N, 1, T, H, W) -> (N, num_classes) logits.

    With `geo_dim` > 0 the classifier also takes (N, geo_dim) geometry features of each
    window (`thermops.model.preprocess.geometry_features`: its metric and pixel scale):
    a small MLP embeds them and the head sees [image embedding, geometry embedding].
    The encoder stays image-only (what self-supervised pretraining trains).
    """

    def __init__(self, cfg: ModelConfig, num_classes: int, geo_dim: int = 0):
        super().__init__()
        self.cfg = cfg
        self.geo_dim = geo_dim
        self.encoder = TubeletEncoder(cfg)
        self.dropout = nn.Dropout(cfg.dropout)
        self.geo = (
            nn.Sequential(nn.Linear(geo_dim, GEO_HIDDEN), nn.ReLU(inplace=True), nn.Linear(GEO_HIDDEN, GEO_HIDDEN))
            if geo_dim
            else None
        )
        self.head = nn.Linear(cfg.embed_dim + (GEO_HIDDEN if geo_dim else 0), num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def features(self, x: torch.Tensor, geo: torch.Tensor | None = None) -> torch.Tensor:
        """What the head sees: the image embedding, and the geometry embedding when the model takes one."""
        e = self.encoder(x)
        if self.geo is None:
            return e
        if geo is None or geo.shape != (len(x), self.geo_dim):
            got = None if geo is None else tuple(geo.shape)
            raise ValueError(f"this classifier takes ({len(x)}, {self.geo_dim}) geometry features, got {got}")
        return torch.cat([e, self.geo(geo.to(e.dtype))], dim=1)

    def forward(self, x: torch.Tensor, geo: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.dropout(self.features(x, geo)))


GEO_HIDDEN = 16  # width of the geometry embedding


def build_classifier(cfg: ModelConfig, num_classes: int, geo_dim: int = 0) -> TubeletClassifier:
    return TubeletClassifier(cfg, num_classes, geo_dim)
