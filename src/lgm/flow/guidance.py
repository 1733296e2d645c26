"""Guidance: sampling a model pushed away from a weaker one.

A guided prediction (a velocity, an autoregressive block's shift and log-scale) is

    theta_s = theta_weak + s (theta - theta_weak),

so the scale ``s = 1`` is the model itself (no guidance), ``s = 0`` is the weak model, and ``s > 1``
moves past the model, away from the weak one. For a class-conditional model trained with label
dropout (each training label replaced by "no class" with probability ``label_dropout``), the weak
model is the same network without a class: classifier-free guidance (Ho & Salimans 2022), where
``s = 0`` samples the unconditional model and ``s = 1`` the conditional one. TarFlow's paper writes
the same rule with ``w = s - 1``. Guided samples have no tractable density: ``log_prob`` is always
the unguided model's.
"""

from __future__ import annotations

import math
import numbers

from torch import Tensor

NO_GUIDANCE = 1.0


def check_guidance_scale(scale: float) -> float:
    """``scale`` as a float; a `ValueError` unless it is a finite number >= 0."""
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not (scale >= 0 and math.isfinite(scale)):
        raise ValueError(f"the guidance scale must be a finite number >= 0 (1: none), got {scale!r}")
    return float(scale)


def check_label_dropout(label_dropout: float) -> None:
    """A `ValueError` unless ``0 <= label_dropout < 1``."""
    if not (isinstance(label_dropout, numbers.Real) and 0 <= label_dropout < 1):
        raise ValueError(f"label_dropout must be in [0, 1), got {label_dropout!r}")


def guide(strong: Tensor, weak: Tensor, scale: float) -> Tensor:
    """``weak + scale * (strong - weak)``; exactly ``strong`` at scale 1 and ``weak`` at scale 0."""
    return strong if scale == NO_GUIDANCE else weak + scale * (strong - weak)
