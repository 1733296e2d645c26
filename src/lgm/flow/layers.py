"""Layers: NICE scaling, squeeze, actnorm, invertible 1x1 convolutions, channel permutations."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lgm.flow.base import DataInitialized, Transform
from lgm.flow.precision import full_precision
from lgm.flow.scales import get_scale_map


class DiagonalScaling(Transform):
    """NICE's diagonal scaling layer (Dinh et al. 2014, sec. 3.3): ``z = s(h) * x``, element-wise.

    Additive couplings preserve volume; this last layer lets the flow stretch or shrink each latent
    dimension. ``s = positivity map(h)`` with ``h`` a learned ``[dim]`` vector;
    ``logdet = sum_i log s(h_i)``, the same for every sample. Input and output ``[B, dim]``.

    Args:
        dim: number of features.
        scale: name of the positivity map (see `lgm.flow.scales`): ``"exp"`` as in the paper,
            or ``"softplus"``, ``"sigmoid"``, ``"sigmoid2"``, ``"softclamp"``.
    """

    def __init__(self, dim: int, scale: str = "exp") -> None:
        super().__init__()
        self.scale_map = get_scale_map(scale)
        start = self.scale_map.identity_at if self.scale_map.identity_at is not None else 0.0
        self.h = nn.Parameter(torch.full((dim,), start))

    def log_scale(self) -> Tensor:
        """``log s(h)``, shape ``[dim]``: the per-dimension log-scale (NICE's dimension importance)."""
        return self.scale_map.log_scale(self.h)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        log_s = self.log_scale()
        return x * log_s.exp(), log_s.sum().expand(x.shape[0])

    def inverse(self, z: Tensor) -> Tensor:
        return z * self.scale_map.reciprocal_scale(self.h)


class Squeeze(Transform):
    """Space-to-depth: ``[B, C, H, W] -> [B, 4C, H/2, W/2]``, each 2x2 patch into channels (logdet 0).

    Channel ``c * 4 + 2 * i + j`` of the output holds pixel ``(2h + i, 2w + j)`` of input channel ``c``.
    """

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        b, c, h, w = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"squeeze needs even image sides, got {h}x{w}")
        z = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, 4 * c, h // 2, w // 2)
        return z, x.new_zeros(b)

    def inverse(self, z: Tensor) -> Tensor:
        b, c, h, w = z.shape
        return z.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c // 4, 2 * h, 2 * w)


class ActNorm(DataInitialized):
    """Glow's activation normalisation: ``z = (x + bias) * exp(log_scale)``, per channel.

    Data-dependent initialisation: on its first batch, ``bias = -mean`` and ``log_scale = -log std``
    per channel, so its output starts with zero mean and unit variance. Under ``torch.distributed``
    the statistics are averaged over all ranks, so every rank starts with identical parameters.
    Works on ``[B, C]`` and ``[B, C, H, W]``; ``logdet = H * W * sum(log_scale)``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))
        self.log_scale = nn.Parameter(torch.zeros(channels))

    def _view(self, p: Tensor, x: Tensor) -> Tensor:
        return p.view(1, -1, *([1] * (x.dim() - 2)))

    def initialize(self, x: Tensor) -> None:
        dims = [0, *range(2, x.dim())]
        count = torch.tensor(float(x.numel() // x.shape[1]), device=x.device, dtype=x.dtype)
        mean = _global_sum(x.sum(dim=dims)) / _global_sum(count)
        var = _global_sum((x - self._view(mean, x)).square().sum(dim=dims)) / _global_sum(count)
        self.bias.copy_(-mean)
        self.log_scale.copy_(-0.5 * torch.log(var + 1e-6))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self.ensure_initialized(x)
        z = (x + self._view(self.bias, x)) * self._view(self.log_scale.exp(), x)
        pixels = x[0, 0].numel()
        return z, (pixels * self.log_scale.sum()).expand(x.shape[0])

    def inverse(self, z: Tensor) -> Tensor:
        self.ensure_initialized()
        return z * self._view((-self.log_scale).exp(), z) - self._view(self.bias, z)


def _global_sum(t: Tensor) -> Tensor:
    """``t`` summed over all ranks when ``torch.distributed`` is running, else ``t`` itself."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        t = t.clone()
        torch.distributed.all_reduce(t)
    return t


def _orthogonal(channels: int, generator: torch.Generator | None = None) -> Tensor:
    q, _ = torch.linalg.qr(torch.randn(channels, channels, generator=generator))
    return q


class _CachedInverse:
    """Keeps ``W^-1`` between calls of a module in eval mode, recomputed whenever a parameter has changed.

    Only calls without autograd (``torch.no_grad`` or ``torch.inference_mode``, as in sampling) use
    the cache: with gradients on, ``W^-1`` is computed afresh so that every call has its own graph
    to the parameters. A value computed in inference mode is an inference tensor, which ordinary
    no-grad code must not keep, so the mode is part of the key.
    """

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.value: Tensor | None = None

    def get(self, module: nn.Module, compute) -> Tensor:
        if module.training or torch.is_grad_enabled():
            self.key = self.value = None
            return compute()
        key = (
            torch.is_inference_mode_enabled(),
            *((p.data_ptr(), p._version, p.device, p.dtype) for p in module.parameters()),
        )
        if key != self.key:
            self.key, self.value = key, compute()
        return self.value


class InvConv1x1(Transform):
    """Glow's invertible 1x1 convolution ``z = W x`` over channels, ``logdet = H * W * log|det W|``.

    ``lu=False`` learns ``W`` directly (log-det by ``slogdet``); ``lu=True`` learns its LU factors
    ``W = P L (U + diag(sign * exp(log_s)))`` with ``P`` fixed, so ``log|det W| = sum(log_s)``
    (Glow, sec. 3.2). Both start from a random orthogonal matrix. In eval mode ``W^-1`` is cached
    for sampling and dropped as soon as the weights change.
    """

    def __init__(self, channels: int, lu: bool = True, seed: int | None = None) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        w = _orthogonal(channels, generator)
        self.lu = lu
        if lu:
            p, lower, upper = torch.linalg.lu(w)
            s = torch.diagonal(upper)
            self.register_buffer("perm", p)
            self.register_buffer("sign_s", torch.sign(s))
            self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
            self.lower = nn.Parameter(lower)
            self.upper = nn.Parameter(torch.triu(upper, 1))
            self.log_s = nn.Parameter(torch.log(s.abs()))
        else:
            self.weight = nn.Parameter(w)
        self._inverse = _CachedInverse()

    def matrix(self) -> Tensor:
        """The ``[C, C]`` weight ``W``."""
        if not self.lu:
            return self.weight
        eye = torch.eye(self.lower.shape[0], device=self.lower.device, dtype=self.lower.dtype)
        lower = self.lower * self.lower_mask + eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * self.log_s.exp())
        return self.perm @ lower @ upper

    def log_abs_det(self) -> Tensor:
        return self.log_s.sum() if self.lu else torch.linalg.slogdet(self.weight).logabsdet

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        with full_precision(x):
            return _mix_channels(self.matrix(), x), (x[0, 0].numel() * self.log_abs_det()).expand(x.shape[0])

    def inverse(self, z: Tensor) -> Tensor:
        with full_precision(z):
            return _mix_channels(self._inverse.get(self, lambda: torch.linalg.inv(self.matrix())), z)


def _mix_channels(w: Tensor, x: Tensor) -> Tensor:
    """``w @ x`` over the channels of ``x`` ``[B, C, ...]`` at every position: one batched matrix
    product ``[C, C] @ [B, C, H*W]`` (on the CPU about twice as fast as the equivalent einsum or
    a 1x1 ``conv2d`` for Glow's few channels)."""
    return torch.matmul(w, x.reshape(x.shape[0], x.shape[1], -1)).reshape(x.shape)


class ChannelPermutation(Transform):
    """A fixed permutation of channels: ``"reverse"`` (RealNVP) or a seeded ``"shuffle"``; logdet 0."""

    def __init__(self, channels: int, kind: str = "reverse", seed: int = 0) -> None:
        super().__init__()
        if kind == "reverse":
            perm = torch.arange(channels - 1, -1, -1)
        elif kind == "shuffle":
            perm = torch.randperm(channels, generator=torch.Generator().manual_seed(seed))
        else:
            raise ValueError(f"unknown permutation {kind!r}; choose 'reverse' or 'shuffle'")
        self.register_buffer("perm", perm)
        self.register_buffer("inverse_perm", torch.argsort(perm))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x[:, self.perm], x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor) -> Tensor:
        return z[:, self.inverse_perm]
