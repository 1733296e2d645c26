"""Preprocessing as transforms with log-determinants, so ``log_prob`` stays that of the image data.

They act on dequantised images ``y`` in ``[0, 1]`` (see `lgm.flow.discrete`), before the model's
own layers. Each one's log-det enters ``log_prob``; that is why switching, say, the logit on or off
changes the *space* the model works in but never the meaning of the reported bits/dim.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from lgm.flow.base import DataInitialized, Transform, check_noise_std
from lgm.flow.dequantization import VariationalDequantizer

DEQUANTIZATIONS = ("uniform", "variational")


class Center(Transform):
    """``[0, 1] -> [-0.5, 0.5]``: ``z = y - 0.5`` (logdet 0), the data range Glow uses."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x - 0.5, x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor) -> Tensor:
        return z + 0.5


class Logit(Transform):
    """RealNVP's logit transform: ``z = logit(alpha + (1 - 2 alpha) y)``, from ``[0, 1]`` to the real line.

    ``alpha`` keeps the logit away from infinity at 0 and 1 (RealNVP: 0.05 for CIFAR-10, 1e-6 for
    MNIST). Per value, ``log dz/dy = log(1 - 2 alpha) - log p - log(1 - p)`` with
    ``p = alpha + (1 - 2 alpha) y``; the log-det sums it over every dimension.
    """

    def __init__(self, alpha: float = 0.05) -> None:
        super().__init__()
        if not 0 <= alpha < 0.5:
            raise ValueError(f"logit alpha must be in [0, 0.5), got {alpha}")
        self.alpha = alpha

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        p = self.alpha + (1 - 2 * self.alpha) * x
        z = torch.log(p) - torch.log1p(-p)
        # -log p - log(1 - p) = softplus(z) + softplus(-z), finite even where p rounds to 0 or 1.
        log_dz = math.log(1 - 2 * self.alpha) + F.softplus(z) + F.softplus(-z)
        return z, log_dz.reshape(x.shape[0], -1).sum(dim=1)

    def inverse(self, z: Tensor) -> Tensor:
        return (torch.sigmoid(z) - self.alpha) / (1 - 2 * self.alpha)


class Normalize(DataInitialized):
    """Affine normalisation ``z = (y - mean) / std`` by statistics of the data, fixed after initialisation.

    ``mode="global"`` uses one mean and std over all values, ``"per_pixel"`` one per position and
    channel. Statistics come from the first training batch (or `lgm.flow.Flow.initialize`) and are
    saved with the model. ``logdet = -sum log std`` over every dimension.
    """

    def __init__(self, shape: tuple[int, ...], mode: str = "global") -> None:
        super().__init__()
        if mode not in ("global", "per_pixel"):
            raise ValueError(f"normalize must be None, 'global' or 'per_pixel', got {mode!r}")
        self.mode = mode
        self.register_buffer("mean", torch.zeros(shape))
        self.register_buffer("log_std", torch.zeros(shape))

    def initialize(self, x: Tensor) -> None:
        if self.mode == "global":
            mean, std = x.mean().expand(self.mean.shape), x.std().expand(self.mean.shape)
        else:
            mean, std = x.mean(dim=0), x.std(dim=0)
        self.mean.copy_(mean)
        self.log_std.copy_(torch.log(std.clamp_min(1e-6)))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self.ensure_initialized(x)
        z = (x - self.mean) * torch.exp(-self.log_std)
        return z, (-self.log_std.sum()).expand(x.shape[0])

    def inverse(self, z: Tensor) -> Tensor:
        self.ensure_initialized()
        return z * torch.exp(self.log_std) + self.mean


class PadWithNoise(Transform):
    """Pad images ``[B, C, H, W] -> [B, C, H', W']`` with dequantised black pixels (not a bijection).

    Padding adds dimensions, so it cannot be a bijection of the data. Each pad value is drawn from
    ``q = U[0, 2**-n_bits)``, exactly like a dequantised 0 pixel, and ``forward`` returns
    ``-log q(pad) = -P n_bits ln 2`` (``P`` pad values) as its "logdet". Then ``log_prob`` is
    ``log p(y, pad) - log q(pad)``, a stochastic lower bound on the log-density of the unpadded
    image, and bits/dim over the original pixels is an upper bound, like dequantisation itself.
    ``inverse`` crops, so ``inverse(forward(y)) == y`` exactly.
    """

    def __init__(self, in_shape: tuple[int, ...], side: int, n_bits: int = 8) -> None:
        super().__init__()
        c, h, w = in_shape
        if side < max(h, w):
            raise ValueError(f"cannot pad images of {h}x{w} to a smaller side {side}")
        self.top, self.left = (side - h) // 2, (side - w) // 2
        self.bottom, self.right = side - h - self.top, side - w - self.left
        self.h, self.w = h, w
        self.n_bits = n_bits
        self.pad_values = c * (side * side - h * w)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        padded = F.pad(x, (self.left, self.right, self.top, self.bottom))
        mask = torch.ones_like(x)
        inside = F.pad(mask, (self.left, self.right, self.top, self.bottom)).bool()
        noise = torch.rand_like(padded) / 2**self.n_bits
        padded = torch.where(inside, padded, noise)
        log_q = self.pad_values * self.n_bits * math.log(2)
        return padded, x.new_full((x.shape[0],), -log_q)

    def inverse(self, z: Tensor) -> Tensor:
        return z[..., self.top : self.top + self.h, self.left : self.left + self.w]


@dataclass(frozen=True)
class Preprocessing:
    """How discrete images become the model's input: one value, shared by every image model.

    The transforms it builds (`transforms`) are part of the flow and carry their log-determinants, so
    bits/dim is always of the original discrete images. Order: pad (optional) -> logit (optional;
    needs ``data_range="unit"``) or centring (``data_range="centered"``) -> normalisation (optional).

    Attributes:
        n_bits: the bit depth modelled (1 to 8): images are reduced to it and dequantised to
            ``y = (x + u) / 2**n_bits`` in ``[0, 1]``.
        data_range: ``"unit"`` (``[0, 1]``) or ``"centered"`` (``[-0.5, 0.5]``).
        logit_alpha: ``logit(alpha + (1 - 2 alpha) y)`` with this ``alpha`` in (0, 0.5) (RealNVP: 0.05;
            1e-6 for MNIST), or ``None``.
        normalize: ``None``, ``"global"`` or ``"per_pixel"``: unit variance from the first batch.
        pad_to: pad each side to this size with dequantisation noise of known density, or ``None``.
        noise_std: ``None`` (uniform dequantisation), or train on Gaussian noise-augmented images
            ``y = (x + 1/2) / 2**n_bits + noise_std * eps`` instead (`lgm.flow.discrete.noisy_images`;
            TarFlow's choice), whose samples the flow denoises (`lgm.flow.Flow.denoise`). Values then
            leave ``[0, 1]``, so it excludes the logit. E.g. 0.05 on the ``[0, 1]`` scale.
        dequantization: ``"uniform"`` (``u ~ U[0, 1)``), or ``"variational"``: ``u ~ q(u | x)``, a small
            conditional flow trained with the model (`lgm.flow.dequantization`), for a tighter bits/dim.
    """

    n_bits: int = 8
    data_range: str = "centered"
    logit_alpha: float | None = None
    normalize: str | None = None
    pad_to: int | None = None
    noise_std: float | None = None
    dequantization: str = "uniform"

    def __post_init__(self) -> None:
        if not (isinstance(self.n_bits, int) and 1 <= self.n_bits <= 8):
            raise ValueError(f"n_bits must be between 1 and 8, got {self.n_bits}")
        if self.data_range not in ("unit", "centered"):
            raise ValueError(f"data_range must be 'unit' ([0, 1]) or 'centered' ([-0.5, 0.5]), got {self.data_range!r}")
        if self.logit_alpha is not None and self.data_range != "unit":
            raise ValueError("the logit transform maps [0, 1] to the real line: use it with data_range='unit'")
        if self.logit_alpha is not None and not 0 < self.logit_alpha < 0.5:
            # alpha = 0 sends a dequantised value of exactly 0 (probability 2^-24 per value) to -inf.
            raise ValueError(
                f"logit_alpha must be in (0, 0.5) (RealNVP: 0.05, or 1e-6 for MNIST), got {self.logit_alpha}"
            )
        check_noise_std(self.noise_std)
        if self.noise_std is not None and self.logit_alpha is not None:
            raise ValueError(
                "Gaussian noise carries values outside [0, 1], where the logit is undefined: "
                "use noise_std without logit_alpha (data_range 'centered' or 'unit')"
            )
        if self.dequantization not in DEQUANTIZATIONS:
            raise ValueError(f"dequantization must be one of {', '.join(DEQUANTIZATIONS)}, got {self.dequantization!r}")
        if self.dequantization == "variational" and self.noise_std is not None:
            raise ValueError("noise augmentation replaces dequantisation: set noise_std or variational dequantization")

    @classmethod
    def of(cls, value: Preprocessing | dict | None) -> Preprocessing | None:
        """``value`` as a `Preprocessing` (a dict holds its fields, as saved files do); ``None`` stays ``None``."""
        return cls(**value) if isinstance(value, dict) else value

    def flow_arguments(self, shape: tuple[int, ...]) -> dict:
        """What an image model of ``shape`` passes to `lgm.flow.Flow`: ``n_bits``, ``noise_std`` and the
        ``dequantizer`` (a learned ``q(u | x)`` with ``dequantization="variational"``, else ``None``)."""
        dequantizer = VariationalDequantizer(shape) if self.dequantization == "variational" else None
        return {"n_bits": self.n_bits, "noise_std": self.noise_std, "dequantizer": dequantizer}

    def transforms(self, shape: tuple[int, ...]) -> tuple[list[Transform], tuple[int, ...]]:
        """The preprocessing chain for images of ``shape`` and the shape the model sees after it."""
        layers: list[Transform] = []
        if self.pad_to is not None:
            if len(shape) != 3:
                raise ValueError(f"pad_to needs images of shape (C, H, W), got {shape}")
            layers.append(PadWithNoise(shape, self.pad_to, self.n_bits))
            shape = (shape[0], self.pad_to, self.pad_to)
        if self.logit_alpha is not None:
            layers.append(Logit(self.logit_alpha))
        elif self.data_range == "centered":
            layers.append(Center())
        if self.normalize is not None:
            layers.append(Normalize(shape, self.normalize))
        return layers, shape
