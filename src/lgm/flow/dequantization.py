"""Variational dequantisation (Flow++, Ho et al. 2019): a learned noise distribution ``q(u | x)``.

Uniform dequantisation (`lgm.flow.discrete.dequantize`) bounds the discrete likelihood with
``u ~ U[0, 1)^D``. Any density ``q(u | x)`` on the unit cube gives a bound too, and a tighter one
the closer ``q`` is to the flow's own density inside each pixel's bin:

    log P(x) >= E_{u ~ q}[ log p((x + u) / 2**n_bits) - log q(u | x) ] - D n_bits ln 2,

equal to the uniform bound when ``q`` is uniform (``log q = 0``), and trained jointly with the flow
by minimising the same bound (`lgm.flow.Flow.bits_per_dim`). Here ``u = sigmoid(v)``, ``v`` a
conditional flow of standard logistic noise ``eps`` given the image: ``steps`` checkerboard affine
couplings whose networks see a context computed from ``x`` once, their last layers zero-initialised. So
``log q(u | x) = log Logistic(eps) - log|det dv/deps| - sum log sigmoid'(v)``, and at initialisation
``v = eps``, ``u = sigmoid(eps)`` is uniform and ``log q = 0``: training starts from uniform dequantisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lgm.flow.coupling import checkerboard
from lgm.flow.nets import ZeroConv2d
from lgm.flow.scales import get_scale_map


class VariationalDequantizer(nn.Module):
    """``q(u | x)`` for images of ``shape = (C, H, W)``: ``forward(x) -> (u, log_q)``.

    Args:
        shape: the image shape.
        width: channels of the context network and of each coupling's network (small next to the
            flow's own networks: q only shapes the noise inside each pixel's bin).
        steps: affine couplings, alternating the checkerboard's parity.
    """

    def __init__(self, shape: tuple[int, ...], width: int = 16, steps: int = 4) -> None:
        super().__init__()
        if len(shape) != 3:
            raise ValueError(f"variational dequantisation is for images (C, H, W), got shape {tuple(shape)}")
        if steps < 1 or width < 1:
            raise ValueError(f"steps and width must be at least 1, got {steps} and {width}")
        c = shape[0]
        self.shape = tuple(shape)
        self.scale_map = get_scale_map("sigmoid2")  # 2 sigmoid(h): bounded, and 1 at the networks' initial h = 0
        self.context = nn.Sequential(
            nn.Conv2d(c, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU()
        )
        self.nets = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c + width, width, 3, padding=1), nn.ReLU(), ZeroConv2d(width, 2 * c))
            for _ in range(steps)
        )

    def forward(self, x: Tensor, n_bits: int) -> tuple[Tensor, Tensor]:
        """Noise ``u ~ q(u | x)`` in ``(0, 1)`` ``[B, C, H, W]`` for ``n_bits``-bit integer images ``x``
        (as floats), and ``log q(u | x)`` ``[B]`` in nats."""
        # Standard logistic noise, logit(r) for uniform r (kept off 0 and 1, where the logit is infinite).
        r = torch.rand(x.shape, device=x.device, dtype=x.dtype).clamp_(1e-7, 1 - 1e-7)
        return self.transform(torch.log(r) - torch.log1p(-r), x, n_bits)

    def transform(self, eps: Tensor, x: Tensor, n_bits: int) -> tuple[Tensor, Tensor]:
        """The map ``eps -> u`` given ``x`` and ``log q(u | x)`` of its output (``forward`` draws ``eps``)."""
        context = self.context((x + 0.5) / 2**n_bits - 0.5)
        log_q = (F.logsigmoid(eps) + F.logsigmoid(-eps)).flatten(1).sum(1)  # the standard logistic density
        v = eps
        for parity, net in enumerate(self.nets):
            mask = checkerboard(x.shape[2], x.shape[3], parity % 2).to(x)
            h, shift = net(torch.cat((v * mask, context), dim=1)).chunk(2, dim=1)
            log_s = self.scale_map.log_scale(h)
            v = v * mask + (1 - mask) * (v * log_s.exp() + shift)
            log_q = log_q - ((1 - mask) * log_s).flatten(1).sum(1)
        # u = sigmoid(v): log du/dv = log sigmoid(v) + log sigmoid(-v).
        log_q = log_q - (F.logsigmoid(v) + F.logsigmoid(-v)).flatten(1).sum(1)
        return torch.sigmoid(v), log_q
