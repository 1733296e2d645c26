"""Toy densities: seeded samplers, normalised closed-form densities, the stated entropy."""

from __future__ import annotations

import math

import pytest
import torch

from lgm.data import toy
from lgm.evaluate import integrate_density

NAMES = sorted(toy.TOY_DENSITIES)


def test_all_course_densities_are_there():
    assert set(NAMES) == {
        "banana",
        "two_moons",
        "circles",
        "eight_gaussians",
        "checkerboard",
        "two_spirals",
        "pinwheel",
    }


@pytest.mark.parametrize("name", NAMES)
def test_sampler_is_seeded(name):
    sample = getattr(toy, name)
    a, b, c = sample(1000, seed=0), sample(1000, seed=0), sample(1000, seed=1)
    assert a.shape == (1000, 2) and a.dtype == torch.float32 and torch.isfinite(a).all()
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("name", NAMES)
def test_bounds_hold_the_samples(name):
    density = toy.get_density(name)
    x = density.sample(20_000, seed=0)
    (x0, x1), (y0, y1) = density.bounds
    inside = (x[:, 0] > x0) & (x[:, 0] < x1) & (x[:, 1] > y0) & (x[:, 1] < y1)
    assert inside.float().mean() > 0.995


@pytest.mark.parametrize("name", ["banana", "eight_gaussians"])
def test_closed_form_density_integrates_to_one(name):
    density = toy.get_density(name)
    (x0, x1), (y0, y1) = density.bounds
    wide = ((x0 - 2, x1 + 2), (y0 - 2, y1 + 2))
    assert abs(integrate_density(density.log_prob, wide, resolution=1200) - 1) < 2e-3


def test_banana_log_prob_matches_its_definition():
    x = toy.banana(100, seed=3).double()
    n = torch.distributions.Normal
    expected = n(0.0, 0.5).log_prob(x[:, 1]) + n(x[:, 1] ** 2, 0.1).log_prob(x[:, 0])
    torch.testing.assert_close(toy.Banana().log_prob(x), expected)


def test_banana_entropy_formula_matches_monte_carlo():
    density = toy.Banana()
    assert density.entropy() == pytest.approx(math.log(2 * math.pi * math.e * 0.05))
    x = density.sample(200_000, seed=7).double()
    mc = -density.log_prob(x)
    assert abs(float(mc.mean()) - density.entropy()) < 4 * float(mc.std()) / math.sqrt(len(mc))


def test_eight_gaussians_puts_equal_mass_on_each_mode():
    density = toy.EightGaussians()
    x = density.sample(80_000, seed=0)
    nearest = torch.cdist(x, density.centers()).argmin(dim=1)
    counts = torch.bincount(nearest, minlength=8).float()
    assert (counts / 10_000 - 1).abs().max() < 0.05


def test_checkerboard_fills_only_dark_squares():
    x = toy.checkerboard(10_000, seed=0)
    cell = torch.floor(x / 2).long()
    assert ((cell[:, 0] + cell[:, 1]) % 2 == 0).all()


def test_unknown_toy_name():
    with pytest.raises(ValueError, match="unknown toy density 'swiss'.*banana"):
        toy.get_density("swiss")
