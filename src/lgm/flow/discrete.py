"""Discrete images <-> the continuous space a flow models: bit reduction, dequantisation, quantisation.

Images are integers ``x`` in ``0 .. 2**n_bits - 1`` after `reduce_bits`; the flow models the
continuous ``y = (x + u) / 2**n_bits`` in ``[0, 1)``, ``u ~ U[0, 1)`` (uniform dequantisation).
Since each ``x`` owns a cube of volume ``2**(-n_bits D)`` in ``y`` space,
``-log P(x) <= E_u[-log p(y)] + D n_bits ln 2``, which is what bits/dim reports.

Gaussian noise augmentation (`noisy_images`) is the other way to make images continuous: the flow
then models ``y = (x + 1/2) / 2**n_bits + sigma * eps``, ``eps ~ N(0, I)``, whose values leave ``[0, 1]``.
A density of such ``y`` is not a bound on ``P(x)``; bits/dim stays the uniform-dequantisation bound.
"""

from __future__ import annotations

import torch
from torch import Tensor


def check_images(x: Tensor, shape: tuple[int, ...]) -> None:
    """Raise a `ValueError` unless ``x`` is a ``[B, *shape]`` batch of integer pixels in 0..255."""
    if not isinstance(x, Tensor):
        raise TypeError(f"expected a torch.Tensor of images, got {type(x).__name__}")
    if x.is_floating_point() or x.dtype == torch.bool:
        raise ValueError(
            f"expected discrete images as integers 0..255 (e.g. uint8), got {x.dtype}; "
            "for images scaled to [0, 1] use (x * 255).round().to(torch.uint8)"
        )
    if tuple(x.shape[1:]) != tuple(shape) or x.dim() != len(shape) + 1:
        raise ValueError(f"expected images of shape [B, {', '.join(map(str, shape))}], got {list(x.shape)}")
    if x.numel() and (x.min() < 0 or x.max() > 255):
        raise ValueError(f"pixel values must lie in 0..255, got values in [{x.min().item()}, {x.max().item()}]")


def reduce_bits(x: Tensor, n_bits: int) -> Tensor:
    """8-bit integers -> ``n_bits``-bit integers (``x // 2**(8 - n_bits)``), as Glow's 5-bit runs do."""
    return torch.div(x, 2 ** (8 - n_bits), rounding_mode="floor") if n_bits < 8 else x


def dequantize(x: Tensor, n_bits: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """``n_bits``-bit integers ``x`` -> ``y = (x + u) / 2**n_bits`` in ``[0, 1)``, ``u ~ U[0, 1)``."""
    u = torch.rand(x.shape, device=x.device, dtype=dtype)
    return (x.to(dtype) + u) / 2**n_bits


def dequantize_images(x: Tensor, n_bits: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """8-bit images ``x`` (integers 0..255) -> dequantised ``n_bits``-bit images in ``[0, 1)``: what a
    model of ``n_bits`` sees in training (`reduce_bits`, then `dequantize`)."""
    return dequantize(reduce_bits(x, n_bits), n_bits, dtype)


def noisy_images(x: Tensor, n_bits: int, std: float, dtype: torch.dtype = torch.float32) -> Tensor:
    """8-bit images ``x`` -> ``y = (x' + 1/2) / 2**n_bits + std * eps``, ``x'`` the ``n_bits``-bit
    images (`reduce_bits`) and ``eps ~ N(0, I)``: what a model trained with noise augmentation sees."""
    centres = (reduce_bits(x, n_bits).to(dtype) + 0.5) / 2**n_bits
    return centres + std * torch.randn(x.shape, device=x.device, dtype=dtype)


def quantize(y: Tensor, n_bits: int) -> Tensor:
    """Continuous ``y`` in ``[0, 1]`` -> 8-bit images (uint8) showing ``n_bits``-bit levels.

    Inverts `dequantize` up to the noise: ``quantize(dequantize(x, n), n) == x * 2**(8 - n)``.
    """
    levels = torch.floor(y.clamp(0, 1) * 2**n_bits).clamp(max=2**n_bits - 1)
    return (levels * 2 ** (8 - n_bits)).to(torch.uint8)
