"""Coupling layers: additive on flat vectors (NICE, with its partitions), affine on images (RealNVP, Glow).

A coupling layer splits ``x`` into ``(x_a, x_b)``, keeps ``x_a`` and changes ``x_b`` by a function
of ``x_a`` only. Whatever that function is, the map is invertible and its Jacobian is triangular.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lgm.flow.base import NetworkTransform
from lgm.flow.scales import get_scale_map

PARTITIONS = ("even_odd", "halves")


def split(x: Tensor, partition: str) -> tuple[Tensor, Tensor]:
    """Split ``[B, D]`` (D even) into two ``[B, D/2]`` parts: even/odd indices, or first/second half."""
    if partition == "even_odd":
        return x[:, 0::2], x[:, 1::2]
    return x[:, : x.shape[1] // 2], x[:, x.shape[1] // 2 :]


def merge(a: Tensor, b: Tensor, partition: str) -> Tensor:
    """Inverse of `split`: ``merge(*split(x, p), p) == x``."""
    if partition == "even_odd":
        return torch.stack((a, b), dim=2).reshape(a.shape[0], -1)
    return torch.cat((a, b), dim=1)


def check_partition(dim: int, partition: str) -> None:
    """Raise a `ValueError` unless ``partition`` is known and ``dim`` splits into equal parts."""
    if partition not in PARTITIONS:
        raise ValueError(f"unknown partition {partition!r}; choose one of {list(PARTITIONS)}")
    if dim % 2 != 0 or dim < 2:
        raise ValueError(
            f"a coupling layer splits the input into two equal parts, so its dimension must be even; "
            f"got {dim}. Pad the data with one extra dimension (e.g. constant noise) to use it."
        )


MASKS = ("channel", "checkerboard")


class VectorCoupling(NetworkTransform):
    """The part of a coupling on flat vectors ``[B, dim]`` that decides which half is kept and which changed.

    Args:
        dim: number of features (even).
        net: the coupling network, fed the kept half ``[B, dim/2]`` (see `lgm.flow.nets.mlp`).
        partition: ``"even_odd"`` (NICE's MNIST choice) or ``"halves"``.
        change: which part is changed, ``"first"`` or ``"second"``; alternate it between layers so
            that every dimension gets changed.
    """

    def __init__(self, dim: int, net: nn.Module, partition: str = "even_odd", change: str = "second") -> None:
        super().__init__()
        check_partition(dim, partition)
        if change not in ("first", "second"):
            raise ValueError(f"change must be 'first' or 'second', got {change!r}")
        self.net = net
        self.partition = partition
        self.change = change

    def _parts(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(kept, changed)``."""
        first, second = split(x, self.partition)
        return (second, first) if self.change == "first" else (first, second)

    def _join(self, kept: Tensor, changed: Tensor) -> Tensor:
        if self.change == "first":
            return merge(changed, kept, self.partition)
        return merge(kept, changed, self.partition)


class AdditiveVectorCoupling(VectorCoupling):
    """NICE's additive coupling (Dinh et al. 2014, eq. 5): ``z_b = x_b + m(x_a)``, ``z_a = x_a``.

    Volume preserving: ``logdet = 0`` exactly. Input and output ``[B, dim]``; ``net`` maps
    ``[B, dim/2] -> [B, dim/2]``. Arguments as `VectorCoupling`.
    """

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        kept, changed = self._parts(x)
        return self._join(kept, changed + self.run_net(kept)), x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor) -> Tensor:
        kept, changed = self._parts(z)
        return self._join(kept, changed - self.run_net(kept))


class AffineVectorCoupling(VectorCoupling):
    """RealNVP's affine coupling on flat vectors: ``z_b = x_b * s + t``, ``z_a = x_a``, with
    ``(h, t) = net(x_a)`` and ``s = positivity map(h)``; ``logdet = sum of log s``.

    Input and output ``[B, dim]``; ``net`` maps ``[B, dim/2] -> [B, dim]`` (``h`` then ``t``).
    ``scale``: positivity map, see `lgm.flow.scales`. Other arguments as `VectorCoupling`.
    """

    def __init__(
        self, dim: int, net: nn.Module, partition: str = "halves", change: str = "second", scale: str = "softclamp"
    ) -> None:
        super().__init__(dim, net, partition, change)
        self.scale_map = get_scale_map(scale)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        kept, changed = self._parts(x)
        h, shift = self.run_net(kept).chunk(2, dim=1)
        log_s = self.scale_map.log_scale(h)
        return self._join(kept, changed * log_s.exp() + shift), log_s.sum(1)

    def inverse(self, z: Tensor) -> Tensor:
        kept, changed = self._parts(z)
        h, shift = self.run_net(kept).chunk(2, dim=1)
        return self._join(kept, (changed - shift) * self.scale_map.reciprocal_scale(h))


def checkerboard(height: int, width: int, parity: int) -> Tensor:
    """``[1, 1, H, W]`` mask, 1 where ``(h + w + parity)`` is even: the pixels a coupling keeps."""
    grid = torch.arange(height)[:, None] + torch.arange(width)[None, :] + parity
    return (grid % 2 == 0).float()[None, None]


class ImageCoupling(NetworkTransform):
    """Coupling on images (RealNVP, Glow): affine, ``z_b = x_b * s + t``, ``z_a = x_a``, with
    ``(h, t) = net(x_a)`` and ``s = positivity map(h)``, ``logdet = sum over x_b of log s``; or,
    with ``affine=False``, additive, ``z_b = x_b + t`` (Glow's additive coupling, ``logdet = 0``).

    Input and output ``[B, C, H, W]``.

    Args:
        channels: ``C``.
        net_builder: ``(in_channels, out_channels) -> network``; e.g. ``lgm.flow.nets.glow_net``.
        mask: ``"channel"`` (``x_a`` = one half of the channels; C even) or ``"checkerboard"``
            (``x_a`` = the pixels where ``h + w + parity`` is even; any C).
        parity: 0 or 1, which half is kept; alternate it between layers.
        scale: positivity map (see `lgm.flow.scales`): ``"exp"`` (RealNVP), ``"sigmoid"``
            (``sigmoid(h + 2)``, openai/glow), ``"softplus"``, ``"softclamp"``, ``"sigmoid2"``.
        affine: ``False`` gives the additive coupling ``z_b = x_b + t`` (volume preserving).
    """

    def __init__(
        self,
        channels: int,
        net_builder,
        mask: str = "channel",
        parity: int = 0,
        scale: str = "sigmoid",
        affine: bool = True,
    ) -> None:
        super().__init__()
        if mask not in MASKS:
            raise ValueError(f"unknown coupling mask {mask!r}; choose one of {list(MASKS)}")
        if mask == "channel" and channels % 2:
            raise ValueError(f"a channel-wise coupling halves the channels, so it needs an even count; got {channels}")
        self.mask, self.parity, self.affine = mask, parity, affine
        self.scale_map = get_scale_map(scale)
        kept = channels // 2 if mask == "channel" else channels
        changed = channels - kept if mask == "channel" else channels
        self.net = net_builder(kept, changed * (2 if affine else 1))

    def _shift_and_h(self, kept: Tensor) -> tuple[Tensor, Tensor | None]:
        """The network's shift and (affine only) the unconstrained ``h`` of the scale ``s(h)``."""
        out = self.run_net(kept)
        if not self.affine:
            return out, None
        h, shift = out.chunk(2, dim=1)
        return shift, h

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.mask == "channel":
            a, b = self._halves(x)
            shift, h = self._shift_and_h(a)
            if h is None:
                return self._join(a, b + shift), x.new_zeros(x.shape[0])
            log_s = self.scale_map.log_scale(h)
            return self._join(a, b * log_s.exp() + shift), log_s.flatten(1).sum(1)
        m = checkerboard(x.shape[2], x.shape[3], self.parity).to(x)
        shift, h = self._shift_and_h(x * m)
        if h is None:
            return x * m + (1 - m) * (x + shift), x.new_zeros(x.shape[0])
        log_s = self.scale_map.log_scale(h)
        return x * m + (1 - m) * (x * log_s.exp() + shift), ((1 - m) * log_s).flatten(1).sum(1)

    def inverse(self, z: Tensor) -> Tensor:
        if self.mask == "channel":
            a, b = self._halves(z)
            shift, h = self._shift_and_h(a)
            b = (b - shift) * self.scale_map.reciprocal_scale(h) if h is not None else b - shift
            return self._join(a, b)
        m = checkerboard(z.shape[2], z.shape[3], self.parity).to(z)
        shift, h = self._shift_and_h(z * m)
        changed = (z - shift) * self.scale_map.reciprocal_scale(h) if h is not None else z - shift
        return z * m + (1 - m) * changed

    def _halves(self, x: Tensor) -> tuple[Tensor, Tensor]:
        first, second = x.chunk(2, dim=1)
        return (second, first) if self.parity else (first, second)

    def _join(self, kept: Tensor, changed: Tensor) -> Tensor:
        return torch.cat((changed, kept) if self.parity else (kept, changed), dim=1)
