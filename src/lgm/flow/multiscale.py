"""Multi-scale flows (RealNVP, Glow): levels of steps, each but the last ending in a split.

Data -> preprocessing -> level 1 -> split: factor out ``z_1`` -> level 2 -> ... -> level L -> ``z_L``.
Every factored-out latent is kept: ``encode`` returns ``[z_1, ..., z_L]`` (finest first, the top
latent last) and ``decode`` takes that list, so ``decode(encode(x)) == x``. At a split, the
factored half has its own prior, conditioned on the kept half (Glow's learned prior) or standard.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lgm.flow.base import Compose, Flow, Transform
from lgm.flow.priors import SplitPrior, TopPrior


class MultiScaleFlow(Flow):
    """A flow of ``L`` levels with splits between them.

    Args:
        preprocess: transforms from data space to the first level (see `lgm.flow.preprocess`).
        levels: ``L`` transforms; level ``i < L`` outputs ``[B, C_i, H_i, W_i]``, of which the first
            half of the channels goes on and the second half is factored out.
        split_priors: ``L - 1`` priors of the factored halves given the kept halves.
        top_prior: prior of the last level's output.
        latent_shapes: the shape of each latent, finest first, as `encode` returns them.
        shape: shape of one data sample ``(C, H, W)``.
        n_bits: bit depth of the images (see `lgm.flow.Flow`).
        n_classes: number of classes for a class-conditional model, else ``None``.
    """

    def __init__(
        self,
        preprocess: Sequence[Transform],
        levels: Sequence[Transform],
        split_priors: Sequence[SplitPrior],
        top_prior: TopPrior,
        latent_shapes: Sequence[tuple[int, ...]],
        shape: tuple[int, ...],
        n_bits: int = 8,
        n_classes: int | None = None,
    ) -> None:
        if len(split_priors) != len(levels) - 1 or len(latent_shapes) != len(levels):
            raise ValueError(f"{len(levels)} levels need {len(levels) - 1} split priors and {len(levels)} latent shapes")
        if n_bits is None:
            raise ValueError("multi-scale flows model images: set n_bits (1 to 8)")
        if n_classes is not None and n_classes < 1:
            raise ValueError(f"n_classes must be at least 1 (or None), got {n_classes}")
        super().__init__(Compose(*preprocess), top_prior, shape, n_bits=n_bits)
        self.levels = nn.ModuleList(levels)
        self.split_priors = nn.ModuleList(split_priors)
        self.latent_shapes = [tuple(s) for s in latent_shapes]
        self.n_classes = n_classes

    def forward_levels(self, x: Tensor) -> tuple[list[Tensor], list[Tensor], Tensor]:
        """The bijection without the priors: data ``x`` -> ``([z_1, ..., z_L], [h_1, ..., h_{L-1}], logdet)``,
        with ``h_i`` the half kept at split ``i`` (what the split prior of ``z_i`` is conditioned on)
        and ``logdet`` ``[B]`` summed over the preprocessing and every level."""
        h, logdet = self.transform(x)
        latents, kept = [], []
        for i, level in enumerate(self.levels):
            h, level_logdet = level(h)
            logdet = logdet + level_logdet
            if i < len(self.split_priors):
                h, z = h.chunk(2, dim=1)
                latents.append(z)
                kept.append(h)
        latents.append(h)
        return latents, kept, logdet

    def _encode(self, x: Tensor, labels: Tensor | None) -> tuple[list[Tensor], Tensor]:
        """``([z_1, ..., z_L], log p(x))``."""
        latents, kept, log_p = self.forward_levels(x)
        for prior, z, h in zip(self.split_priors, latents, kept):
            log_p = log_p + prior.log_prob(z, h, labels)
        return latents, log_p + self.prior.log_prob(latents[-1], labels)

    def log_prob(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        self.check_input(x)
        self.check_labels(labels, x.shape[0])
        return self._encode(x, labels)[1]

    def encode(self, x: Tensor) -> list[Tensor]:
        """Data ``[B, C, H, W]`` -> the latents of every level, finest first (labels are not needed)."""
        self.check_input(x)
        labels = torch.zeros(x.shape[0], dtype=torch.long, device=x.device) if self.n_classes else None
        return self._encode(x, labels)[0]

    def decode(self, latents: Sequence[Tensor]) -> Tensor:
        """The latents of every level (as `encode` returns them) -> data."""
        given = [tuple(z.shape[1:]) for z in latents]
        if given != self.latent_shapes or len({z.shape[0] for z in latents}) != 1:
            raise ValueError(
                f"decode needs one latent per level, shaped [B, *s] for s in {self.latent_shapes} (as encode "
                f"returns them), got shapes {[list(z.shape) for z in latents]}"
            )
        h = latents[-1]
        for i in reversed(range(len(self.levels))):
            if i < len(self.split_priors):
                h = torch.cat((h, latents[i]), dim=1)
            h = self.levels[i].inverse(h)
        return self.transform.inverse(h)

    def _draw(self, n: int, temperature: float, labels: Tensor | None) -> Tensor:
        """``n`` samples, every level's prior at ``temperature`` (see `lgm.flow.Flow.sample`).

        Temperature 0 decodes the prior means (for learned priors, conditioned level by level).
        """
        h = self.prior.sample(n, temperature, labels)
        for i in reversed(range(len(self.levels))):
            if i < len(self.split_priors):
                h = torch.cat((h, self.split_priors[i].sample(h, temperature, labels)), dim=1)
            h = self.levels[i].inverse(h)
        return self.transform.inverse(h)

    @torch.no_grad()
    def interpolate(self, x_a: Tensor, x_b: Tensor, steps: int = 8, levels: int | None = None) -> Tensor:
        """Decode straight lines between the latents of ``x_a`` and ``x_b`` (both ``[B, C, H, W]``).

        ``levels=None`` interpolates every level; ``levels=k`` only the first ``k`` latents in
        `encode` order (the finest), keeping ``x_a``'s latents elsewhere. Returns
        ``[steps, B, C, H, W]``; the first entry decodes ``x_a`` itself.
        """
        za, zb = self.encode(x_a), self.encode(x_b)
        k = len(za) if levels is None else levels
        if not 0 <= k <= len(za):
            raise ValueError(f"levels must be between 0 and {len(za)}, got {levels}")
        frames = []
        for t in torch.linspace(0, 1, steps).tolist():
            mixed = [a + t * (b - a) if i < k else a for i, (a, b) in enumerate(zip(za, zb))]
            frames.append(self._as_data(self.decode(mixed)))
        return torch.stack(frames)


def check_divisible(shape: tuple[int, ...], squeezes: int, levels: int) -> None:
    """Raise a `ValueError` unless ``(C, H, W)`` images survive ``squeezes`` halvings of their sides."""
    if len(shape) != 3:
        raise ValueError(f"multi-scale flows need images of shape (C, H, W), got {shape}")
    factor = 2**squeezes
    if shape[1] % factor or shape[2] % factor:
        raise ValueError(
            f"image sides {shape[1]}x{shape[2]} are not divisible by 2^{squeezes} = {factor}, which {levels} "
            f"levels need; use fewer levels, or pad_to a multiple of {factor} (e.g. 28 -> 32)"
        )
