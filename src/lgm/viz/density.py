"""Figures for 2-D densities: learned density beside the data (and the truth), samples over data.

Every ``plot_*`` function returns the matplotlib `Figure` and also saves it when given ``path``.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from matplotlib.figure import Figure
from torch import Tensor

from lgm.evaluate.density import Bounds, grid_log_prob
from lgm.viz.figures import finish


def plot_density_comparison(
    model_log_prob: Callable[[Tensor], Tensor],
    data: Tensor,
    bounds: Bounds,
    true_log_prob: Callable[[Tensor], Tensor] | None = None,
    resolution: int = 200,
    path: str | os.PathLike | None = None,
) -> Figure:
    """Heat maps side by side: a 2-D histogram of ``data``, the true density (if given), the model's."""
    panels: list[tuple[str, Tensor]] = []
    if true_log_prob is not None:
        panels.append(("true density", grid_log_prob(true_log_prob, bounds, resolution)[2].exp()))
    panels.append(("model density", grid_log_prob(model_log_prob, bounds, resolution)[2].exp()))
    extent = (*bounds[0], *bounds[1])
    fig = Figure(figsize=(4 * (1 + len(panels)), 4))
    axes = fig.subplots(1, 1 + len(panels), squeeze=False)[0]
    axes[0].hist2d(data[:, 0].numpy(), data[:, 1].numpy(), bins=resolution // 2, range=bounds, cmap="viridis")
    axes[0].set_title(f"data ({len(data)} points)")
    for ax, (title, density) in zip(axes[1:], panels):
        ax.imshow(density.numpy(), origin="lower", extent=extent, cmap="viridis", aspect="auto")
        ax.set_title(title)
    for ax in axes:
        ax.set_xlim(bounds[0])
        ax.set_ylim(bounds[1])
    return finish(fig, path)


def plot_samples(
    samples: Tensor, bounds: Bounds, data: Tensor | None = None, path: str | os.PathLike | None = None
) -> Figure:
    """A scatter plot of model ``samples``, over ``data`` if given."""
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    if data is not None:
        ax.scatter(data[:, 0].numpy(), data[:, 1].numpy(), s=2, alpha=0.3, color="tab:blue", label="data")
    ax.scatter(samples[:, 0].numpy(), samples[:, 1].numpy(), s=2, alpha=0.3, color="tab:orange", label="samples")
    ax.set_xlim(bounds[0])
    ax.set_ylim(bounds[1])
    ax.legend(markerscale=5, loc="upper right")
    ax.set_title("model samples over data" if data is not None else "model samples")
    return finish(fig, path)
