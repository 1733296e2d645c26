"""Priors on the latent space: factorised standard distributions with exact densities.

Each prior has ``log_prob(z) -> [B]`` (nats, summed over every non-batch dimension) and
``sample(n, temperature) -> [n, *shape]``. Temperature multiplies the standard deviation (for the
logistic, its scale), as in Glow's "reduced temperature" sampling.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_LOG_2PI = math.log(2 * math.pi)


class _FactorisedPrior(nn.Module):
    """Shared plumbing: the latent shape, and a buffer that follows the module's device and dtype."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    def _flat_sum(self, values: Tensor) -> Tensor:
        return values.reshape(values.shape[0], -1).sum(dim=1)


class StandardGaussian(_FactorisedPrior):
    """N(0, I) on latents of ``shape``: log p(z) = -0.5 * sum(z^2 + log 2pi)."""

    def log_prob(self, z: Tensor) -> Tensor:
        return self._flat_sum(-0.5 * (z.square() + _LOG_2PI))

    def sample(self, n: int, temperature: float = 1.0) -> Tensor:
        a = self._anchor
        return temperature * torch.randn(n, *self.shape, device=a.device, dtype=a.dtype)


class StandardLogistic(_FactorisedPrior):
    """Standard logistic on every dimension (NICE's prior): log p(z) = -softplus(z) - softplus(-z).

    Heavier tails than the Gaussian give larger gradients to badly modelled points (NICE, sec. 3.4).
    """

    def log_prob(self, z: Tensor) -> Tensor:
        return self._flat_sum(-F.softplus(z) - F.softplus(-z))

    def sample(self, n: int, temperature: float = 1.0) -> Tensor:
        a = self._anchor
        # Inverse CDF on U(eps, 1 - eps) keeps the logit finite in float32.
        eps = torch.finfo(a.dtype).eps
        u = torch.rand(n, *self.shape, device=a.device, dtype=a.dtype).clamp(eps, 1 - eps)
        return temperature * (torch.log(u) - torch.log1p(-u))


PRIORS = {"gaussian": StandardGaussian, "logistic": StandardLogistic}


def make_prior(name: str, shape: tuple[int, ...]) -> nn.Module:
    """Build a prior by name (``"gaussian"`` or ``"logistic"``) for latents of ``shape``."""
    try:
        return PRIORS[name](shape)
    except KeyError:
        raise ValueError(f"unknown prior {name!r}; choose one of {sorted(PRIORS)}") from None
