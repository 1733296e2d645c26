"""Multi-scale flows (RealNVP, Glow): levels of steps, each but the last ending in a split.

Data -> preprocessing -> level 1 -> split: factor out ``z_1`` -> level 2 -> ... -> level L -> ``z_L``.
Every factored-out latent is kept: ``encode`` returns the `Latent` ``(z_1, ..., z_L)`` (finest
first, the top latent last) and ``decode`` takes it, so ``decode(encode(x)) == x``. At a split, the
factored half has its own prior, conditioned on the kept half (Glow's learned prior) or standard.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lgm.flow.base import Compose, Flow, Transform
from lgm.flow.latent import Capabilities, Latent
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
        noise_std: Gaussian noise augmentation's standard deviation, or ``None`` (see `lgm.flow.Flow`).
        dequantizer: a learned ``q(u | x)`` for variational dequantisation, or ``None`` (see `lgm.flow.Flow`).
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
        noise_std: float | None = None,
        dequantizer: nn.Module | None = None,
    ) -> None:
        if len(split_priors) != len(levels) - 1 or len(latent_shapes) != len(levels):
            raise ValueError(
                f"{len(levels)} levels need {len(levels) - 1} split priors and {len(levels)} latent shapes"
            )
        if n_bits is None:
            raise ValueError("multi-scale flows model images: set n_bits (1 to 8)")
        if n_classes is not None and n_classes < 1:
            raise ValueError(f"n_classes must be at least 1 (or None), got {n_classes}")
        super().__init__(Compose(*preprocess), top_prior, shape, n_bits, noise_std, dequantizer)
        self.levels = nn.ModuleList(levels)
        self.split_priors = nn.ModuleList(split_priors)
        self._latent_shapes = [tuple(s) for s in latent_shapes]
        self.n_classes = n_classes

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(latent_levels=len(self.levels), objective=self._likelihood_objective())

    @property
    def latent_shapes(self) -> list[tuple[int, ...]]:
        return list(self._latent_shapes)

    def _forward_levels(self, x: Tensor) -> tuple[list[Tensor], list[Tensor], Tensor]:
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

    def bijection(self, x: Tensor, labels: Tensor | None = None) -> tuple[Latent, Tensor]:
        latents, _, logdet = self._forward_levels(x)
        return Latent(latents), logdet

    def log_prob(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        self.check_input(x)
        self.check_labels(labels, x.shape[0])
        latents, kept, log_p = self._forward_levels(x)
        for prior, z, h in zip(self.split_priors, latents, kept):
            log_p = log_p + prior.log_prob(z, labels, context=h)
        return log_p + self.prior.log_prob(latents[-1], labels)

    def standardize(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """Each level's latent standardised by its own (learned, conditional) prior, ``[B, D]``, finest first."""
        self.check_input(x)
        self.check_labels(labels, x.shape[0])
        latents, kept, _ = self._forward_levels(x)
        eps = [prior.standardize(z, labels, context=h) for prior, z, h in zip(self.split_priors, latents, kept)]
        eps.append(self.prior.standardize(latents[-1], labels))
        return torch.cat([e.flatten(1) for e in eps], dim=1)

    def decode(self, latent: Latent, labels: Tensor | None = None) -> Tensor:
        """The latent of every level (as `encode` returns it) -> data."""
        self.check_latent(latent)
        h = latent.levels[-1]
        for i in reversed(range(len(self.levels))):
            if i < len(self.split_priors):
                h = torch.cat((h, latent.levels[i]), dim=1)
            h = self.levels[i].inverse(h)
        return self.transform.inverse(h)

    def _draw(self, n: int, temperature: float, labels: Tensor | None) -> Tensor:
        """``n`` samples, every level's prior at ``temperature`` (see `lgm.flow.Flow.sample`).

        Temperature 0 decodes the prior means (for learned priors, conditioned level by level).
        """
        h = self.prior.sample(n, labels, temperature)
        for i in reversed(range(len(self.levels))):
            if i < len(self.split_priors):
                h = torch.cat((h, self.split_priors[i].sample(n, labels, temperature, context=h)), dim=1)
            h = self.levels[i].inverse(h)
        return self.transform.inverse(h)


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
