"""Every transform: exact round trip, log-det equal to slogdet of the autograd Jacobian, gradients."""

from __future__ import annotations

import pytest
import torch

from lgm.flow import AdditiveCoupling, Compose, DiagonalScaling, NiceFlow, Reshape, SCALE_MAPS, mlp
from lgm.flow.preprocess import Center, Logit, Normalize

DIM = 6


def randomise(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter random values, so no layer is a zero-initialised identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def initialized(layer: Normalize) -> Normalize:
    """A normalisation layer set from a batch with a clearly non-standard mean and spread."""
    g = torch.Generator().manual_seed(5)
    layer.train()
    layer(0.3 + 0.1 * torch.rand(64, *layer.mean.shape, generator=g))
    return layer.eval()


def brute_force_logdet(transform, x: torch.Tensor) -> torch.Tensor:
    """log|det dz/dx| per sample from the full autograd Jacobian (float64), shape [B]."""
    logdets = []
    for xi in x:
        def f(v, shape=xi.shape):
            return transform(v.reshape(1, *shape))[0].reshape(-1)

        jac = torch.autograd.functional.jacobian(f, xi.reshape(-1))
        logdets.append(torch.linalg.slogdet(jac).logabsdet)
    return torch.stack(logdets)


def coupling(partition: str, change: str) -> AdditiveCoupling:
    return AdditiveCoupling(DIM, mlp(DIM // 2, DIM // 2, hidden=8, depth=2), partition=partition, change=change)


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
    "nice-batchnorm-eval": lambda: NiceFlow(shape=(DIM,), hidden=8, depth=2, norm="batch").transform.eval(),
    "center": lambda: Center(),
    "logit": lambda: Logit(0.05),
    "logit-alpha0": lambda: Logit(0.0),
    "normalize-global": lambda: initialized(Normalize((DIM,), "global")),
    "normalize-per_pixel": lambda: initialized(Normalize((DIM,), "per_pixel")),
    "nice-image-preprocessing": lambda: initialized_flow(
        NiceFlow(shape=(1, 2, 3), hidden=8, depth=2, n_bits=8, logit_alpha=0.05, normalize="per_pixel")
    ).transform,
}

UNIT_INTERVAL_INPUTS = {"logit", "logit-alpha0", "nice-image-preprocessing"}


def initialized_flow(flow):
    flow.initialize(torch.rand(32, *flow.shape, generator=torch.Generator().manual_seed(6)))
    return flow.eval()


def input_for(name: str) -> torch.Tensor:
    shape = {"reshape": (2, 3), "nice-toy": (2,), "nice-image-preprocessing": (1, 2, 3)}.get(name, (DIM,))
    g = torch.Generator().manual_seed(1)
    if name in UNIT_INTERVAL_INPUTS:
        return torch.rand(4, *shape, dtype=torch.float64, generator=g)
    return torch.randn(4, *shape, dtype=torch.float64, generator=g)


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_round_trip_is_exact(name):
    transform = randomise(TRANSFORMS[name]().double())
    x = input_for(name)
    z, _ = transform(x)
    torch.testing.assert_close(transform.inverse(z), x, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(transform(transform.inverse(z))[0], z, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_logdet_matches_autograd_jacobian(name):
    transform = randomise(TRANSFORMS[name]().double())
    x = input_for(name)
    _, logdet = transform(x)
    assert logdet.shape == (x.shape[0],)
    torch.testing.assert_close(logdet, brute_force_logdet(transform, x), rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", [n for n in sorted(TRANSFORMS) if list(TRANSFORMS[n]().parameters())])
def test_gradients_reach_every_parameter(name):
    transform = randomise(TRANSFORMS[name]().double())
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
