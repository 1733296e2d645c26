"""Coupling layers on flat vectors, and the partitions that split a vector into two parts.

A coupling layer splits ``x`` into ``(x_a, x_b)``, keeps ``x_a`` and changes ``x_b`` by a function
of ``x_a`` only. Whatever that function is, the map is invertible and its Jacobian is triangular.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lgm.flow.base import Transform

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


class AdditiveCoupling(Transform):
    """NICE's additive coupling (Dinh et al. 2014, eq. 5): ``z_b = x_b + m(x_a)``, ``z_a = x_a``.

    Volume preserving: ``logdet = 0`` exactly. Input and output ``[B, dim]``.

    Args:
        dim: number of features (even).
        net: ``[B, dim/2] -> [B, dim/2]``, any network (see `lgm.flow.nets.mlp`).
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

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        kept, changed = self._parts(x)
        return self._join(kept, changed + self.net(kept)), x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor) -> Tensor:
        kept, changed = self._parts(z)
        return self._join(kept, changed - self.net(kept))
