"""Coupling networks: the unconstrained functions inside coupling layers (MLPs for vectors, CNNs for images).

A coupling layer stays invertible whatever its network computes, so these can be any shape; what
matters is that they start near zero (the layer then starts as the identity, which keeps deep flows
stable at the beginning of training).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lgm.flow.layers import ActNorm

ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "elu": nn.ELU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}
NORMS = {"batch": nn.BatchNorm1d, "layer": nn.LayerNorm}


def mlp(
    in_features: int,
    out_features: int,
    hidden: int = 64,
    depth: int = 2,
    activation: str = "relu",
    norm: str | None = None,
    zero_init: bool = True,
) -> nn.Sequential:
    """A multilayer perceptron ``[B, in_features] -> [B, out_features]``.

    Args:
        hidden: width of every hidden layer.
        depth: number of hidden layers (NICE's MNIST model uses 5 of 1000 units).
        activation: one of `ACTIVATIONS`.
        norm: ``None``, ``"batch"`` or ``"layer"``, applied after each hidden linear layer.
            Batch norm makes the network depend on the batch in training mode; the coupling stays
            exactly invertible for a fixed network (in eval mode, or within one batch).
        zero_init: zero the last layer so that the coupling starts as the identity.
    """
    if depth < 1:
        raise ValueError(f"depth must be at least 1 hidden layer, got {depth}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
    if norm is not None and norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose None or one of {sorted(NORMS)}")
    layers: list[nn.Module] = []
    width = in_features
    for _ in range(depth):
        layers.append(nn.Linear(width, hidden))
        if norm is not None:
            layers.append(NORMS[norm](hidden))
        layers.append(ACTIVATIONS[activation]())
        width = hidden
    last = nn.Linear(width, out_features)
    if zero_init:
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
    layers.append(last)
    return nn.Sequential(*layers)


class ZeroConv2d(nn.Module):
    """openai/glow's ``Conv2dZeros``: a 3x3 convolution started at zero, its output scaled per channel by
    ``exp(3 * logs)`` (``logs`` also starting at zero), so the layer it feeds starts as the identity."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.logs = nn.Parameter(torch.zeros(out_channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x) * torch.exp(3 * self.logs)


class ActNormLayer(nn.Module):
    """Actnorm inside a coupling network, where no log-det is needed (the coupling stays invertible)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.actnorm = ActNorm(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.actnorm(x)[0]


def glow_net(in_channels: int, out_channels: int, hidden: int = 128) -> nn.Sequential:
    """Glow's coupling network: conv3x3 - actnorm - ReLU - conv1x1 - actnorm - ReLU - zero-init conv3x3.

    ``[B, in_channels, H, W] -> [B, out_channels, H, W]``; starts at exactly zero output.
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, hidden, 3, padding=1, bias=False), ActNormLayer(hidden), nn.ReLU(),
        nn.Conv2d(hidden, hidden, 1, bias=False), ActNormLayer(hidden), nn.ReLU(),
        ZeroConv2d(hidden, out_channels),
    )


class ResidualBlock(nn.Module):
    """``x + conv3x3(relu(actnorm(conv3x3(relu(actnorm(x))))))``: a pre-activation residual block."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            ActNormLayer(channels), nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1),
            ActNormLayer(channels), nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def resnet(in_channels: int, out_channels: int, hidden: int = 64, blocks: int = 2) -> nn.Sequential:
    """RealNVP's residual coupling network (with actnorm in place of its batch norm), zero-init output."""
    return nn.Sequential(
        nn.Conv2d(in_channels, hidden, 3, padding=1),
        *(ResidualBlock(hidden) for _ in range(blocks)),
        ActNormLayer(hidden), nn.ReLU(),
        ZeroConv2d(hidden, out_channels),
    )
