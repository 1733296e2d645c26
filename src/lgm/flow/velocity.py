"""Velocity networks ``v(x, t, label)`` of continuous flows: an MLP for vectors, a small U-Net for images.

Both take points ``x [B, *shape]``, times ``t [B]`` in ``[0, 1]``, optional class indices ``[B]`` and,
built with ``interval=True`` (the average velocity of a flow map, `lgm.flow.MeanFlow`), the length of
the time interval ``[B]``, and return velocities shaped like ``x``. Time (interval, class) enter through
sinusoidal embeddings and small MLPs; the last layers are zero-initialised, so an untrained field is
``v = 0`` (the identity map), and an interval network starts as the same network without the interval.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def time_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal features ``[B, dim]`` of times ``t [B]`` (frequencies 1 to 1,000, as in transformers)."""
    half = dim // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / max(half - 1, 1))
    angles = t.float()[:, None] * freqs[None] * 2 * math.pi
    return torch.cat((angles.sin(), angles.cos()), dim=1)


def _zero(layer: nn.Module) -> nn.Module:
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class Conditioning(nn.Module):
    """Embedding ``[B, dim]`` of the time, (if ``n_classes``) the class index and (if ``interval``) the
    interval length, 0 where none is given; the interval's MLP ends at zero, so it starts without effect."""

    def __init__(self, dim: int, n_classes: int | None = None, interval: bool = False) -> None:
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.classes = nn.Embedding(n_classes, dim) if n_classes else None
        self.interval = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), _zero(nn.Linear(dim, dim))) if interval else None

    def forward(self, t: Tensor, labels: Tensor | None = None, interval: Tensor | None = None) -> Tensor:
        e = self.mlp(time_embedding(t, self.dim))
        if self.classes is not None:
            e = e + self.classes(labels)
        if self.interval is not None:
            e = e + self.interval(time_embedding(torch.zeros_like(t) if interval is None else interval, self.dim))
        return e


class VelocityMLP(nn.Module):
    """``v(x, t)`` for vectors ``x [B, dim]``: an MLP of ``depth`` hidden SiLU layers on ``[x, embedding]``."""

    def __init__(
        self,
        dim: int,
        width: int = 128,
        depth: int = 3,
        embedding_width: int = 32,
        n_classes: int | None = None,
        interval: bool = False,
    ) -> None:
        super().__init__()
        self.conditioning = Conditioning(embedding_width, n_classes, interval)
        layers: list[nn.Module] = []
        features = dim + embedding_width
        for _ in range(depth):
            layers += [nn.Linear(features, width), nn.SiLU()]
            features = width
        layers.append(_zero(nn.Linear(features, dim)))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor, t: Tensor, labels: Tensor | None = None, interval: Tensor | None = None) -> Tensor:
        return self.net(torch.cat((x, self.conditioning(t, labels, interval)), dim=1))


class ConditionedResidualBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the conditioning added in between and a 1x1 skip if the channels differ."""

    def __init__(self, c_in: int, c_out: int, embedding_width: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(min(8, c_in), c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.condition = nn.Linear(embedding_width, c_out)
        self.norm2, self.conv2 = nn.GroupNorm(min(8, c_out), c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        h = self.conv1(torch.nn.functional.silu(self.norm1(x)))
        h = h + self.condition(e)[:, :, None, None]
        h = self.conv2(torch.nn.functional.silu(self.norm2(h)))
        return h + self.skip(x)


class VelocityUNet(nn.Module):
    """``v(x, t)`` for images ``x [B, C, H, W]``: a U-Net with one residual block per resolution.

    ``level_widths`` gives the channels at each resolution, finest first; each further entry halves the
    resolution (H and W must be divisible by ``2 ** (len(level_widths) - 1)``). The default (32, 64, 64)
    on 28x28 images has 0.6M parameters.
    """

    def __init__(
        self,
        channels: int,
        level_widths: tuple[int, ...] = (32, 64, 64),
        embedding_width: int = 64,
        n_classes: int | None = None,
        interval: bool = False,
    ) -> None:
        super().__init__()
        self.conditioning = Conditioning(embedding_width, n_classes, interval)
        self.factor = 2 ** (len(level_widths) - 1)
        finest, coarsest = level_widths[0], level_widths[-1]
        self.stem = nn.Conv2d(channels, finest, 3, padding=1)
        self.down = nn.ModuleList(
            ConditionedResidualBlock(c_in, c_out, embedding_width)
            for c_in, c_out in zip((finest, *level_widths[:-1]), level_widths)
        )
        self.middle = ConditionedResidualBlock(coarsest, coarsest, embedding_width)
        self.up = nn.ModuleList(
            ConditionedResidualBlock(2 * c_in, c_out, embedding_width)
            for c_in, c_out in zip(reversed(level_widths), (*reversed(level_widths[:-1]), finest))
        )
        self.head = nn.Sequential(
            nn.GroupNorm(min(8, finest), finest), nn.SiLU(), _zero(nn.Conv2d(finest, channels, 3, padding=1))
        )

    def forward(self, x: Tensor, t: Tensor, labels: Tensor | None = None, interval: Tensor | None = None) -> Tensor:
        if x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise ValueError(
                f"the U-Net halves the resolution {self.factor // 2 or 1} time(s): image sides must be "
                f"divisible by {self.factor}, got {list(x.shape[-2:])}; use fewer level_widths or pad_to"
            )
        e = self.conditioning(t, labels, interval)
        h = self.stem(x)
        skips = []
        for i, block in enumerate(self.down):
            if i:
                h = torch.nn.functional.avg_pool2d(h, 2)
            h = block(h, e)
            skips.append(h)
        h = self.middle(h, e)
        for i, block in enumerate(self.up):
            if i:
                h = torch.nn.functional.interpolate(h, scale_factor=2, mode="nearest")
            h = block(torch.cat((h, skips.pop()), dim=1), e)
        return self.head(h)
