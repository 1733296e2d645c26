"""Figures for 2-D densities: learned density beside the data (and the truth), samples over data."""

from __future__ import annotations

import os
from typing import Callable

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
from torch import Tensor  # noqa: E402

from lgm.evaluate.density import Bounds, grid_log_prob  # noqa: E402


def plot_density_comparison(
    path: str | os.PathLike,
    model_log_prob: Callable[[Tensor], Tensor],
    data: Tensor,
    bounds: Bounds,
    true_log_prob: Callable[[Tensor], Tensor] | None = None,
    resolution: int = 200,
) -> None:
    """Save heat maps side by side: a 2-D histogram of ``data``, the true density (if given), the model's."""
    panels: list[tuple[str, Tensor]] = []
    if true_log_prob is not None:
        panels.append(("true density", grid_log_prob(true_log_prob, bounds, resolution)[2].exp()))
    panels.append(("model density", grid_log_prob(model_log_prob, bounds, resolution)[2].exp()))
    extent = (*bounds[0], *bounds[1])
    fig, axes = plt.subplots(1, 1 + len(panels), figsize=(4 * (1 + len(panels)), 4), squeeze=False)
    axes = axes[0]
    axes[0].hist2d(data[:, 0].numpy(), data[:, 1].numpy(), bins=resolution // 2, range=bounds, cmap="viridis")
    axes[0].set_title(f"data ({len(data)} points)")
    for ax, (title, density) in zip(axes[1:], panels):
        ax.imshow(density.numpy(), origin="lower", extent=extent, cmap="viridis", aspect="auto")
        ax.set_title(title)
    for ax in axes:
        ax.set_xlim(bounds[0])
        ax.set_ylim(bounds[1])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_samples(path: str | os.PathLike, samples: Tensor, bounds: Bounds, data: Tensor | None = None) -> None:
    """Save a scatter plot of model ``samples``, over ``data`` if given."""
    fig, ax = plt.subplots(figsize=(5, 5))
    if data is not None:
        ax.scatter(data[:, 0].numpy(), data[:, 1].numpy(), s=2, alpha=0.3, color="tab:blue", label="data")
    ax.scatter(samples[:, 0].numpy(), samples[:, 1].numpy(), s=2, alpha=0.3, color="tab:orange", label="samples")
    ax.set_xlim(bounds[0])
    ax.set_ylim(bounds[1])
    ax.legend(markerscale=5, loc="upper right")
    ax.set_title("model samples over data" if data is not None else "model samples")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
