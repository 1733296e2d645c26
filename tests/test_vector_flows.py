"""Flows on flat vectors (the 2-D toys): normalised densities, Glow's data-initialised steps, clear errors."""

from __future__ import annotations

import pytest
import torch
from helpers import randomise

from lgm.evaluate import integrate_density
from lgm.flow import ActNorm, InvConv1x1, VectorGlow, VectorRealNVP


@pytest.mark.parametrize(
    "build",
    [lambda: VectorRealNVP(2, couplings=4, width=16), lambda: VectorGlow(2, flow_steps=4, width=16)],
    ids=["realnvp", "glow"],
)
def test_2d_density_integrates_to_one(build):
    model = build()
    model.initialize(torch.randn(256, 2, generator=torch.Generator().manual_seed(0)))
    randomise(model, seed=3, std=0.3)  # a curved density, not just the prior
    x = torch.randn(10, 2)
    assert not torch.allclose(model.log_prob(x), model.prior.log_prob(x))
    total = integrate_density(model.log_prob, bounds=((-20.0, 20.0), (-20.0, 20.0)), resolution=800)
    assert abs(total - 1) < 0.01, total


def test_vector_glow_is_glows_step_on_features():
    model = VectorGlow(shape=(2, 3), flow_steps=2, width=8)
    kinds = [type(t).__name__ for t in model.transform.transforms]
    assert kinds == ["Reshape", *["ActNorm", "InvConv1x1", "AffineVectorCoupling"] * 2]
    assert all(c.change == "second" for c in model.transform.transforms[3::3])


def test_vector_glow_actnorm_standardises_its_first_batch():
    model = VectorGlow(shape=2, flow_steps=1, width=8)
    x = torch.tensor([3.0, -1.0]) + torch.tensor([2.0, 0.5]) * torch.randn(512, 2)
    model.initialize(x)
    actnorm = model.transform.transforms[1]
    assert isinstance(actnorm, ActNorm)
    z, _ = actnorm(x)
    torch.testing.assert_close(z.mean(0), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(0, unbiased=False), torch.ones(2), atol=1e-4, rtol=0)


def test_vector_glow_linear_map_starts_orthogonal_and_differs_by_step():
    model = VectorGlow(shape=4, flow_steps=2, width=8, seed=1)
    first, second = (t.matrix() for t in model.transform.transforms if isinstance(t, InvConv1x1))
    torch.testing.assert_close(first @ first.T, torch.eye(4), atol=1e-5, rtol=0)
    assert not torch.allclose(first, second)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(shape=3), "even"),
        (dict(flow_steps=0), "flow_steps must be at least 1"),
        (dict(mixing="swap"), "unknown mixing"),
        (dict(scale="cube"), "scale"),
    ],
)
def test_vector_glow_refuses_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VectorGlow(**kwargs)
