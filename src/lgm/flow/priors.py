"""Priors on the latent space: standard distributions, and Gaussians whose parameters are learned
or conditioned (on the kept half at a multi-scale split, or on a class label).

Every prior follows one protocol, `Prior`:

* ``log_prob(z, labels=None, context=None) -> [B]``, nats, summed over every non-batch dimension;
* ``sample(n, labels=None, temperature=1.0, context=None) -> [n, *shape]``;
* ``standardize(z, labels=None, context=None) -> z's shape``: ``z`` mapped to N(0, I) noise, exactly
  so if ``z`` follows the prior (for diagnostics: the norm of the result should follow a chi law).

``labels`` (class indices ``[B]``) are used by class-conditional priors and ignored by the others;
``context`` is what a conditional prior is conditioned on (the kept half at a multi-scale split),
``None`` for the others. Temperature multiplies the standard deviation (for the logistic, its
scale), as in Glow's "reduced temperature" sampling.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lgm.flow.nets import ZeroConv2d
from lgm.flow.precision import full_precision

_LOG_2PI = math.log(2 * math.pi)


class Prior(nn.Module):
    """The protocol every prior follows (see the module's notes); subclasses implement all three."""

    def log_prob(
        self, z: Tensor, labels: Tensor | None = None, context: Tensor | None = None
    ) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def sample(
        self, n: int, labels: Tensor | None = None, temperature: float = 1.0, context: Tensor | None = None
    ) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def standardize(
        self, z: Tensor, labels: Tensor | None = None, context: Tensor | None = None
    ) -> Tensor:  # pragma: no cover
        raise NotImplementedError


class _FactorisedPrior(Prior):
    """Shared plumbing: the latent shape, and a buffer that follows the module's device and dtype."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    def _flat_sum(self, values: Tensor) -> Tensor:
        return values.reshape(values.shape[0], -1).sum(dim=1)


class StandardGaussian(_FactorisedPrior):
    """N(0, I) on latents of ``shape``: log p(z) = -0.5 * sum(z^2 + log 2pi)."""

    def log_prob(self, z: Tensor, labels: Tensor | None = None, context: Tensor | None = None) -> Tensor:
        return self._flat_sum(-0.5 * (z.square() + _LOG_2PI))

    def sample(
        self, n: int, labels: Tensor | None = None, temperature: float = 1.0, context: Tensor | None = None
    ) -> Tensor:
        a = self._anchor
        return temperature * torch.randn(n, *self.shape, device=a.device, dtype=a.dtype)

    def standardize(self, z: Tensor, labels: Tensor | None = None, context: Tensor | None = None) -> Tensor:
        return z


class StandardLogistic(_FactorisedPrior):
    """Standard logistic on every dimension (NICE's prior): log p(z) = -softplus(z) - softplus(-z).

    Heavier tails than the Gaussian give larger gradients to badly modelled points (NICE, sec. 3.4).
    """

    def log_prob(self, z: Tensor, labels: Tensor | None = None, context: Tensor | None = None) -> Tensor:
        return self._flat_sum(-F.softplus(z) - F.softplus(-z))

    def sample(
        self, n: int, labels: Tensor | None = None, temperature: float = 1.0, context: Tensor | None = None
    ) -> Tensor:
        a = self._anchor
        # Inverse CDF on U(eps, 1 - eps) keeps the logit finite in float32.
        eps = torch.finfo(a.dtype).eps
        u = torch.rand(n, *self.shape, device=a.device, dtype=a.dtype).clamp(eps, 1 - eps)
        return temperature * (torch.log(u) - torch.log1p(-u))

    def standardize(self, z: Tensor, labels: Tensor | None = None, context: Tensor | None = None) -> Tensor:
        """Standard logistic -> standard normal, coordinate-wise and monotonically: ``Phi^-1(sigmoid(z))``,
        computed as ``-sign(z) Phi^-1(sigmoid(-|z|))`` in float64 so that the tails do not round to
        ``sigmoid(z) = 1``."""
        tail = torch.sigmoid(-z.double().abs())
        return (-z.sign() * torch.special.ndtri(tail)).to(z.dtype)


PRIORS = {"gaussian": StandardGaussian, "logistic": StandardLogistic}


def make_prior(name: str, shape: tuple[int, ...]) -> Prior:
    """Build a prior by name (``"gaussian"`` or ``"logistic"``) for latents of ``shape``."""
    try:
        return PRIORS[name](shape)
    except KeyError:
        raise ValueError(f"unknown prior {name!r}; choose one of {sorted(PRIORS)}") from None


def gaussian_log_prob(z: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """``log N(z; mean, exp(log_std)^2)`` summed over every non-batch dimension, shape ``[B]``."""
    values = -0.5 * ((z - mean) * torch.exp(-log_std)).square() - log_std - 0.5 * _LOG_2PI
    return values.reshape(z.shape[0], -1).sum(dim=1)


class _ClassBias(nn.Module):
    """Per-class offsets of mean and log-std, per channel, started at zero (class-conditional priors)."""

    def __init__(self, n_classes: int, channels: int) -> None:
        super().__init__()
        self.n_classes = n_classes
        self.embedding = nn.Embedding(n_classes, 2 * channels)
        nn.init.zeros_(self.embedding.weight)

    def forward(self, labels: Tensor) -> tuple[Tensor, Tensor]:
        """``labels`` ``int64 [B]`` -> mean and log-std offsets ``[B, C, 1, 1]`` (checked by `lgm.flow.Flow`)."""
        mean, log_std = self.embedding(labels).chunk(2, dim=1)
        return mean[:, :, None, None], log_std[:, :, None, None]


class TopPrior(Prior):
    """Diagonal Gaussian on the last level's latent ``[B, C, H, W]``.

    ``learned=False`` is N(0, I); ``learned=True`` learns a mean and log-std per position (Glow's
    ``learntop``), started at N(0, I). With ``n_classes`` the label adds a learned per-channel offset.
    Temperature multiplies the standard deviation.
    """

    def __init__(self, shape: tuple[int, int, int], learned: bool = True, n_classes: int | None = None) -> None:
        super().__init__()
        self.shape = tuple(shape)
        if learned:
            self.mean = nn.Parameter(torch.zeros(shape))
            self.log_std = nn.Parameter(torch.zeros(shape))
        else:
            self.register_buffer("mean", torch.zeros(shape))
            self.register_buffer("log_std", torch.zeros(shape))
        self.class_bias = _ClassBias(n_classes, shape[0]) if n_classes else None

    def params(self, batch: int, labels: Tensor | None) -> tuple[Tensor, Tensor]:
        """Mean and log-std ``[batch, C, H, W]``."""
        mean, log_std = self.mean.expand(batch, *self.shape), self.log_std.expand(batch, *self.shape)
        if self.class_bias is not None:
            dm, ds = self.class_bias(labels)
            mean, log_std = mean + dm, log_std + ds
        return mean, log_std

    def log_prob(self, z: Tensor, labels: Tensor | None = None, context: Tensor | None = None) -> Tensor:
        return gaussian_log_prob(z, *self.params(z.shape[0], labels))

    def sample(
        self, n: int, labels: Tensor | None = None, temperature: float = 1.0, context: Tensor | None = None
    ) -> Tensor:
        mean, log_std = self.params(n, labels)
        return mean + temperature * log_std.exp() * torch.randn_like(mean)

    def standardize(self, z: Tensor, labels: Tensor | None = None, context: Tensor | None = None) -> Tensor:
        mean, log_std = self.params(z.shape[0], labels)
        return (z - mean) * (-log_std).exp()


class SplitPrior(Prior):
    """Prior of a factored-out latent ``z [B, Cz, H, W]`` given the kept half, ``context`` ``[B, Ch, H, W]``.

    ``learned=False`` is N(0, I); ``learned=True`` is Glow's conditional prior: a zero-initialised
    convolution of the kept half gives its mean and log-std (started at N(0, I)). With ``n_classes``
    the label adds a learned per-channel offset. Temperature multiplies the standard deviation.
    """

    def __init__(self, kept_channels: int, z_channels: int, learned: bool = True, n_classes: int | None = None) -> None:
        super().__init__()
        self.z_channels = z_channels
        self.conv = ZeroConv2d(kept_channels, 2 * z_channels) if learned else None
        self.class_bias = _ClassBias(n_classes, z_channels) if n_classes else None

    def params(self, h: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor]:
        """Mean and log-std ``[B, Cz, H, W]`` given the kept half ``h``."""
        shape = (h.shape[0], self.z_channels, *h.shape[2:])
        if self.conv is not None:
            with full_precision(h):
                mean, log_std = self.conv(h).chunk(2, dim=1)
        else:
            mean, log_std = h.new_zeros(shape), h.new_zeros(shape)
        if self.class_bias is not None:
            dm, ds = self.class_bias(labels)
            mean, log_std = mean + dm, log_std + ds
        return mean, log_std

    def _context(self, context: Tensor | None) -> Tensor:
        if context is None:
            raise ValueError("a split prior is conditioned on the kept half: pass it as context")
        return context

    def log_prob(self, z: Tensor, labels: Tensor | None = None, context: Tensor | None = None) -> Tensor:
        return gaussian_log_prob(z, *self.params(self._context(context), labels))

    def sample(
        self, n: int, labels: Tensor | None = None, temperature: float = 1.0, context: Tensor | None = None
    ) -> Tensor:
        h = self._context(context)
        if len(h) != n:
            raise ValueError(f"{n} samples need a context of {n} kept halves, got {len(h)}")
        mean, log_std = self.params(h, labels)
        return mean + temperature * log_std.exp() * torch.randn_like(mean)

    def standardize(self, z: Tensor, labels: Tensor | None = None, context: Tensor | None = None) -> Tensor:
        mean, log_std = self.params(self._context(context), labels)
        return (z - mean) * (-log_std).exp()
