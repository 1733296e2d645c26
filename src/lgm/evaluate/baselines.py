"""A trivial reference model: independent Gaussian pixels fit to the training images.

Samples are ``round(clip(mu + sigma * eps, 0, 255))`` per pixel, and `bits_per_dim` is the exact
negative log2-probability of that discrete distribution (no dequantisation bound): each value
``k`` gets the Gaussian mass of ``[k - 1/2, k + 1/2]``, the end values 0 and 255 also the tails.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.special import log_ndtr

from lgm.flow.discrete import check_images


def _log_mass(lo: Tensor, hi: Tensor) -> Tensor:
    """``log(Phi(hi) - Phi(lo))`` for standardised bounds ``lo < hi``, accurate in both tails."""
    # Above 0, use Phi(hi) - Phi(lo) = Phi(-lo) - Phi(-hi), so the difference is never of two numbers near 1.
    upper = lo > 0
    a, b = torch.where(upper, -hi, lo), torch.where(upper, -lo, hi)
    lb = log_ndtr(b)
    return lb + torch.log(-torch.expm1(log_ndtr(a) - lb))


class PixelGaussian:
    """Independent per-pixel Gaussians (pixel units 0..255) fit to uint8 images ``[N, C, H, W]``.

    ``sigma`` is floored at ``min_sigma`` (1 grey level), so pixels that never vary in the
    training data (MNIST's corners) still give every test value a finite probability.
    """

    def __init__(self, x_train: Tensor, min_sigma: float = 1.0) -> None:
        check_images(x_train, tuple(x_train.shape[1:]))
        x = x_train.double()
        self.shape = tuple(x_train.shape[1:])
        self.mean = x.mean(0)
        self.std = x.std(0).clamp_min(min_sigma)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` uint8 images ``[n, C, H, W]``."""
        eps = torch.randn((n, *self.shape), generator=generator, dtype=torch.float64)
        return (self.mean + self.std * eps).clamp(0, 255).round().to(torch.uint8)

    def bits_per_dim(self, x: Tensor) -> Tensor:
        """Exact ``-log2 P(x) / D`` of uint8 images ``x`` ``[B, C, H, W]``, shape ``[B]``."""
        check_images(x, self.shape)
        k = x.double()
        lo = torch.where(k == 0, torch.tensor(-math.inf, dtype=k.dtype), (k - 0.5 - self.mean) / self.std)
        hi = torch.where(k == 255, torch.tensor(math.inf, dtype=k.dtype), (k + 0.5 - self.mean) / self.std)
        return -_log_mass(lo, hi).flatten(1).mean(1) / math.log(2)
