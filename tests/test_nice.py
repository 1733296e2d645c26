"""NICE as a model: normalised densities, presets, sampling, and clear errors for bad input."""

from __future__ import annotations

import pytest
import torch
from helpers import randomise

from lgm.evaluate import integrate_density
from lgm.flow import Latent, NiceFlow


@pytest.mark.parametrize("prior", ["gaussian", "logistic"])
@pytest.mark.parametrize("scale", ["exp", "softplus", "sigmoid"])
def test_2d_density_integrates_to_one(prior, scale):
    torch.manual_seed(0)
    model = NiceFlow.toy(prior=prior, scale=scale, width=16, depth=2)
    # Random (not zero) coupling weights: a curved density, not just the prior.
    randomise(model, seed=3)
    with torch.no_grad():
        model.scaling.h.fill_(model.scaling.scale_map.identity_at or 0.0)
    total = integrate_density(model.log_prob, bounds=((-25.0, 25.0), (-25.0, 25.0)), resolution=1000)
    assert abs(total - 1) < 0.01, total


def test_randomised_density_is_not_the_prior():
    model = randomise(NiceFlow.toy(width=16, depth=2), seed=3)
    x = torch.randn(10, 2)
    assert not torch.allclose(model.log_prob(x), model.prior.log_prob(x))


def test_mnist_preset_is_the_papers_model():
    model = NiceFlow.mnist()
    couplings = model.transform.transforms[1:-1]
    assert len(couplings) == 4
    assert [c.change for c in couplings] == ["second", "first", "second", "first"]
    hidden = [m for m in couplings[0].net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in hidden] == [(392, 1000)] + [(1000, 1000)] * 4 + [(1000, 392)]
    assert type(model.prior).__name__ == "StandardLogistic"
    x = torch.rand(3, 1, 28, 28)
    assert model.log_prob(x).shape == (3,)
    assert model.sample(2).shape == (2, 1, 28, 28)


def test_sample_decode_encode_and_temperature():
    torch.manual_seed(0)
    model = randomise(NiceFlow.toy(width=16, depth=2), seed=1)
    x = model.sample(500)
    assert x.shape == (500, 2)
    torch.testing.assert_close(model.decode(model.encode(x)), x, rtol=1e-5, atol=1e-5)
    torch.manual_seed(0)
    z_cold = model.encode(model.sample(500, temperature=0.5)).flatten()
    torch.manual_seed(0)
    z = model.encode(model.sample(500)).flatten()
    torch.testing.assert_close(z_cold, 0.5 * z, rtol=1e-4, atol=1e-4)


def test_wrong_input_shape_is_named():
    model = NiceFlow.toy()
    with pytest.raises(ValueError, match=r"expected input of shape \[B, 2\].*got \[4, 3\]"):
        model.log_prob(torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"got \[2\].*unsqueeze"):
        model.log_prob(torch.randn(2))


def test_nan_input_is_refused():
    x = torch.randn(4, 2)
    x[1, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        NiceFlow.toy().log_prob(x)


def test_integer_input_is_refused():
    with pytest.raises(ValueError, match="floating-point"):
        NiceFlow.toy().log_prob(torch.ones(4, 2, dtype=torch.long))


def test_odd_dimension_is_refused_with_a_fix():
    with pytest.raises(ValueError, match="must be even; got 3.*Pad"):
        NiceFlow(shape=3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"scale": "tanh"}, "unknown scale function 'tanh'"),
        ({"prior": "cauchy"}, "unknown prior 'cauchy'"),
        ({"partition": "random"}, "unknown partition 'random'"),
        ({"activation": "swish2"}, "unknown activation 'swish2'"),
        ({"norm": "group"}, "unknown norm 'group'"),
        ({"couplings": 0}, "couplings must be at least 1"),
    ],
)
def test_bad_options_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NiceFlow.toy(**kwargs)


def test_negative_temperature_is_refused():
    with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
        NiceFlow.toy().sample(3, temperature=-0.5)


def test_zero_temperature_decodes_the_prior_mode():
    model = randomise(NiceFlow.toy(width=16, depth=2), seed=1)
    expected = model.decode(Latent(torch.zeros(1, 2)))
    torch.testing.assert_close(model.sample(3, temperature=0.0), expected.expand(3, 2))
