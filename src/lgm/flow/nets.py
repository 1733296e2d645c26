"""Coupling networks: the unconstrained functions inside coupling layers (MLPs for vectors, CNNs for images).

A coupling layer stays invertible whatever its network computes, so these can be any shape; what
matters is that they start near zero (the layer then starts as the identity, which keeps deep flows
stable at the beginning of training).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lgm.flow.layers import ActNorm

ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
}
NORMS = {"batch": nn.BatchNorm1d, "layer": nn.LayerNorm}


def mlp(
    in_features: int,
    out_features: int,
    width: int = 64,
    depth: int = 2,
    activation: str = "relu",
    norm: str | None = None,
    zero_init: bool = True,
) -> nn.Sequential:
    """A multilayer perceptron ``[B, in_features] -> [B, out_features]``.

    Args:
        width: features of every hidden layer.
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
    features = in_features
    for _ in range(depth):
        layers.append(nn.Linear(features, width))
        if norm is not None:
            layers.append(NORMS[norm](width))
        layers.append(ACTIVATIONS[activation]())
        features = width
    last = nn.Linear(features, out_features)
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
        # conv(x) * e^{3 logs} per output channel, folded into the convolution's weight and bias.
        return scaled_conv(self.conv, torch.exp(3 * self.logs).flatten(), x)


class NetActNorm(nn.Module):
    """Actnorm inside a coupling network, where no log-det is needed (the coupling stays invertible)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.actnorm = ActNorm(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.actnorm(x)[0]

    def after_conv(self, conv: nn.Conv2d, x: Tensor) -> Tensor:
        """``self(conv(x))`` as one convolution: ``(W x + b + beta) e^s = (W e^s) x + (b + beta) e^s``
        per output channel, the same map with the intermediate activations never stored."""
        norm = self.actnorm
        bias = norm.bias if conv.bias is None else conv.bias + norm.bias
        scale = norm.log_scale.exp()
        return scaled_conv(conv, scale, x, bias)


def scaled_conv(conv: nn.Conv2d, scale: Tensor, x: Tensor, bias: Tensor | None = None) -> Tensor:
    """``scale * (conv(x) with bias `bias`)`` per output channel (``scale`` ``[C_out]``), computed as one
    convolution with weight ``W * scale`` and bias ``bias * scale`` (``bias`` defaults to the conv's own)."""
    bias = conv.bias if bias is None else bias
    weight = conv.weight * scale.view(-1, 1, 1, 1)
    return F.conv2d(
        x, weight, None if bias is None else bias * scale, conv.stride, conv.padding, conv.dilation, conv.groups
    )


class ChannelsLastNet(nn.Sequential):
    """A convolutional network run in channels-last memory layout (NHWC), each convolution followed
    by an actnorm computed as one convolution.

    Both choices come from profiling Glow (docs/benchmarks.md): its coupling networks
    spend most of their time in convolutions on wide hidden activations, and the elementwise passes
    around them come next.

    * Layout: on the CPU, oneDNN's convolutions run natively in NHWC, while an NCHW tensor is
      reordered into a blocked layout and back at every convolution. The (narrow) input is converted
      once on the way in and the output returned in the ordinary contiguous layout, so callers see
      no difference; the weights are stored channels-last too.
    * ``Conv2d`` then `NetActNorm` runs as `NetActNorm.after_conv`: the same map, with one pass
      over the hidden activations fewer and those activations not kept for the backward pass. Until
      the actnorm is initialised from data, the two run separately (the actnorm needs to see the
      convolution's output). Fused, the pair runs as one functional convolution: forward hooks on
      that ``Conv2d`` and `NetActNorm` do not fire (hooks on the network itself and on the ReLUs do).

    It is a `nn.Sequential` underneath, so state-dict keys are those of a plain one and checkpoints
    load either way. Input ``[B, C_in, H, W]``, output ``[B, C_out, H, W]`` (contiguous).
    """

    def __init__(self, *layers: nn.Module) -> None:
        super().__init__(*layers)
        self.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        layers = list(self)
        i = 0
        while i < len(layers):
            layer, following = layers[i], layers[i + 1] if i + 1 < len(layers) else None
            if isinstance(layer, nn.Conv2d) and isinstance(following, NetActNorm) and following.actnorm.is_initialized:
                x, i = following.after_conv(layer, x), i + 2
            else:
                x, i = layer(x), i + 1
        return x.contiguous()


def glow_net(in_channels: int, out_channels: int, width: int = 128) -> ChannelsLastNet:
    """Glow's coupling network: conv3x3 - actnorm - ReLU - conv1x1 - actnorm - ReLU - zero-init conv3x3.

    ``[B, in_channels, H, W] -> [B, out_channels, H, W]``; starts at exactly zero output.
    """
    return ChannelsLastNet(
        nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
        NetActNorm(width),
        nn.ReLU(inplace=True),
        nn.Conv2d(width, width, 1, bias=False),
        NetActNorm(width),
        nn.ReLU(inplace=True),
        ZeroConv2d(width, out_channels),
    )


class ResidualBlock(nn.Module):
    """``x + conv3x3(relu(actnorm(conv3x3(relu(actnorm(x))))))``: a pre-activation residual block."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            NetActNorm(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            NetActNorm(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def resnet(in_channels: int, out_channels: int, width: int = 64, depth: int = 2) -> ChannelsLastNet:
    """RealNVP's residual coupling network (with actnorm in place of its batch norm), zero-init output."""
    return ChannelsLastNet(
        nn.Conv2d(in_channels, width, 3, padding=1),
        *(ResidualBlock(width) for _ in range(depth)),
        NetActNorm(width),
        nn.ReLU(),
        ZeroConv2d(width, out_channels),
    )
