"""The ``check`` of a shipped model's card (`lgm.flow.zoo`): a quick, reproducible bits/dim of the
first test images, which the test suite re-scores for every shipped file."""

from __future__ import annotations

from typing import Any

import torch

from lgm.data.images import ImageArrays
from lgm.evaluate.diagnostics import mean_bits_per_dim
from lgm.flow.base import Flow


def card_check(
    flow: Flow,
    arrays: ImageArrays,
    images: int,
    seed: int = 0,
    likelihood_solver: str | None = None,
    likelihood_steps: int | None = None,
) -> dict[str, Any]:
    """Bits/dim of ``flow`` on the first ``images`` test images of ``arrays`` (conditional on their labels
    for a class-conditional flow), networks in float32, dequantisation noise (and a continuous flow's
    divergence probes) seeded with ``seed``; a continuous flow integrates with ``likelihood_solver`` x
    ``likelihood_steps``. Returns the card's ``check`` entry: these settings, ``value`` and ``stderr``."""
    x = arrays.x_test[:images]
    labels = arrays.y_test[:images] if flow.n_classes else None
    if flow.capabilities.solver:
        flow.use_likelihood_solver(likelihood_solver, likelihood_steps)
    flow.use_network_precision("32")
    torch.manual_seed(seed)
    with torch.no_grad():
        value, stderr = mean_bits_per_dim(flow, x, labels)
    check: dict[str, Any] = {"metric": "bpd", "split": "test", "images": images, "seed": seed}
    if likelihood := flow.likelihood_info():
        check["likelihood"] = likelihood
    return check | {"value": round(value, 4), "stderr": round(stderr, 4)}
