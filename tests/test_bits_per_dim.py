"""Bits/dim identities that hold exactly, and the discrete <-> continuous helpers."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import randomise

from lgm.flow import Compose, Flow, NiceFlow, Preprocessing, StandardLogistic, Transform, load, save
from lgm.flow.discrete import dequantize, quantize, reduce_bits
from lgm.flow.preprocess import Logit, Normalize, PadWithNoise

SHAPE = (1, 4, 4)
UNIT = Preprocessing(data_range="unit")  # 8-bit images in [0, 1], as NICE reads them


def uniform_flow(n_bits: int, pad_to: int | None = None) -> Flow:
    """logit (alpha = 0) + standard logistic prior: exactly the uniform density on [0, 1]^D."""
    layers = [Logit(0.0)]
    latent = SHAPE
    if pad_to is not None:
        layers.insert(0, PadWithNoise(SHAPE, pad_to, n_bits))
        latent = (SHAPE[0], pad_to, pad_to)
    return Flow(Compose(*layers), StandardLogistic(latent), SHAPE, n_bits=n_bits).double()


def images(n: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, *SHAPE), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("n_bits", [8, 5, 1])
def test_uniform_model_gives_exactly_n_bits(n_bits):
    torch.manual_seed(0)
    bpd = uniform_flow(n_bits).bits_per_dim(images())
    torch.testing.assert_close(bpd, torch.full_like(bpd, float(n_bits)), rtol=0, atol=1e-4)


def test_importance_weighted_uniform_model_gives_exactly_n_bits():
    torch.manual_seed(0)
    bpd = uniform_flow(8).bits_per_dim(images(), dequant_samples=5)
    torch.testing.assert_close(bpd, torch.full_like(bpd, 8.0), rtol=0, atol=1e-4)


def test_padding_bound_counts_the_pad_bits_over_the_original_pixels():
    # The uniform model spends n_bits on every pad value too: bpd = n_bits * (D + P) / D.
    torch.manual_seed(0)
    bpd = uniform_flow(8, pad_to=6).bits_per_dim(images())
    expected = 8 * (6 * 6) / (4 * 4)
    torch.testing.assert_close(bpd, torch.full_like(bpd, expected), rtol=0, atol=1e-4)


def test_bits_per_dim_is_the_designs_formula():
    model = NiceFlow(shape=SHAPE, width=8, depth=2, preprocessing=UNIT, prior="logistic")
    x = images()
    torch.manual_seed(3)
    bpd = model.bits_per_dim(x)
    torch.manual_seed(3)
    y = (x.float() + torch.rand(x.shape)) / 256
    d = math.prod(SHAPE)
    torch.testing.assert_close(bpd, (-model.log_prob(y) + d * 8 * math.log(2)) / (d * math.log(2)))


def test_importance_weighting_never_loosens_the_bound():
    # 2-bit data: wide dequantisation cells, over which a random model's density varies a lot.
    model = randomise(
        NiceFlow(
            shape=SHAPE, width=8, depth=2, preprocessing=Preprocessing(n_bits=2, data_range="unit"), prior="logistic"
        ),
        seed=1,
    ).double()
    x = images()
    torch.manual_seed(4)
    single = torch.stack([model.bits_per_dim(x) for _ in range(4)]).mean(0)
    torch.manual_seed(4)
    weighted = model.bits_per_dim(x, dequant_samples=4)  # the same four noise draws, in order
    assert (weighted <= single + 1e-9).all()
    assert (weighted < single - 1e-3).any()


class Denormalize(Transform):
    """Undoes a `Normalize` exactly: forward = its inverse, logdet = +sum log std."""

    def __init__(self, norm: Normalize) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x):
        return self.norm.inverse(x), self.norm.log_std.sum().expand(x.shape[0])

    def inverse(self, z):
        return self.norm(z)[0]


@pytest.mark.parametrize("mode", ["global", "per_pixel"])
def test_normalisation_does_not_change_bits_per_dim_when_compensated(mode):
    norm = Normalize(SHAPE, mode)
    with_norm = Flow(Compose(Logit(0.05), norm, Denormalize(norm)), StandardLogistic(SHAPE), SHAPE, n_bits=8)
    without = Flow(Compose(Logit(0.05)), StandardLogistic(SHAPE), SHAPE, n_bits=8)
    with_norm.initialize(torch.rand(64, *SHAPE) * 0.5 + 0.2)
    assert norm.log_std.abs().min() > 0.1, "normalisation must be far from the identity for this test to mean anything"
    x = images()
    torch.manual_seed(7)
    a = with_norm.bits_per_dim(x)
    torch.manual_seed(7)
    b = without.bits_per_dim(x)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-4)


def test_normalize_initialises_once_and_survives_save_load(tmp_path):
    model = NiceFlow(
        shape=SHAPE, width=8, depth=2, preprocessing=Preprocessing(data_range="unit", normalize="per_pixel")
    )
    with pytest.raises(RuntimeError, match="has not been initialised.*flow.initialize"):
        model.eval().sample(2)
    model.initialize(torch.rand(128, *SHAPE) * 0.5)
    norm = model.transform.transforms[0]
    mean = norm.mean.clone()
    model.initialize(torch.rand(8, *SHAPE))  # a later batch must not re-initialise
    torch.testing.assert_close(norm.mean, mean, rtol=0, atol=0)
    save(model, tmp_path / "m.pt")
    loaded = load(tmp_path / "m.pt")
    torch.testing.assert_close(loaded.transform.transforms[0].mean, mean, rtol=0, atol=0)
    assert loaded.sample(3).shape == (3, *SHAPE)


def test_dequantize_quantize_round_trip():
    x = images(64)
    for n_bits in (8, 5, 3):
        xr = reduce_bits(x, n_bits)
        assert int(xr.max()) < 2**n_bits
        y = dequantize(xr, n_bits)
        assert y.min() >= 0 and y.max() < 1
        torch.testing.assert_close(quantize(y, n_bits), (xr * 2 ** (8 - n_bits)).to(torch.uint8), rtol=0, atol=0)


@pytest.mark.parametrize(
    "x, message",
    [
        (torch.rand(2, *SHAPE), "expected discrete images as integers 0..255"),
        (torch.zeros(2, 1, 5, 5, dtype=torch.uint8), r"expected images of shape \[B, 1, 4, 4\]"),
        (torch.full((2, *SHAPE), 300, dtype=torch.int16), "pixel values must lie in 0..255"),
    ],
)
def test_bits_per_dim_rejects_bad_images(x, message):
    with pytest.raises(ValueError, match=message):
        NiceFlow(shape=SHAPE, width=8, depth=2, preprocessing=UNIT).bits_per_dim(x)


def test_log_prob_of_an_image_model_rejects_values_outside_the_unit_interval():
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\].*bits_per_dim"):
        NiceFlow(shape=SHAPE, width=8, depth=2, preprocessing=UNIT).log_prob(torch.rand(2, *SHAPE) * 255)


def test_bits_per_dim_needs_an_image_model():
    with pytest.raises(ValueError, match="needs a model of discrete images"):
        NiceFlow.toy().bits_per_dim(torch.zeros(2, 2, dtype=torch.uint8))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_bits": 0}, "n_bits must be between 1 and 8"),
        ({"n_bits": 9}, "n_bits must be between 1 and 8"),
        ({"n_bits": 8, "logit_alpha": 0.05, "data_range": "centered"}, "use it with data_range='unit'"),
        ({"n_bits": 8, "data_range": "zero_one"}, "data_range must be"),
        ({"n_bits": 8, "normalize": "batch"}, "normalize must be"),
        ({"data_range": "unit", "logit_alpha": 0.6}, "alpha must be in"),
        ({"data_range": "unit", "logit_alpha": 0.0}, r"logit_alpha must be in \(0, 0.5\)"),
    ],
)
def test_bad_preprocessing_options_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NiceFlow(shape=SHAPE, width=8, depth=2, preprocessing=Preprocessing(**kwargs))
