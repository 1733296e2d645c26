"""Likelihood diagnostics of image flows: latent norms against the prior, likelihood under corruption.

Images are uint8 ``[B, C, H, W]``; a flow's data space is ``[0, 1]``, so `to_data` takes each pixel
to the centre of its dequantisation bin, ``(x + 0.5) / 256``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from tqdm.auto import tqdm

from lgm.flow.base import Flow


def to_data(x: Tensor) -> Tensor:
    """uint8 images -> the flow's data space: the centre of each pixel's bin, ``(x + 0.5) / 256``."""
    return (x.float() + 0.5) / 256


@torch.no_grad()
def standardized_latents(flow: Flow, x: Tensor, labels: Tensor | None = None) -> Tensor:
    """Latents of data ``x`` (``[B, *shape]`` in [0, 1]) made standard normal under the model, ``[B, D]``
    (`lgm.flow.Flow.standardize`: each level's latent by its own prior; a standard-logistic prior's
    through the two CDFs). If the model were the data's distribution, the result would be N(0, I) and
    its norm would follow the chi distribution with ``D`` degrees of freedom (`chi_log_pdf`).
    """
    if flow.n_classes and labels is None:
        raise ValueError("a class-conditional flow needs the labels of x to standardise its latents")
    return flow.standardize(x, labels)


def chi_log_pdf(r: Tensor, dof: int) -> Tensor:
    """Log-density of the chi distribution with ``dof`` degrees of freedom (the norm of N(0, I_dof))."""
    k = dof
    return (k - 1) * torch.log(r) - r.square() / 2 - (k / 2 - 1) * math.log(2) - math.lgamma(k / 2)


def chi_mean(dof: int) -> float:
    """``E||z||`` for ``z ~ N(0, I_dof)``: ``sqrt(2) Gamma((k+1)/2) / Gamma(k/2)``."""
    return math.sqrt(2) * math.exp(math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2))


def gaussian_noise(x: Tensor, sigma: float, generator: torch.Generator) -> Tensor:
    """uint8 images plus N(0, sigma^2) noise (sigma in units of the [0, 1] range), rounded and clipped."""
    noise = torch.randn(x.shape, generator=generator) * sigma * 255
    return (x.float() + noise).round().clamp(0, 255).to(torch.uint8)


def occlude(x: Tensor, fraction: float, generator: torch.Generator) -> Tensor:
    """uint8 images with a black square covering ``fraction`` of each image, at a random place."""
    h, w = x.shape[-2:]
    side = round(math.sqrt(fraction * h * w))
    out = x.clone()
    if side == 0:
        return out
    rows = torch.randint(0, h - side + 1, (len(x),), generator=generator).tolist()
    cols = torch.randint(0, w - side + 1, (len(x),), generator=generator).tolist()
    for img, r, c in zip(out, rows, cols):
        img[:, r : r + side, c : c + side] = 0
    return out


@torch.no_grad()
def mean_bits_per_dim(
    flow: Flow,
    x: Tensor,
    labels: Tensor | None = None,
    desc: str | None = None,
    noisy: bool = False,
    batch_size: int = 500,
) -> tuple[float, float]:
    """Mean bits/dim of uint8 images ``x`` and its standard error over images (with ``noisy``, the
    `lgm.flow.Flow.noisy_bits_per_dim` of a flow trained with noise instead)."""
    measure = flow.noisy_bits_per_dim if noisy else flow.bits_per_dim
    values = []
    for i in tqdm(range(0, len(x), batch_size), desc=desc, disable=desc is None, leave=False):
        batch_labels = None if labels is None else labels[i : i + batch_size]
        values.append(measure(x[i : i + batch_size], batch_labels).double())
    v = torch.cat(values)
    return v.mean().item(), (v.std() / math.sqrt(len(v))).item() if len(v) > 1 else float("nan")


def corrupted_likelihoods(
    flow: Flow,
    x: Tensor,
    labels: Tensor | None = None,
    noise_levels: tuple[float, ...] = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3),
    occlusions: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5, 0.75),
    seed: int = 0,
) -> dict:
    """Mean bits/dim of test images ``x`` (uint8) under Gaussian noise and under occlusion.

    Returns ``{"noise": {"levels": [...], "bits_per_dim": [...]}, "occlusion": {...}}``. A good
    density model's bits/dim rises with noise; occluding with black can *lower* it, since flat
    black regions are cheap to code (a known failure of likelihood as an anomaly score).
    """
    generator = torch.Generator().manual_seed(seed)
    result = {}
    for name, levels, corrupt in (("noise", noise_levels, gaussian_noise), ("occlusion", occlusions, occlude)):
        bpd = []
        for level in tqdm(levels, desc=f"bits/dim under {name}", leave=False):
            bpd.append(mean_bits_per_dim(flow, corrupt(x, level, generator), labels)[0])
        result[name] = {"levels": list(levels), "bits_per_dim": bpd}
    return result
