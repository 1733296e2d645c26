"""Cross-check: lgm and normflows give the same log-likelihood on the same weights.

    python -m benchmarks.likelihood_crosscheck [--threads 2] [--n 16] [--configs ...]

lgm's weights (randomised, so that no layer is an identity) are copied into normflows' model of the
same architecture, and both compute ``log p(y)`` per image on the same dequantised images, in
float64 and float32. The mapping is exact (a reparametrisation, no approximation) for:

* NICE: additive couplings (normflows subtracts its network's output where lgm adds it: the last
  layer is negated), the diagonal scaling ``exp(h)`` (normflows divides by ``exp(s)``: ``s = -h``);
* Glow with additive couplings, everything else as benchmarked: actnorm (``(x + b) e^s`` against
  ``(x - t) e^-s``), the LU 1x1 convolution (the same ``P L U`` factors), the coupling networks
  (their actnorms, and lgm's output scale ``e^{3 logs}`` folded into the last convolution);
* Glow with affine couplings whose shift is zero. lgm's coupling is ``x_b * s + t``, normflows'
  ``(x_b - t') * s`` (``scale_map="sigmoid"``, both with ``s = sigmoid(h + 2)``): no change of
  weights turns one into the other when ``t != 0`` (it would need ``t' = -t / s``, a function of the
  network's output), so the check zeroes lgm's shift. Together with the additive check, both halves
  of the affine coupling are compared exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from benchmarks.common import (
    Config,
    lgm_model,
    machine_line,
    markdown_table,
    normflows_model,
    parser,
    start,
    uniform_images,
)
from lgm.flow import ActNorm, AdditiveVectorCoupling, DiagonalScaling, ImageCoupling, InvConv1x1


def randomised(model: nn.Module, y: Tensor, seed: int = 0, std: float = 0.01) -> nn.Module:
    """``model`` initialised from ``y``, then every parameter perturbed by ``N(0, std^2)`` noise."""
    model.initialize(y)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(std * torch.randn(p.shape, generator=g))
    return model.eval()


@torch.no_grad()
def copy_linear(source: nn.Module, target: nn.Module, scale: Tensor | float = 1.0) -> None:
    """``target``'s weight and bias = ``source``'s times ``scale`` (a scalar or one per output)."""
    scale = torch.as_tensor(scale, dtype=source.weight.dtype)
    target.weight.copy_(source.weight * scale.reshape(-1, *[1] * (source.weight.dim() - 1)))
    if target.bias is not None:
        target.bias.copy_(source.bias * scale if source.bias is not None else 0)


@torch.no_grad()
def copy_flow_actnorm(ours: ActNorm, theirs: nn.Module) -> None:
    """lgm ``(x + b) e^s`` = normflows ``(x - t) e^-s'`` (its data -> latent direction)."""
    theirs.s.copy_(-ours.log_scale.view_as(theirs.s))
    theirs.t.copy_(-ours.bias.view_as(theirs.t))
    theirs.data_dep_init_done.fill_(1.0)


@torch.no_grad()
def copy_net_actnorm(ours: ActNorm, theirs: nn.Module) -> None:
    """lgm ``(x + b) e^s`` = normflows ``x e^s' + t`` (its latent -> data direction, used in networks)."""
    theirs.s.copy_(ours.log_scale.view_as(theirs.s))
    theirs.t.copy_((ours.bias * ours.log_scale.exp()).view_as(theirs.t))
    theirs.data_dep_init_done.fill_(1.0)


@torch.no_grad()
def copy_invconv(ours: InvConv1x1, theirs: nn.Module) -> None:
    theirs.P.copy_(ours.perm)
    theirs.L.copy_(ours.lower)
    theirs.U.copy_(ours.upper)
    theirs.sign_S.copy_(ours.sign_s)
    theirs.log_S.copy_(ours.log_s)


@torch.no_grad()
def copy_glow_net(ours: nn.Sequential, theirs: nn.Sequential, out_order: Tensor, out_scale: Tensor) -> None:
    """Glow's coupling network: conv, actnorm, ReLU, conv, actnorm, ReLU, conv (lgm's zero conv
    carries an extra per-channel scale ``e^{3 logs}``, folded here). normflows' output channel ``j``
    is lgm's ``out_order[j]`` times ``out_scale[j]``."""
    copy_linear(ours[0], theirs[0])
    copy_net_actnorm(ours[1].actnorm, theirs[1].actNorm)
    copy_linear(ours[3], theirs[3])
    copy_net_actnorm(ours[4].actnorm, theirs[4].actNorm)
    last, scale = ours[6].conv, torch.exp(3 * ours[6].logs.flatten())
    theirs[6].weight.copy_((last.weight * scale.view(-1, 1, 1, 1))[out_order] * out_scale.view(-1, 1, 1, 1))
    theirs[6].bias.copy_((last.bias * scale)[out_order] * out_scale)


def copy_glow(ours: nn.Module, theirs: nn.Module, affine: bool) -> None:
    """Every step of lgm's Glow into normflows' (levels and steps in reverse, see `normflows_model`)."""
    for level, flows in zip(ours.levels, reversed(theirs.flows)):
        steps = [flows_of_step for flows_of_step in zip(*[iter(level.transforms[1:])] * 3)]
        for (actnorm, conv, coupling), block in zip(steps, reversed(flows[:-1])):
            their_coupling, their_conv, their_actnorm = block.flows
            copy_flow_actnorm(actnorm, their_actnorm)
            copy_invconv(conv, their_conv)
            copy_glow_net(coupling.net, their_coupling.flows[1].param_map.net, *_coupling_output_map(coupling, affine))


def _coupling_output_map(coupling: ImageCoupling, affine: bool) -> tuple[Tensor, Tensor]:
    """normflows' network output from lgm's: additive ``-t``; affine ``[t'_0, h_0, t'_1, h_1, ...]``
    against lgm's ``[h, t]`` halves, with ``t' = 0`` (lgm's shift is zeroed for this check)."""
    out = coupling.net[6].conv.out_channels
    if not affine:
        return torch.arange(out), -torch.ones(out)
    half = out // 2
    order = torch.stack((torch.arange(half, out), torch.arange(half)), dim=1).flatten()
    return order, (torch.arange(out) % 2).to(torch.get_default_dtype())


@torch.no_grad()
def zero_shift(model: nn.Module) -> None:
    """Zero the shift half of every affine coupling's output (see the module docstring)."""
    for coupling in (m for m in model.modules() if isinstance(m, ImageCoupling)):
        last = coupling.net[6].conv
        last.weight[last.out_channels // 2 :] = 0
        last.bias[last.out_channels // 2 :] = 0


def copy_nice(ours: nn.Module, theirs: nn.Module) -> None:
    couplings = [t for t in ours.transform.transforms if isinstance(t, AdditiveVectorCoupling)]
    (scaling,) = [t for t in ours.transform.transforms if isinstance(t, DiagonalScaling)]
    for coupling, block in zip(couplings, reversed(theirs.flows[1:])):
        ours_net, their_net = coupling.net, block.flows[1].param_map.net
        linears = [m for m in ours_net if isinstance(m, nn.Linear)]
        for i, (a, b) in enumerate(zip(linears, [m for m in their_net if isinstance(m, nn.Linear)])):
            copy_linear(a, b, -1.0 if i == len(linears) - 1 else 1.0)
    with torch.no_grad():
        theirs.flows[0].s.copy_(-scaling.h.view_as(theirs.flows[0].s))


def compare(config: Config, variant: str, dtype: torch.dtype, n: int) -> tuple[float, float]:
    """Max relative difference of ``log p`` per image, and lgm's mean ``log p`` (nats)."""
    torch.set_default_dtype(dtype)
    torch.manual_seed(0)  # the layers' default initialisation, before `randomised` perturbs it
    try:
        y = uniform_images(n, config.shape).to(dtype)
        affine = variant == "affine, zero shift"
        ours = randomised(lgm_model(config, coupling="affine" if affine or config.kind == "nice" else "additive"), y)
        theirs = normflows_model(config, coupling_scale=affine).to(dtype).eval()
        if config.kind == "nice":
            copy_nice(ours, theirs)
            theirs_lp = theirs.log_prob(y.flatten(1))
        else:
            if affine:
                zero_shift(ours)
            copy_glow(ours, theirs, affine)
            theirs_lp = theirs.log_prob(y - 0.5, None)
        with torch.no_grad():
            ours_lp = ours.log_prob(y)
        return ((ours_lp - theirs_lp.detach()).abs() / ours_lp.abs()).max().item(), ours_lp.mean().item()
    finally:
        torch.set_default_dtype(torch.float32)


def main() -> None:
    p = parser(__doc__.splitlines()[0], repeats=1)
    p.add_argument("--n", type=int, default=16, help="images compared")
    args = start(p)
    rows = []
    for config in args.configs:
        variants = ["additive"] if config.kind == "nice" else ["additive", "affine, zero shift"]
        for variant in variants:
            (diff64, mean), (diff32, _) = (
                compare(config, variant, dtype, args.n) for dtype in (torch.float64, torch.float32)
            )
            rows.append([config.describe(), variant, f"{mean:.2f}", f"{diff64:.1e}", f"{diff32:.1e}"])
    print(f"log p(y) of lgm and normflows on the same weights and images ({args.n}), {machine_line()}\n")
    print(
        markdown_table(
            ["model", "coupling", "lgm mean log p (nats)", "max rel. diff float64", "max rel. diff float32"], rows
        )
    )


if __name__ == "__main__":
    main()
