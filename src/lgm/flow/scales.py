"""Positivity maps for scales: an unconstrained ``h`` -> a scale ``s(h) > 0``, as ``log s(h)``.

Scaling layers and affine couplings multiply by ``s(h)``; their log-determinant is a sum of
``log s(h)``. Each map is written directly in log space so that the log-det is exact and stable
(``log(sigmoid(h))`` as ``logsigmoid(h)``, never as ``log`` of a rounded-to-zero sigmoid). Inverses
divide by ``s(h)`` and need no log-det, so each map also gives ``1 / s(h)`` directly
(``1 + exp(-h - 2)`` for the sigmoid: one ``exp`` where ``exp(-logsigmoid)`` takes three passes).

Why more than ``exp``: ``exp`` is unbounded, so one large ``h`` can blow a layer up and training
to NaN. The bounded or slower-growing maps trade a little expressiveness for stability.

============== ======================== ======================= ==============================
name           s(h)                     range                   h giving s = 1
============== ======================== ======================= ==============================
exp            exp(h)                   (0, inf)                0
softplus       log(1 + exp(h))          (0, inf), linear growth log(e - 1)
sigmoid        sigmoid(h + 2)           (0, 1)                  none (s(0) = 0.88; openai/glow)
sigmoid2       2 sigmoid(h)             (0, 2)                  0
softclamp      exp(c tanh(h / c)), c=3  (e^-3, e^3)             0
============== ======================== ======================= ==============================
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

SOFTCLAMP_BOUND = 3.0


def _log_softplus(h: Tensor) -> Tensor:
    # For very negative h, softplus(h) = exp(h) underflows; log(softplus(h)) -> h there.
    return torch.where(h < -20, h, torch.log(F.softplus(h)))


@dataclass(frozen=True)
class ScaleMap:
    """A named positivity map: ``log_scale(h) = log s(h)``, ``reciprocal_scale(h) = 1 / s(h)`` and the
    ``h`` where ``s = 1`` (if any)."""

    name: str
    log_scale: Callable[[Tensor], Tensor]
    reciprocal_scale: Callable[[Tensor], Tensor]
    identity_at: float | None


SCALE_MAPS = {
    m.name: m
    for m in (
        ScaleMap("exp", lambda h: h, lambda h: (-h).exp(), 0.0),
        ScaleMap("softplus", _log_softplus, lambda h: (-_log_softplus(h)).exp(), math.log(math.e - 1)),
        ScaleMap("sigmoid", lambda h: F.logsigmoid(h + 2.0), lambda h: 1.0 + (-2.0 - h).exp(), None),
        ScaleMap("sigmoid2", lambda h: math.log(2.0) + F.logsigmoid(h), lambda h: 0.5 + 0.5 * (-h).exp(), 0.0),
        ScaleMap(
            "softclamp",
            lambda h: SOFTCLAMP_BOUND * torch.tanh(h / SOFTCLAMP_BOUND),
            lambda h: (-SOFTCLAMP_BOUND * torch.tanh(h / SOFTCLAMP_BOUND)).exp(),
            0.0,
        ),
    )
}


def get_scale_map(name: str) -> ScaleMap:
    """Look a positivity map up by name; an unknown name raises a `ValueError` listing the choices."""
    try:
        return SCALE_MAPS[name]
    except KeyError:
        raise ValueError(f"unknown scale function {name!r}; choose one of {sorted(SCALE_MAPS)}") from None
