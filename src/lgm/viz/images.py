"""Figures for image flows: sample grids, real vs generated, interpolations, latent norms, scales, corruption.

Images are tensors ``[N, C, H, W]``, uint8 in 0..255 or floats in [0, 1]. Every ``plot_*`` function
returns the matplotlib `Figure` (shown inline by notebooks) and also saves it when given ``path``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from matplotlib.figure import Figure
from torch import Tensor
from torchvision.utils import make_grid, save_image

from lgm.evaluate.diagnostics import chi_log_pdf
from lgm.utils.files import atomic_file
from lgm.viz.figures import finish


def grid_image(images: Tensor, nrow: int | None = None) -> Tensor:
    """A grid ``[H, W, C]`` (floats in [0, 1], ready for ``imshow``) of images ``[N, C, H, W]``."""
    x = images.float() / 255 if not images.is_floating_point() else images.float()
    nrow = nrow or max(1, round(math.sqrt(len(x))))
    return make_grid(x, nrow=nrow, padding=1, pad_value=0.5).permute(1, 2, 0)


def save_grid(images: Tensor, path: str | os.PathLike, nrow: int | None = None) -> None:
    """Save images ``[N, C, H, W]`` (floats in [0, 1]) as one grid picture at their own resolution
    (a 1-pixel black border between images), atomically: the file appears whole or not at all."""
    nrow = nrow or max(1, round(math.sqrt(len(images))))
    with atomic_file(path, "wb") as f:
        save_image(images.float().cpu(), f, nrow=nrow, padding=1, format=Path(path).suffix[1:] or "png")


def _show(ax, images: Tensor, title: str, nrow: int | None = None) -> None:
    grid = grid_image(images, nrow)
    ax.imshow(
        (grid.squeeze(-1) if grid.shape[-1] == 1 else grid).numpy(),
        cmap="gray",
        vmin=0,
        vmax=1,
        interpolation="nearest",
    )
    ax.set_title(title)
    ax.axis("off")


def plot_image_panels(
    panels: list[tuple[str, Tensor]], nrow: int | None = None, size: float = 4, path: str | os.PathLike | None = None
) -> Figure:
    """Image grids side by side, one per ``(title, images)`` panel."""
    fig = Figure(figsize=(size * len(panels), size + 0.4))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (title, images) in zip(axes[0], panels):
        _show(ax, images, title, nrow)
    return finish(fig, path)


def plot_interpolations(frames: Tensor, title: str, path: str | os.PathLike | None = None) -> Figure:
    """Interpolation rows: ``frames [steps, B, C, H, W]`` -> B rows of ``steps`` images."""
    steps, b = frames.shape[:2]
    rows = frames.transpose(0, 1).reshape(steps * b, *frames.shape[2:])
    fig = Figure(figsize=(steps * 0.8, b * 0.8 + 0.4))
    ax = fig.subplots()
    _show(ax, rows, title, nrow=steps)
    return finish(fig, path)


def plot_latent_norms(norms: Tensor, dof: int, path: str | os.PathLike | None = None) -> Figure:
    """Histogram of the norms of standardised latents of test data (see
    `lgm.evaluate.standardized_latents`) against the chi density with ``dof`` degrees of freedom: the
    norms' distribution if the model were right."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    lo = min(norms.min().item(), math.sqrt(dof) - 4)
    hi = max(norms.max().item(), math.sqrt(dof) + 4)
    ax.hist(
        norms.numpy(),
        bins=torch.linspace(lo, hi, 60).numpy(),
        density=True,
        alpha=0.6,
        label=f"test data ({len(norms)})",
    )
    r = torch.linspace(max(lo, 1e-3), hi, 400)
    ax.plot(r.numpy(), chi_log_pdf(r, dof).exp().numpy(), "k-", label=f"under the model: chi, {dof} degrees of freedom")
    ax.set_xlabel("latent norm ||z||")
    ax.set_ylabel("density")
    ax.legend()
    return finish(fig, path)


def plot_scales(log_scale: Tensor, title: str, path: str | os.PathLike | None = None) -> Figure:
    """Per-dimension log-scales ``[H, W]`` (NICE's diagonal scaling ``z = exp(log_scale) * h``) as an image,
    and sorted, as a spectrum: a small scale leaves much of the data's variation in that latent."""
    fig = Figure(figsize=(10, 4))
    image_ax, sorted_ax = fig.subplots(1, 2)
    im = image_ax.imshow(log_scale.numpy(), cmap="viridis", interpolation="nearest")
    fig.colorbar(im, ax=image_ax, label="log scale")
    image_ax.set_title(title)
    image_ax.axis("off")
    sorted_ax.plot(log_scale.flatten().sort().values.numpy())
    sorted_ax.set_xlabel("dimension, sorted by scale")
    sorted_ax.set_ylabel("log scale")
    sorted_ax.grid(alpha=0.3)
    return finish(fig, path)


def plot_corruption(curves: dict, path: str | os.PathLike | None = None) -> Figure:
    """Bits/dim against the corruption level, one panel per kind (``{"noise": {"levels", "bits_per_dim"}, ...}``)."""
    labels = {"noise": "Gaussian noise sigma (of the [0, 1] range)", "occlusion": "occluded fraction (black square)"}
    fig = Figure(figsize=(5 * len(curves), 3.8))
    axes = fig.subplots(1, len(curves), squeeze=False)
    for ax, (kind, curve) in zip(axes[0], curves.items()):
        ax.plot(curve["levels"], curve["bits_per_dim"], "o-")
        ax.set_xlabel(labels.get(kind, kind))
        ax.set_ylabel("bits/dim")
        ax.grid(alpha=0.3)
    return finish(fig, path)
