"""Sanity checks that a flow is what it claims: an exact bijection with the right log-determinant.

Run them before training (a freshly built model must already pass) and after loading a model:
``check_invertible(flow, x)`` returns the round-trip error and the log-det error against the
brute-force autograd Jacobian; both must be near zero, whatever the weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from lgm.flow.base import Flow

Bijection = Callable[[Tensor], tuple[Tensor, Tensor]]


def jacobian_logdet(transform: Bijection, x: Tensor) -> Tensor:
    """``log|det dz/dx|`` per sample ``[B]`` from the full autograd Jacobian of ``transform``, any map
    ``x -> (z, logdet)`` such as a `lgm.flow.Transform`.

    Costs one ``D x D`` Jacobian per sample (``D`` = values per sample): meant for small inputs.
    """
    logdets = []
    for xi in x:

        def forward(v: Tensor, shape=xi.shape) -> Tensor:
            return transform(v.reshape(1, *shape))[0].reshape(-1)

        jacobian = torch.autograd.functional.jacobian(forward, xi.reshape(-1))
        logdets.append(torch.linalg.slogdet(jacobian).logabsdet)
    return torch.stack(logdets)


@dataclass(frozen=True)
class InvertibilityReport:
    """Largest errors found by `check_invertible` (in the units of the data and of nats)."""

    roundtrip_error: float
    logdet_error: float

    def ok(self, roundtrip_tol: float = 1e-4, logdet_tol: float = 1e-3) -> bool:
        return self.roundtrip_error <= roundtrip_tol and self.logdet_error <= logdet_tol


def latents_and_logdet(flow: Flow, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The flow's whole bijection: data ``x`` -> its latent, every level flattened and concatenated
    ``[B, D]``, and ``log|det|`` ``[B]`` (the priors excluded). Only for flows with an exact inverse."""
    if not flow.capabilities.exact_inverse:
        raise ValueError(
            f"{type(flow).__name__} is invertible only up to its ODE solver's error and has no closed-form "
            "log-det to check: compare decode(encode(x)) with x as the solver's steps grow instead"
        )
    latent, logdet = flow.bijection(x, labels)
    return latent.flatten(), logdet


def check_invertible(flow: Flow, x: Tensor, n_jacobian: int = 8, labels: Tensor | None = None) -> InvertibilityReport:
    """Check ``flow`` on data ``x`` (``[B, *flow.shape]`` in its data space, with ``labels`` ``[B]`` for
    families whose bijection depends on the class).

    ``roundtrip_error = max |inverse(forward(x)) - x|`` over all of ``x`` (through every latent of a
    multi-scale flow); ``logdet_error = max |logdet - log|det J||`` over the first ``n_jacobian``
    samples, with ``J`` the autograd Jacobian of the flow's bijection (`latents_and_logdet`).
    Data-dependent layers (actnorm) must be initialised first (``flow.initialize(x)``).
    """
    flow.check_input(x)
    with torch.no_grad():
        roundtrip = (flow.decode(flow.encode(x, labels), labels) - x).abs().max().item()
        logdet = latents_and_logdet(flow, x[:n_jacobian], _rows(labels, slice(0, n_jacobian)))[1]
    brute = torch.cat(
        [
            jacobian_logdet(lambda v, i=i: latents_and_logdet(flow, v, _rows(labels, i)), x[i : i + 1])
            for i in range(min(n_jacobian, len(x)))
        ]
    )
    return InvertibilityReport(roundtrip, (brute - logdet).abs().max().item())


def _rows(labels: Tensor | None, rows: int | slice) -> Tensor | None:
    """``labels[rows]`` as a batch (``None`` stays ``None``)."""
    if labels is None:
        return None
    return labels[rows : rows + 1] if isinstance(rows, int) else labels[rows]
