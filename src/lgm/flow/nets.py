"""Coupling networks: the unconstrained functions inside coupling layers.

A coupling layer stays invertible whatever its network computes, so these can be any shape; what
matters is that they start near zero (the layer then starts as the identity, which keeps deep flows
stable at the beginning of training).
"""

from __future__ import annotations

from torch import nn

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
