"""The transform protocol, composition, and `Flow` = transform + prior.

Conventions used by every transform in `lgm.flow`:

* ``forward`` goes data -> latent (the *normalising* direction) and returns ``(z, logdet)``,
  where ``logdet = log|det dz/dx|`` per sample, shape ``[B]``, summed over every dimension.
* ``inverse`` goes latent -> data and returns ``x`` only. Every transform is exactly invertible.
* ``Flow.log_prob(x) = prior.log_prob(z) + logdet``, in nats, per sample (change of variables).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn


class Transform(nn.Module):
    """A bijection between data space and latent space.

    Subclasses implement ``forward(x) -> (z, logdet)`` and ``inverse(z) -> x``. Inputs carry a
    leading batch dimension ``B``; ``logdet`` has shape ``[B]``.
    """

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def inverse(self, z: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class Compose(Transform):
    """Apply transforms in order in the forward direction (data -> latent), reversed in the inverse.

    The log-determinants add up: ``log|det d(f2 o f1)/dx| = log|det df1/dx| + log|det df2/dy|``.
    """

    def __init__(self, *transforms: Transform) -> None:
        super().__init__()
        self.transforms = nn.ModuleList(transforms)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logdet = x.new_zeros(x.shape[0])
        for transform in self.transforms:
            x, step_logdet = transform(x)
            logdet = logdet + step_logdet
        return x, logdet

    def inverse(self, z: Tensor) -> Tensor:
        for transform in reversed(self.transforms):
            z = transform.inverse(z)
        return z


class Reshape(Transform):
    """Reshape each sample from ``in_shape`` to ``out_shape`` (volume preserving: logdet = 0)."""

    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> None:
        super().__init__()
        if math.prod(in_shape) != math.prod(out_shape):
            raise ValueError(f"cannot reshape {in_shape} into {out_shape}: sizes differ")
        self.in_shape = tuple(in_shape)
        self.out_shape = tuple(out_shape)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x.reshape(x.shape[0], *self.out_shape), x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor) -> Tensor:
        return z.reshape(z.shape[0], *self.in_shape)


class Flow(nn.Module):
    """A normalising flow: a `Transform` from data to latent space and a prior on the latent.

    Args:
        transform: the bijection, data -> latent.
        prior: a distribution over latents with ``log_prob(z) -> [B]`` and
            ``sample(n, temperature) -> z`` (see `lgm.flow.priors`).
        shape: the shape of one data sample, e.g. ``(2,)`` or ``(1, 28, 28)``; inputs are checked
            against it so that a wrong shape fails with a clear message.

    Model classes built from plain arguments (`NiceFlow`, ...) record those arguments in
    ``self.init_args`` so that `lgm.flow.save` / `lgm.flow.load` can rebuild them.
    """

    init_args: dict[str, Any]

    def __init__(self, transform: Transform, prior: nn.Module, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.transform = transform
        self.prior = prior
        self.shape = tuple(shape)

    def check_input(self, x: Tensor) -> None:
        """Raise a `ValueError` naming the problem if ``x`` is not a finite ``[B, *shape]`` batch."""
        if not isinstance(x, Tensor):
            raise TypeError(f"expected a torch.Tensor of shape [B, {_fmt(self.shape)}], got {type(x).__name__}")
        if tuple(x.shape[1:]) != self.shape or x.dim() != len(self.shape) + 1:
            raise ValueError(
                f"expected input of shape [B, {_fmt(self.shape)}] (a batch of samples), got {list(x.shape)}; "
                "add a batch dimension with x.unsqueeze(0) for a single sample"
            )
        if not x.is_floating_point():
            raise ValueError(f"expected a floating-point tensor, got {x.dtype}; convert with x.float()")
        if not torch.isfinite(x).all():
            raise ValueError("input contains NaN or Inf values; clean the data before computing densities")

    def encode(self, x: Tensor) -> Tensor:
        """Map data ``[B, *shape]`` to latents."""
        self.check_input(x)
        return self.transform(x)[0]

    def decode(self, z: Tensor) -> Tensor:
        """Map latents back to data ``[B, *shape]``; ``decode(encode(x)) == x`` to float precision."""
        return self.transform.inverse(z)

    def log_prob(self, x: Tensor) -> Tensor:
        """Log-density of ``x`` (``[B, *shape]``) in nats, shape ``[B]``."""
        self.check_input(x)
        z, logdet = self.transform(x)
        return self.prior.log_prob(z) + logdet

    def sample(self, n: int, temperature: float = 1.0) -> Tensor:
        """Draw ``n`` samples ``[n, *shape]``; ``temperature`` scales the prior's standard deviation.

        Temperature 0 gives ``n`` copies of the decoded prior mode, ``decode(0)``.
        """
        if temperature < 0:
            raise ValueError(f"temperature must be non-negative, got {temperature}")
        return self.decode(self.prior.sample(n, temperature=temperature))


def _fmt(shape: tuple[int, ...]) -> str:
    return ", ".join(str(s) for s in shape)
