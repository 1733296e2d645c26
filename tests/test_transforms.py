"""Every transform: exact round trip, log-det equal to slogdet of the autograd Jacobian, gradients."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from helpers import initialized_net, randomise

from lgm.flow import (
    SCALE_MAPS,
    ActNorm,
    AdditiveVectorCoupling,
    AffineVectorCoupling,
    ChannelPermutation,
    Compose,
    DiagonalScaling,
    Glow,
    ImageCoupling,
    InvConv1x1,
    NiceFlow,
    Preprocessing,
    Reshape,
    Squeeze,
    VectorGlow,
    VectorRealNVP,
    check_invertible,
    jacobian_logdet,
    mlp,
)
from lgm.flow.base import data_initialization
from lgm.flow.nets import glow_net, resnet
from lgm.flow.preprocess import Center, Logit, Normalize

DIM = 6


def randomised(name: str) -> torch.nn.Module:
    """The transform called ``name``, in float64, with random parameters of a numerically sane size."""
    # Deep convolutional nets with large random weights give scales like exp(+-100), where float64
    # itself cannot invert x * s + t; milder weights keep the test about the algebra.
    return randomise(TRANSFORMS[name]().double(), std=0.15 if name in IMAGE_TRANSFORMS else 0.5)


def initialized(layer, shape=None):
    """A data-initialised layer set from a batch with a clearly non-standard mean and spread."""
    g = torch.Generator().manual_seed(5)
    shape = shape or tuple(layer.mean.shape)
    with data_initialization(layer):
        layer(0.3 + 0.1 * torch.rand(64, *shape, generator=g))
    return layer.eval()


def image_coupling(channels, mask, parity, scale="sigmoid", affine=True, net="glow"):
    builder = partial(glow_net, width=8) if net == "glow" else partial(resnet, width=8, depth=1)
    layer = ImageCoupling(channels, builder, mask=mask, parity=parity, scale=scale, affine=affine)
    return initialized_net(layer, (channels, 4, 4))


def coupling(partition: str, change: str) -> AdditiveVectorCoupling:
    return AdditiveVectorCoupling(DIM, mlp(DIM // 2, DIM // 2, width=8, depth=2), partition=partition, change=change)


TRANSFORMS = {
    "reshape": lambda: Reshape((2, 3), (DIM,)),
    **{
        f"additive-{p}-{c}": (lambda p=p, c=c: coupling(p, c))
        for p in ("even_odd", "halves")
        for c in ("first", "second")
    },
    **{f"scaling-{name}": (lambda name=name: DiagonalScaling(DIM, scale=name)) for name in SCALE_MAPS},
    "compose": lambda: Compose(coupling("halves", "second"), coupling("even_odd", "first"), DiagonalScaling(DIM)),
    "nice-toy": lambda: NiceFlow.toy().transform,
    **{
        f"affine-vector-{p}-{c}-{scale}": (
            lambda p=p, c=c, scale=scale: AffineVectorCoupling(DIM, mlp(DIM // 2, DIM, width=8, depth=2), p, c, scale)
        )
        for p in ("even_odd", "halves")
        for c in ("first", "second")
        for scale in ("exp", "softclamp")
    },
    "vector-realnvp": lambda: VectorRealNVP(shape=DIM, couplings=4, width=8).transform,
    **{
        f"vector-glow-{mixing}": (
            lambda mixing=mixing: initialized_net(VectorGlow(DIM, 3, width=8, mixing=mixing).transform, (DIM,))
        )
        for mixing in ("conv_lu", "conv", "shuffle")
    },
    "nice-batchnorm-eval": lambda: NiceFlow(shape=(DIM,), width=8, depth=2, norm="batch").transform.eval(),
    "center": lambda: Center(),
    "logit": lambda: Logit(0.05),
    "logit-alpha0": lambda: Logit(0.0),
    "normalize-global": lambda: initialized(Normalize((DIM,), "global")),
    "normalize-per_pixel": lambda: initialized(Normalize((DIM,), "per_pixel")),
    "nice-image-preprocessing": lambda: (
        initialized_flow(
            NiceFlow(
                shape=(1, 2, 3),
                width=8,
                depth=2,
                preprocessing=Preprocessing(data_range="unit", logit_alpha=0.05, normalize="per_pixel"),
            )
        ).transform
    ),
}

IMAGE_TRANSFORMS = {
    "squeeze-1x4x4": (lambda: Squeeze(), (1, 4, 4)),
    "squeeze-3x4x4": (lambda: Squeeze(), (3, 4, 4)),
    "actnorm-3x4x4": (lambda: initialized(ActNorm(3), (3, 4, 4)), (3, 4, 4)),
    "invconv-plain": (lambda: InvConv1x1(4, lu=False, seed=1), (4, 4, 4)),
    "invconv-lu": (lambda: InvConv1x1(4, lu=True, seed=1), (4, 4, 4)),
    "permutation-reverse": (lambda: ChannelPermutation(4, "reverse"), (4, 4, 4)),
    "permutation-shuffle": (lambda: ChannelPermutation(4, "shuffle", seed=3), (4, 4, 4)),
    **{
        f"affine-channel-{scale}-p{parity}": (
            lambda scale=scale, parity=parity: image_coupling(4, "channel", parity, scale),
            (4, 4, 4),
        )
        for scale in SCALE_MAPS
        for parity in (0, 1)
    },
    **{
        f"affine-checkerboard-p{parity}": (
            lambda parity=parity: image_coupling(3, "checkerboard", parity, "softclamp", net="resnet"),
            (3, 4, 4),
        )
        for parity in (0, 1)
    },
    "additive-channel": (lambda: image_coupling(4, "channel", 0, affine=False), (4, 4, 4)),
    "additive-checkerboard": (lambda: image_coupling(1, "checkerboard", 1, affine=False), (1, 4, 4)),
    "glow-steps": (
        lambda: initialized_net(
            Compose(Squeeze(), ActNorm(4), InvConv1x1(4), image_coupling(4, "channel", 0)), (1, 4, 4)
        ),
        (1, 4, 4),
    ),
}
TRANSFORMS.update({name: factory for name, (factory, _) in IMAGE_TRANSFORMS.items()})
UNIT_INTERVAL_INPUTS = {"logit", "logit-alpha0", "nice-image-preprocessing"}


def initialized_flow(flow):
    flow.initialize(torch.rand(32, *flow.shape, generator=torch.Generator().manual_seed(6)))
    return flow.eval()


def input_for(name: str) -> torch.Tensor:
    shapes = {"reshape": (2, 3), "nice-toy": (2,), "nice-image-preprocessing": (1, 2, 3)}
    shapes.update({name: shape for name, (_, shape) in IMAGE_TRANSFORMS.items()})
    shape = shapes.get(name, (DIM,))
    g = torch.Generator().manual_seed(1)
    if name in UNIT_INTERVAL_INPUTS:
        return torch.rand(4, *shape, dtype=torch.float64, generator=g)
    return torch.randn(4, *shape, dtype=torch.float64, generator=g)


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_round_trip_is_exact(name):
    transform = randomised(name)
    x = input_for(name)
    z, _ = transform(x)
    torch.testing.assert_close(transform.inverse(z), x, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(transform(transform.inverse(z))[0], z, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_logdet_matches_autograd_jacobian(name):
    transform = randomised(name)
    x = input_for(name)
    _, logdet = transform(x)
    assert logdet.shape == (x.shape[0],)
    torch.testing.assert_close(logdet, jacobian_logdet(transform, x), rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", [n for n in sorted(TRANSFORMS) if list(TRANSFORMS[n]().parameters())])
def test_gradients_reach_every_parameter(name):
    transform = randomised(name)
    z, logdet = transform(input_for(name))
    (z.square().sum() - logdet.sum()).backward()
    for pname, p in transform.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {pname}"


def test_coupling_changes_only_one_part():
    t = randomise(coupling("even_odd", "second").double())
    x = input_for("additive")
    z, _ = t(x)
    torch.testing.assert_close(z[:, 0::2], x[:, 0::2], rtol=0, atol=0)
    assert not torch.allclose(z[:, 1::2], x[:, 1::2])


def test_scaling_starts_as_identity_where_the_map_allows():
    for name, scale_map in SCALE_MAPS.items():
        layer = DiagonalScaling(DIM, scale=name)
        if scale_map.identity_at is not None:
            torch.testing.assert_close(layer.log_scale(), torch.zeros(DIM), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "builder", [partial(glow_net, width=8), partial(resnet, width=8, depth=1)], ids=["glow", "resnet"]
)
def test_channels_last_net_computes_the_plain_sequential_map(builder):
    """The fast path (NHWC layout, conv + actnorm as one convolution, zero conv folded) is the same
    function as the layers run one by one in NCHW, with the same gradients and state-dict keys."""
    net = randomise(initialized_net(builder(3, 6), (3, 4, 4)).double(), std=0.3).train()
    plain = torch.nn.Sequential(*net).to(memory_format=torch.contiguous_format)
    assert list(net.state_dict()) == list(plain.state_dict())
    x = torch.randn(5, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    fast, slow = net(x), plain(x.clone())
    assert fast.is_contiguous()
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(fast.square().sum(), [x, *net.parameters()])
    plain_grads = torch.autograd.grad(slow.square().sum(), [x, *plain.parameters()])
    for g, h in zip(grads, plain_grads):
        torch.testing.assert_close(g, h, rtol=1e-10, atol=1e-12)


def test_channels_last_net_loads_a_contiguous_state_dict():
    """Checkpoints written with NCHW weights load into the channels-last network unchanged."""
    net = initialized_net(glow_net(2, 4, width=8), (2, 4, 4))
    old = {k: v.contiguous() for k, v in randomise(glow_net(2, 4, width=8)).state_dict().items()}
    net.load_state_dict(old)
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, old[k], rtol=0, atol=0)
    assert net[0].weight.is_contiguous(memory_format=torch.channels_last)


# --- check_invertible: the sanity check users run before training -------------------------------


def test_check_invertible_passes_correct_flows_and_catches_a_wrong_log_det():
    torch.manual_seed(0)
    glow = Glow(shape=(1, 8, 8), levels=2, flow_steps=2, width=8)
    x = torch.rand(16, 1, 8, 8)
    glow.initialize(x)
    with torch.no_grad():
        for p in glow.parameters():
            p.add_(0.05 * torch.randn_like(p))
    report = check_invertible(glow, x, n_jacobian=2)
    assert report.ok() and report.logdet_error > 0  # random weights: a real check, not an identity

    nice = NiceFlow(2)
    scaling = nice.scaling
    original = scaling.forward
    scaling.forward = lambda h: (original(h)[0], original(h)[1] + 1.0)  # a log-det off by one nat
    report = check_invertible(nice, torch.randn(8, 2))
    assert not report.ok() and report.logdet_error == pytest.approx(1.0, abs=1e-4)
