"""Element-wise layers with learned parameters."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lgm.flow.base import Transform
from lgm.flow.scales import get_scale_map


class DiagonalScaling(Transform):
    """NICE's diagonal scaling layer (Dinh et al. 2014, sec. 3.3): ``z = s(h) * x``, element-wise.

    Additive couplings preserve volume; this last layer lets the flow stretch or shrink each latent
    dimension. ``s = positivity map(h)`` with ``h`` a learned ``[dim]`` vector;
    ``logdet = sum_i log s(h_i)``, the same for every sample. Input and output ``[B, dim]``.

    Args:
        dim: number of features.
        scale: name of the positivity map (see `lgm.flow.scales`): ``"exp"`` as in the paper,
            or ``"softplus"``, ``"sigmoid"``, ``"sigmoid2"``, ``"softclamp"``.
    """

    def __init__(self, dim: int, scale: str = "exp") -> None:
        super().__init__()
        self.scale_map = get_scale_map(scale)
        start = self.scale_map.identity_at if self.scale_map.identity_at is not None else 0.0
        self.h = nn.Parameter(torch.full((dim,), start))

    def log_scale(self) -> Tensor:
        """``log s(h)``, shape ``[dim]``: the per-dimension log-scale (NICE's dimension importance)."""
        return self.scale_map.log_scale(self.h)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        log_s = self.log_scale()
        return x * log_s.exp(), log_s.sum().expand(x.shape[0])

    def inverse(self, z: Tensor) -> Tensor:
        return z * (-self.log_scale()).exp()
