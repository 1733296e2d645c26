"""Mixed precision that keeps a flow exact: its networks may run in bfloat16, nothing else does.

A flow's networks (coupling networks, velocity fields) are unconstrained function approximators:
whatever they return, the flow stays invertible and its log-determinant exact, because the
log-determinant is computed from their output by the flow itself. So they can run in bfloat16 (on
hardware with bf16 matrix units, several times faster) while the flow's own maps (actnorm, 1x1
convolutions, squeezes, the affine update), its log-determinants, its prior and its loss stay in
float32. So the switch belongs to the flow, not to an autocast around the whole model (Lightning's
``precision="bf16-mixed"``, which `lgm.train.FlowModule` refuses in favour of this one), which would
reach the invertible 1x1 convolutions and the priors' convolutions too.

An enclosing ``torch.autocast`` changes nothing: the flow's maps that autocast would touch (the 1x1
convolution's matrix products, the split priors' convolution) switch it off with `full_precision`,
and the networks run at the precision the flow was given.

Precisions, by the names Lightning uses: ``"32"`` (everything float32) and ``"bf16-mixed"`` (the
networks under bf16 autocast, their outputs cast back to the data's dtype); ``"auto"`` resolves to
``"bf16-mixed"`` where the device has bf16 matrix units (`lgm.utils.hardware.has_bf16_units`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lgm.utils.hardware import has_bf16_units

NETWORK_PRECISIONS = ("32", "bf16-mixed")
NETWORK_PRECISION_CHOICES = ("auto", *NETWORK_PRECISIONS)  # what the switches accept
NETWORK_DTYPES = {"32": None, "bf16-mixed": torch.bfloat16}


def resolve_precision(precision: str, device: str | torch.device = "cpu") -> str:
    """``precision`` (one of `NETWORK_PRECISIONS` or ``"auto"``) as one of `NETWORK_PRECISIONS` for ``device``."""
    if precision == "auto":
        return "bf16-mixed" if has_bf16_units(device) else "32"
    if precision not in NETWORK_PRECISIONS:
        raise ValueError(f"unknown network precision {precision!r}; choose 'auto' or one of {list(NETWORK_PRECISIONS)}")
    return precision


def full_precision(x: Tensor) -> torch.autocast:
    """Autocast off, for a flow's own map of ``x`` (its inverse and log-det must keep the data's precision)."""
    return torch.autocast(x.device.type, enabled=False)


def run_network(net: nn.Module, dtype: torch.dtype | None, *inputs: Tensor, **kwargs) -> Tensor:
    """``net(*inputs, **kwargs)`` under autocast to ``dtype`` (``None``: autocast off, whatever encloses
    the call), returned in the dtype of the first input."""
    x = inputs[0]
    with torch.autocast(x.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        out = net(*inputs, **kwargs)
    return out.to(x.dtype)
