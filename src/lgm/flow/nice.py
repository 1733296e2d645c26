"""NICE: Non-linear Independent Components Estimation (Dinh, Krueger, Bengio 2014).

Data (flattened to ``D`` features) -> additive couplings that alternate the changed half ->
diagonal scaling -> factorised prior. The log-determinant comes only from the scaling layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor

from lgm.flow.base import Compose, Flow, Reshape
from lgm.flow.coupling import AdditiveVectorCoupling, check_partition
from lgm.flow.layers import DiagonalScaling
from lgm.flow.nets import mlp
from lgm.flow.preprocess import Preprocessing
from lgm.flow.priors import make_prior


class NiceFlow(Flow):
    """NICE on data of any shape (samples are flattened to ``D`` features, D even).

    Args:
        shape: shape of one sample: ``2`` (or ``(2,)``) for 2-D points, ``(1, 28, 28)`` for MNIST.
        couplings: number of additive coupling layers (the paper uses 4).
        width: features of each coupling network's hidden layers.
        depth: hidden layers per coupling network (the paper uses 5).
        activation: hidden activation, see `lgm.flow.nets.ACTIVATIONS`.
        norm: ``None``, ``"batch"`` or ``"layer"`` normalisation inside coupling networks.
        partition: ``"even_odd"`` (the paper's choice for MNIST) or ``"halves"``.
        scale: positivity map of the final diagonal scaling, see `lgm.flow.scales`.
        prior: ``"logistic"`` (the paper's choice for images) or ``"gaussian"``.
        preprocessing: ``None`` for continuous data (2-D toys); for images, their bit depth and
            preprocessing (`lgm.flow.Preprocessing`), which turns on dequantisation and `bits_per_dim`.
            The paper feeds NICE dequantised images in [0, 1] (``Preprocessing(data_range="unit")``).
    """

    def __init__(
        self,
        shape: int | Sequence[int] = 2,
        couplings: int = 4,
        width: int = 64,
        depth: int = 3,
        activation: str = "relu",
        norm: str | None = None,
        partition: str = "even_odd",
        scale: str = "exp",
        prior: str = "gaussian",
        preprocessing: Preprocessing | None = None,
    ) -> None:
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        preprocessing = Preprocessing.of(preprocessing)
        layers, model_shape = preprocessing.transforms(shape) if preprocessing is not None else ([], shape)
        dim = math.prod(model_shape)
        check_partition(dim, partition)
        if couplings < 1:
            raise ValueError(f"couplings must be at least 1, got {couplings}")
        layers.append(Reshape(model_shape, (dim,)))
        for i in range(couplings):
            net = mlp(dim // 2, dim // 2, width=width, depth=depth, activation=activation, norm=norm)
            layers.append(
                AdditiveVectorCoupling(dim, net, partition=partition, change="second" if i % 2 == 0 else "first")
            )
        layers.append(DiagonalScaling(dim, scale=scale))
        images = preprocessing.flow_arguments(shape) if preprocessing is not None else {}
        super().__init__(Compose(*layers), make_prior(prior, (dim,)), shape, **images)
        self.preprocessing = preprocessing

    @property
    def scaling(self) -> DiagonalScaling:
        """The final diagonal scaling layer (its ``log_scale()`` ranks latent dimensions)."""
        return self.transform.transforms[-1]

    def per_dimension_log_scale(self) -> Tensor:
        return self.scaling.log_scale().detach()

    @classmethod
    def mnist(cls, **overrides) -> NiceFlow:
        """The paper's MNIST model: 4 couplings of 5 x 1000 ReLU units, even/odd split, logistic prior,
        on dequantised 8-bit images in [0, 1]."""
        args = dict(
            shape=(1, 28, 28),
            couplings=4,
            width=1000,
            depth=5,
            partition="even_odd",
            prior="logistic",
            preprocessing=Preprocessing(n_bits=8, data_range="unit"),
        )
        return cls(**{**args, **overrides})

    @classmethod
    def toy(cls, **overrides) -> NiceFlow:
        """A small model for 2-D densities: 4 couplings of 3 x 64 ReLU units, Gaussian prior."""
        args = dict(shape=2, couplings=4, width=64, depth=3, prior="gaussian")
        return cls(**{**args, **overrides})
