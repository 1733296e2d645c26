"""RealNVP (Dinh, Sohl-Dickstein, Bengio 2016): affine couplings with checkerboard and channel masks
(`RealNVP`, images), and on flat features (`VectorRealNVP`, 2-D toys).

Each scale but the last: 3 checkerboard couplings (alternating), squeeze, 3 channel couplings
(alternating), then half the channels are factored out. The last scale: 4 checkerboard couplings.
Coupling networks are residual networks. Where the paper uses batch normalisation we use actnorm
(after each coupling and inside the networks): it is invertible per sample and needs no batch
statistics at test time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

from lgm.flow.base import Compose, Flow, Reshape, Transform
from lgm.flow.coupling import AffineVectorCoupling, ImageCoupling, check_partition
from lgm.flow.layers import ActNorm, Squeeze
from lgm.flow.multiscale import MultiScaleFlow, check_divisible
from lgm.flow.nets import mlp, resnet
from lgm.flow.preprocess import Preprocessing
from lgm.flow.priors import SplitPrior, TopPrior, make_prior

PAPER_PREPROCESSING = Preprocessing(data_range="unit", logit_alpha=0.05)  # RealNVP's, on 8-bit images


class RealNVP(MultiScaleFlow):
    """RealNVP for images of ``shape = (C, H, W)`` with ``H, W`` divisible by ``2**(levels - 1)``.

    Args:
        levels: number of scales.
        width, depth: channels and residual blocks of each coupling network.
        scale: positivity map of the couplings; ``"softclamp"`` (``exp(3 tanh(h / 3))``) is the bounded
            exp that the paper's code uses in spirit (``scale * tanh``); ``"exp"`` is the plain one.
        learned_prior: learned (conditional) priors instead of N(0, I) (the paper: N(0, I)).
        n_classes: make the priors class-conditional.
        preprocessing: bit depth and preprocessing of the images, `lgm.flow.Preprocessing`;
            ``None`` is its default, the paper's logit of 8-bit images with ``alpha = 0.05``.
    """

    def __init__(
        self,
        shape: Sequence[int] = (1, 28, 28),
        levels: int = 2,
        width: int = 64,
        depth: int = 2,
        scale: str = "softclamp",
        learned_prior: bool = False,
        n_classes: int | None = None,
        preprocessing: Preprocessing | None = PAPER_PREPROCESSING,
    ) -> None:
        shape = tuple(shape)
        preprocessing = Preprocessing.of(preprocessing) or PAPER_PREPROCESSING
        if levels < 1:
            raise ValueError(f"levels must be at least 1, got {levels}")
        preprocess, (c, h, w) = preprocessing.transforms(shape)
        check_divisible((c, h, w), levels - 1, levels)
        net = partial(resnet, width=width, depth=depth)

        def alternating_couplings(channels: int, mask: str, count: int) -> list[Transform]:
            layers: list[Transform] = []
            for parity in range(count):
                layers += [ImageCoupling(channels, net, mask=mask, parity=parity % 2, scale=scale), ActNorm(channels)]
            return layers

        level_transforms, split_priors, latent_shapes = [], [], []
        for _ in range(levels - 1):
            layers = alternating_couplings(c, "checkerboard", 3) + [Squeeze()]
            c, h, w = 4 * c, h // 2, w // 2
            level_transforms.append(Compose(*layers, *alternating_couplings(c, "channel", 3)))
            split_priors.append(SplitPrior(c // 2, c - c // 2, learned_prior, n_classes))
            latent_shapes.append((c - c // 2, h, w))
            c = c // 2
        level_transforms.append(Compose(*alternating_couplings(c, "checkerboard", 4)))
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


class VectorRealNVP(Flow):
    """RealNVP on continuous vectors (e.g. the 2-D toys): affine couplings on flat features that
    alternate the changed half, then a standard prior. Samples of any shape are flattened to ``D``
    features (D even).

    Args:
        shape: shape of one sample, ``2`` for 2-D points.
        couplings: number of affine couplings.
        width, depth, activation: each coupling network's MLP (`lgm.flow.nets.mlp`), zero-initialised.
        partition: ``"halves"`` or ``"even_odd"``.
        scale: positivity map of the couplings, see `lgm.flow.scales`.
        prior: ``"gaussian"`` or ``"logistic"``.
        noise_std: train on ``x + noise_std * eps`` (Gaussian noise augmentation) and denoise samples, or
            ``None`` (see `lgm.flow.Flow`).
    """

    def __init__(
        self,
        shape: int | Sequence[int] = 2,
        couplings: int = 8,
        width: int = 64,
        depth: int = 2,
        activation: str = "relu",
        partition: str = "halves",
        scale: str = "softclamp",
        prior: str = "gaussian",
        noise_std: float | None = None,
    ) -> None:
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        dim = math.prod(shape)
        check_partition(dim, partition)
        if couplings < 1:
            raise ValueError(f"couplings must be at least 1, got {couplings}")
        layers: list[Transform] = [Reshape(shape, (dim,))]
        for i in range(couplings):
            net = mlp(dim // 2, dim, width=width, depth=depth, activation=activation)
            change = "second" if i % 2 == 0 else "first"
            layers.append(AffineVectorCoupling(dim, net, partition=partition, change=change, scale=scale))
        super().__init__(Compose(*layers), make_prior(prior, (dim,)), shape, noise_std=noise_std)
