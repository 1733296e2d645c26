"""Figures for image flows: sample grids, real vs generated, interpolations, latent norms, scales, corruption.

Images are tensors ``[N, C, H, W]``, uint8 in 0..255 or floats in [0, 1].
"""

from __future__ import annotations

import math
import os

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402


def grid_image(images: Tensor, nrow: int | None = None) -> Tensor:
    """A grid ``[H, W, C]`` (floats in [0, 1], ready for ``imshow``) of images ``[N, C, H, W]``."""
    x = images.float() / 255 if not images.is_floating_point() else images.float()
    nrow = nrow or max(1, round(math.sqrt(len(x))))
    return make_grid(x, nrow=nrow, padding=1, pad_value=0.5).permute(1, 2, 0)


def _show(ax, images: Tensor, title: str, nrow: int | None = None) -> None:
    grid = grid_image(images, nrow)
    ax.imshow((grid.squeeze(-1) if grid.shape[-1] == 1 else grid).numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title)
    ax.axis("off")


def plot_image_panels(path: str | os.PathLike, panels: list[tuple[str, Tensor]], nrow: int | None = None, size: float = 4) -> None:
    """Save image grids side by side, one per ``(title, images)`` panel."""
    fig, axes = plt.subplots(1, len(panels), figsize=(size * len(panels), size + 0.4), squeeze=False)
    for ax, (title, images) in zip(axes[0], panels):
        _show(ax, images, title, nrow)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_interpolations(path: str | os.PathLike, frames: Tensor, title: str) -> None:
    """Save interpolation rows: ``frames [steps, B, C, H, W]`` -> B rows of ``steps`` images."""
    steps, b = frames.shape[:2]
    rows = frames.transpose(0, 1).reshape(steps * b, *frames.shape[2:])
    fig, ax = plt.subplots(figsize=(steps * 0.8, b * 0.8 + 0.4))
    _show(ax, rows, title, nrow=steps)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_latent_norms(path: str | os.PathLike, norms: Tensor, dof: int, reference: Tensor | None = None, log_pdf=None) -> None:
    """Histogram of latent norms of test data against the prior's: the chi density ``log_pdf`` or prior samples."""
    fig, ax = plt.subplots(figsize=(6, 4))
    lo = min(norms.min().item(), reference.min().item() if reference is not None else math.sqrt(dof) - 4)
    hi = max(norms.max().item(), reference.max().item() if reference is not None else math.sqrt(dof) + 4)
    bins = torch.linspace(lo, hi, 60).numpy()
    ax.hist(norms.numpy(), bins=bins, density=True, alpha=0.6, label=f"test data ({len(norms)})")
    if reference is not None:
        ax.hist(reference.numpy(), bins=bins, density=True, alpha=0.5, label=f"prior samples ({len(reference)})")
    if log_pdf is not None:
        r = torch.linspace(max(lo, 1e-3), hi, 400)
        ax.plot(r.numpy(), log_pdf(r).exp().numpy(), "k-", label=f"prior: chi, {dof} degrees of freedom")
    ax.set_xlabel("latent norm ||z||")
    ax.set_ylabel("density")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_scales(path: str | os.PathLike, log_scale: Tensor, title: str) -> None:
    """Show per-dimension log-scales ``[H, W]`` (NICE's diagonal scaling) as an image with a colour bar."""
    fig, ax = plt.subplots(figsize=(5, 4.4))
    im = ax.imshow(log_scale.numpy(), cmap="viridis", interpolation="nearest")
    fig.colorbar(im, ax=ax, label="log scale")
    ax.set_title(title)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_corruption(path: str | os.PathLike, curves: dict) -> None:
    """Bits/dim against the corruption level, one panel per kind (``{"noise": {"levels", "bits_per_dim"}, ...}``)."""
    labels = {"noise": "Gaussian noise sigma (of the [0, 1] range)", "occlusion": "occluded fraction (black square)"}
    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.8), squeeze=False)
    for ax, (kind, curve) in zip(axes[0], curves.items()):
        ax.plot(curve["levels"], curve["bits_per_dim"], "o-")
        ax.set_xlabel(labels.get(kind, kind))
        ax.set_ylabel("bits/dim")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
