"""Density diagnostics for 2-D models: values on a grid, their integral, and KL to a known truth."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

Bounds = tuple[tuple[float, float], tuple[float, float]]


@torch.no_grad()
def grid_log_prob(
    log_prob: Callable[[Tensor], Tensor], bounds: Bounds, resolution: int = 200, batch_size: int = 65_536
) -> tuple[Tensor, Tensor, Tensor]:
    """Evaluate a 2-D ``log_prob`` at the centres of a ``resolution x resolution`` grid of cells.

    Returns ``(xs [R], ys [R], logp [R, R])`` with ``logp[i, j] = log_prob((xs[j], ys[i]))`` (row =
    y, column = x, as `matplotlib.pyplot.imshow` expects).
    """
    (x0, x1), (y0, y1) = bounds
    xs = x0 + (torch.arange(resolution, dtype=torch.float64) + 0.5) * (x1 - x0) / resolution
    ys = y0 + (torch.arange(resolution, dtype=torch.float64) + 0.5) * (y1 - y0) / resolution
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    points = torch.stack((xx.reshape(-1), yy.reshape(-1)), dim=1)
    values = [log_prob(chunk.float()).double() for chunk in points.split(batch_size)]
    return xs, ys, torch.cat(values).reshape(resolution, resolution)


def integrate_density(log_prob: Callable[[Tensor], Tensor], bounds: Bounds, resolution: int = 400) -> float:
    """The midpoint-rule integral of ``exp(log_prob)`` over ``bounds``: ~1 for a normalised density."""
    (x0, x1), (y0, y1) = bounds
    _, _, logp = grid_log_prob(log_prob, bounds, resolution)
    cell_area = (x1 - x0) * (y1 - y0) / resolution**2
    return float(logp.exp().sum() * cell_area)


@torch.no_grad()
def kl_to_truth(
    model_log_prob: Callable[[Tensor], Tensor],
    true_log_prob: Callable[[Tensor], Tensor],
    samples: Tensor,
    batch_size: int = 65_536,
) -> tuple[float, float]:
    """Monte-Carlo ``KL(true || model) = E_true[log p_true(x) - log p_model(x)]`` on true ``samples``.

    Returns ``(kl, standard_error)`` in nats.
    """
    chunks = samples.split(batch_size)
    return kl_from_log_probs(
        torch.cat([true_log_prob(x) for x in chunks]), torch.cat([model_log_prob(x) for x in chunks])
    )


def kl_from_log_probs(true_log_probs: Tensor, model_log_probs: Tensor) -> tuple[float, float]:
    """``(KL(true || model), standard error)`` in nats from both log-densities ``[N]`` at N true samples."""
    gaps = true_log_probs.double() - model_log_probs.double()
    return float(gaps.mean()), float(gaps.std() / math.sqrt(len(gaps)))
