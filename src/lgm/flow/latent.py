"""The latent of a batch, one type for every model family, and what a model declares it can do."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True, init=False)
class Latent:
    """The latent of a batch of ``B`` samples: one tensor ``[B, *shape_i]`` per level.

    Single-scale flows (NICE, flow matching) have one level. Multi-scale flows (RealNVP, Glow) have
    one per scale, the finest (factored out first) first and the top level last, so ``levels[:k]``
    are the ``k`` finest. ``encode`` returns a `Latent`, ``decode`` takes one; it unpacks like a
    tuple (``z_fine, z_top = model.encode(x)``).
    """

    levels: tuple[Tensor, ...]

    def __init__(self, levels: Tensor | Sequence[Tensor]) -> None:
        levels = (levels,) if isinstance(levels, Tensor) else tuple(levels)
        if not levels or not all(isinstance(z, Tensor) and z.dim() >= 1 for z in levels):
            raise ValueError("a Latent needs one or more tensors with a batch dimension")
        if len({z.shape[0] for z in levels}) != 1:
            raise ValueError(
                f"every level of a Latent needs the same batch size, got shapes {[list(z.shape) for z in levels]}"
            )
        object.__setattr__(self, "levels", levels)

    @property
    def batch_size(self) -> int:
        return self.levels[0].shape[0]

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        """The shape of one sample's latent at each level."""
        return [tuple(z.shape[1:]) for z in self.levels]

    def flatten(self) -> Tensor:
        """Every level flattened and concatenated, finest first: ``[B, D]``."""
        return torch.cat([z.flatten(1) for z in self.levels], dim=1)

    def lerp(self, end: Latent, weight: float, levels: int | None = None) -> Latent:
        """The point ``weight`` of the way from this latent to ``end`` on the ``levels`` finest levels
        (all of them when ``None``); the other levels stay as in this latent."""
        k = len(self.levels) if levels is None else levels
        if not 0 <= k <= len(self.levels):
            raise ValueError(f"levels must be between 0 and {len(self.levels)}, got {levels}")
        return Latent([a + weight * (b - a) if i < k else a for i, (a, b) in enumerate(zip(self.levels, end.levels))])

    def __len__(self) -> int:
        return len(self.levels)

    def __iter__(self) -> Iterator[Tensor]:
        return iter(self.levels)

    def __getitem__(self, i: int) -> Tensor:
        return self.levels[i]


@dataclass(frozen=True)
class Capabilities:
    """What a model can do, for callers (training, evaluation, figures, the CLI) to ask instead of
    testing its class.

    Attributes:
        exact_inverse: ``decode(encode(x)) == x`` to float precision and ``bijection`` gives the exact
            log-determinant (coupling flows); ``False``: only up to an ODE solver's error (continuous flows).
        exact_likelihood: ``log_prob`` is the exact change of variables, as cheap as a forward pass;
            ``False``: it integrates an ODE (costly, with the solver's error), so training validates
            on the objective instead.
        latent_levels: levels of the `Latent`, each of which `interpolate` can move alone.
        solver: sampling and ``log_prob`` integrate an ODE: ``use_solver``, ``use_likelihood_solver``,
            ``solver_info`` and ``likelihood_info`` say and set how.
        objective: what ``objective`` minimises, its name in logs: ``"likelihood"`` (the negative
            log-likelihood, bits/dim for images) or the name of another loss (``"fm"``).
        guidance: sampling can be guided (``use_guidance``): classifier-free guidance
            of class-conditional models, or the family's own guidance of unconditional ones.
    """

    exact_inverse: bool = True
    exact_likelihood: bool = True
    latent_levels: int = 1
    solver: bool = False
    objective: str = "likelihood"
    guidance: bool = False
