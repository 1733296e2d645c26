"""Glow (Kingma & Dhariwal 2018): multi-scale steps of actnorm -> invertible 1x1 conv -> affine coupling,
on images (`Glow`), and its steps on flat features (`VectorGlow`, 2-D toys).

Details from openai/glow's ``model.py``: the coupling network's last convolution starts at zero, the
coupling's scale is ``sigmoid(h + 2)``, each split has a learned conditional prior and the top a
learned prior, and actnorm is initialised from data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

from lgm.flow.base import Compose, Flow, Reshape, Transform
from lgm.flow.coupling import AffineVectorCoupling, ImageCoupling, check_partition
from lgm.flow.layers import ActNorm, ChannelPermutation, InvConv1x1, Squeeze
from lgm.flow.multiscale import MultiScaleFlow, check_divisible
from lgm.flow.nets import glow_net, mlp
from lgm.flow.preprocess import Preprocessing
from lgm.flow.priors import SplitPrior, TopPrior, make_prior

MIXINGS = ("conv_lu", "conv", "reverse", "shuffle")


def make_mixing(kind: str, channels: int, seed: int) -> Transform:
    """The channel mixing of a Glow step: invertible 1x1 conv (LU or plain) or a fixed permutation."""
    if kind == "conv_lu":
        return InvConv1x1(channels, lu=True, seed=seed)
    if kind == "conv":
        return InvConv1x1(channels, lu=False, seed=seed)
    if kind in ("reverse", "shuffle"):
        return ChannelPermutation(channels, kind, seed=seed)
    raise ValueError(f"unknown mixing {kind!r}; choose one of {list(MIXINGS)}")


class Glow(MultiScaleFlow):
    """Glow for images of ``shape = (C, H, W)`` with ``H, W`` divisible by ``2**levels``.

    Each level: squeeze, then ``flow_steps`` x (actnorm, 1x1 conv, coupling); every level but the last
    then factors out half its channels.

    Args:
        levels, flow_steps, width: ``L``, ``K`` and the coupling networks' channels (paper: 3, 32, 512).
        coupling: ``"affine"`` or ``"additive"``.
        mixing: how each step mixes the channels: ``"conv_lu"`` (LU-parametrised invertible 1x1
            convolution), ``"conv"`` (plain 1x1 convolution), or a fixed permutation, ``"reverse"`` or
            ``"shuffle"``.
        scale: the affine coupling's positivity map (see `lgm.flow.scales`); ``"sigmoid"`` is
            openai/glow's ``sigmoid(h + 2)``, ``"exp"`` the paper's.
        learned_prior: Glow's learned (conditional) priors at the splits and the top; else N(0, I).
        n_classes: make the priors class-conditional (sample a chosen class).
        preprocessing: bit depth and preprocessing of the images, `lgm.flow.Preprocessing`;
            ``None`` is its default, 8-bit images centred on 0 (``Preprocessing()``).
        seed: seed of the 1x1 convolutions' orthogonal initialisation and of shuffles.
    """

    def __init__(
        self,
        shape: Sequence[int] = (1, 28, 28),
        levels: int = 2,
        flow_steps: int = 8,
        width: int = 128,
        coupling: str = "affine",
        mixing: str = "conv_lu",
        scale: str = "sigmoid",
        learned_prior: bool = True,
        n_classes: int | None = None,
        preprocessing: Preprocessing | None = Preprocessing(),
        seed: int = 0,
    ) -> None:
        shape = tuple(shape)
        preprocessing = Preprocessing.of(preprocessing) or Preprocessing()
        if coupling not in ("affine", "additive"):
            raise ValueError(f"coupling must be 'affine' or 'additive', got {coupling!r}")
        if levels < 1 or flow_steps < 1:
            raise ValueError(f"levels and flow_steps must be at least 1, got {levels} and {flow_steps}")
        preprocess, (c, h, w) = preprocessing.transforms(shape)
        check_divisible((c, h, w), levels, levels)
        net = partial(glow_net, width=width)
        level_transforms, split_priors, latent_shapes = [], [], []
        for level in range(levels):
            c, h, w = 4 * c, h // 2, w // 2
            layers: list[Transform] = [Squeeze()]
            for step in range(flow_steps):
                layers += [
                    ActNorm(c),
                    make_mixing(mixing, c, seed + 1000 * level + step),
                    ImageCoupling(c, net, mask="channel", scale=scale, affine=coupling == "affine"),
                ]
            level_transforms.append(Compose(*layers))
            if level < levels - 1:
                split_priors.append(SplitPrior(c // 2, c - c // 2, learned_prior, n_classes))
                latent_shapes.append((c - c // 2, h, w))
                c = c // 2
        latent_shapes.append((c, h, w))
        top = TopPrior((c, h, w), learned_prior, n_classes)
        super().__init__(
            preprocess,
            level_transforms,
            split_priors,
            top,
            latent_shapes,
            shape,
            n_classes=n_classes,
            **preprocessing.flow_arguments(shape),
        )
        self.preprocessing = preprocessing

    @classmethod
    def paper_cifar10(cls, **overrides) -> Glow:
        """The paper's CIFAR-10 model: L = 3, K = 32, width 512, affine coupling, LU 1x1 conv (GPU-sized)."""
        return cls(**{**dict(shape=(3, 32, 32), levels=3, flow_steps=32, width=512), **overrides})


class VectorGlow(Flow):
    """Glow's step on continuous vectors (e.g. the 2-D toys): ``flow_steps`` x (actnorm, invertible
    linear map, affine coupling) on flat features, then a standard prior. Samples of any shape
    are flattened to ``D`` features (D even).

    On ``[B, D]`` the 1x1 convolution is a learned ``D x D`` matrix (``logdet = log|det W|``) and
    actnorm a per-feature affine map initialised from the first batch. As in Glow, every coupling
    changes the same half; the linear maps do the mixing.

    Args:
        shape: shape of one sample, ``2`` for 2-D points.
        flow_steps: number of (actnorm, linear map, coupling) steps.
        width, depth, activation: each coupling network's MLP (`lgm.flow.nets.mlp`), zero-initialised.
        mixing: ``"conv_lu"``, ``"conv"``, ``"reverse"`` or ``"shuffle"``, as in `Glow`.
        scale: the couplings' positivity map (see `lgm.flow.scales`); ``"sigmoid"`` is openai/glow's.
        prior: ``"gaussian"`` or ``"logistic"``.
        seed: seed of the linear maps' orthogonal initialisation and of shuffles.
        noise_std: train on ``x + noise_std * eps`` (Gaussian noise augmentation) and denoise samples, or
            ``None`` (see `lgm.flow.Flow`).
    """

    def __init__(
        self,
        shape: int | Sequence[int] = 2,
        flow_steps: int = 8,
        width: int = 64,
        depth: int = 2,
        activation: str = "relu",
        mixing: str = "conv_lu",
        scale: str = "sigmoid",
        prior: str = "gaussian",
        seed: int = 0,
        noise_std: float | None = None,
    ) -> None:
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        dim = math.prod(shape)
        check_partition(dim, "halves")
        if flow_steps < 1:
            raise ValueError(f"flow_steps must be at least 1, got {flow_steps}")
        layers: list[Transform] = [Reshape(shape, (dim,))]
        for step in range(flow_steps):
            layers += [
                ActNorm(dim),
                make_mixing(mixing, dim, seed + step),
                AffineVectorCoupling(dim, mlp(dim // 2, dim, width, depth, activation), scale=scale),
            ]
        super().__init__(Compose(*layers), make_prior(prior, (dim,)), shape, noise_std=noise_std)
