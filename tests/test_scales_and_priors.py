"""Positivity maps against their direct formulas; priors against closed forms and their samples."""

from __future__ import annotations

import math

import pytest
import torch

from lgm.flow import SCALE_MAPS, StandardGaussian, StandardLogistic, get_scale_map, make_prior
from lgm.flow.scales import SOFTCLAMP_BOUND

DIRECT = {
    "exp": torch.exp,
    "softplus": lambda h: torch.log1p(torch.exp(h)),
    "sigmoid": lambda h: 1 / (1 + torch.exp(-(h + 2))),
    "sigmoid2": lambda h: 2 / (1 + torch.exp(-h)),
    "softclamp": lambda h: torch.exp(SOFTCLAMP_BOUND * torch.tanh(h / SOFTCLAMP_BOUND)),
}


def test_every_scale_map_has_a_direct_formula_here():
    assert set(DIRECT) == set(SCALE_MAPS)


@pytest.mark.parametrize("name", sorted(SCALE_MAPS))
def test_log_scale_is_log_of_the_scale(name):
    h = torch.linspace(-8, 8, 101, dtype=torch.float64)
    torch.testing.assert_close(get_scale_map(name).log_scale(h), torch.log(DIRECT[name](h)))


@pytest.mark.parametrize("name", sorted(SCALE_MAPS))
def test_reciprocal_scale_is_one_over_the_scale(name):
    h = torch.linspace(-8, 8, 101, dtype=torch.float64)
    torch.testing.assert_close(get_scale_map(name).reciprocal_scale(h), 1 / DIRECT[name](h))


@pytest.mark.parametrize("name", sorted(SCALE_MAPS))
def test_log_scale_stays_finite_for_extreme_inputs(name):
    h = torch.tensor([-200.0, -50.0, 50.0])
    assert torch.isfinite(get_scale_map(name).log_scale(h)).all()


@pytest.mark.parametrize("name", sorted(n for n, m in SCALE_MAPS.items() if m.identity_at is not None))
def test_identity_point_gives_unit_scale(name):
    m = get_scale_map(name)
    assert abs(float(m.log_scale(torch.tensor(m.identity_at, dtype=torch.float64)))) < 1e-12


def test_unknown_scale_name_lists_the_choices():
    with pytest.raises(ValueError, match="unknown scale function 'tanh'.*exp"):
        get_scale_map("tanh")


def test_gaussian_log_prob_matches_torch_distributions():
    z = torch.randn(5, 3, 2, dtype=torch.float64)
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(dim=(1, 2))
    torch.testing.assert_close(StandardGaussian((3, 2)).double().log_prob(z), expected)


def test_logistic_log_prob_matches_the_density_formula():
    z = torch.linspace(-30, 30, 61, dtype=torch.float64).reshape(-1, 1)
    density = torch.exp(-z) / (1 + torch.exp(-z)) ** 2
    torch.testing.assert_close(StandardLogistic((1,)).double().log_prob(z), torch.log(density).squeeze(1))


@pytest.mark.parametrize("prior_cls", [StandardGaussian, StandardLogistic])
def test_prior_density_integrates_to_one(prior_cls):
    z = torch.linspace(-40, 40, 160_001, dtype=torch.float64).reshape(-1, 1)
    integral = torch.trapezoid(prior_cls((1,)).double().log_prob(z).exp(), z.squeeze(1))
    assert abs(float(integral) - 1) < 1e-8


@pytest.mark.parametrize("name, std", [("gaussian", 1.0), ("logistic", math.pi / math.sqrt(3))])
@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_samples_have_the_right_spread(name, std, temperature):
    torch.manual_seed(0)
    z = make_prior(name, (4,)).sample(50_000, temperature=temperature)
    assert z.shape == (50_000, 4)
    assert abs(float(z.mean())) < 0.02
    assert abs(float(z.std()) / (temperature * std) - 1) < 0.02


def test_unknown_prior_name():
    with pytest.raises(ValueError, match="unknown prior 'laplace'"):
        make_prior("laplace", (2,))
