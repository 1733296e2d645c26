"""Glow and RealNVP as models: exact log-likelihoods, round trips, priors, temperature, errors."""

from __future__ import annotations

import pytest
import torch
from helpers import randomise

from lgm.flow import (
    ActNorm,
    Glow,
    ImageCoupling,
    InvConv1x1,
    Latent,
    Preprocessing,
    RealNVP,
    load,
    save,
)
from lgm.flow.base import data_initialization
from lgm.flow.nets import glow_net
from lgm.flow.priors import gaussian_log_prob

# A logit with a tiny alpha: images in [0, 1] map to the whole line, so no sample is clamped.
UNIT_NO_CLAMP = Preprocessing(data_range="unit", logit_alpha=1e-12)


def tiny_glow(**kwargs):
    return Glow(**{**dict(shape=(1, 4, 4), levels=2, flow_steps=2, width=8), **kwargs})


def tiny_realnvp(**kwargs):
    return RealNVP(**{**dict(shape=(3, 4, 4), levels=2, width=8, depth=1, learned_prior=True), **kwargs})


def ready(model, seed=0, std=0.1):
    """Initialise actnorms from data, then give every parameter random values (no identity layers)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(32, *model.shape, generator=g)
    labels = torch.randint(0, model.n_classes, (32,), generator=g) if model.n_classes else None
    model.initialize(x, labels)
    return randomise(model, seed=seed, std=std).double().eval()


def brute_force_log_prob(model, x, labels=None):
    """log p(x) = sum of the priors' log-densities of the latents + log|det d(latents)/dx| (autograd)."""
    out = []
    for i in range(len(x)):
        xi = x[i : i + 1]
        yi = labels[i : i + 1] if labels is not None else None

        def flat_latents(v):
            return model.encode(v.reshape(xi.shape)).flatten().reshape(-1)

        jac = torch.autograd.functional.jacobian(flat_latents, xi.reshape(-1))
        latents = model.encode(xi)
        # Rebuild each split's conditioning: the kept half is what the next level received.
        h = model.transform(xi)[0]
        log_p = torch.zeros((), dtype=x.dtype)
        for level, split in zip(model.levels, model.split_priors):
            h = level(h)[0]
            h, z = h.chunk(2, dim=1)
            log_p = log_p + split.log_prob(z, yi, context=h)[0]
        log_p = log_p + model.prior.log_prob(latents[-1], yi)[0]
        out.append(log_p + torch.linalg.slogdet(jac).logabsdet)
    return torch.stack(out)


@pytest.mark.parametrize(
    "build",
    [
        lambda: tiny_glow(),
        lambda: tiny_glow(mixing="conv", coupling="additive", learned_prior=False),
        lambda: tiny_glow(
            shape=(3, 4, 4), n_classes=3, preprocessing=Preprocessing(data_range="unit", logit_alpha=0.05)
        ),
        lambda: tiny_realnvp(),
        lambda: tiny_realnvp(
            shape=(1, 4, 4),
            preprocessing=Preprocessing(data_range="unit", logit_alpha=0.05, normalize="per_pixel"),
            learned_prior=False,
        ),
    ],
    ids=["glow", "glow-additive-plainconv", "glow-conditional-logit", "realnvp", "realnvp-normalized"],
)
def test_log_prob_matches_priors_plus_autograd_jacobian(build):
    model = ready(build())
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, *model.shape, generator=g, dtype=torch.float64) * 0.9 + 0.05
    labels = torch.tensor([0, 2, 1]) if model.n_classes else None
    torch.testing.assert_close(model.log_prob(x, labels), brute_force_log_prob(model, x, labels), rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize(
    "build, bound",
    [
        (lambda: Glow(shape=(1, 28, 28), levels=2, flow_steps=4, width=16), 1e-4),
        (lambda: Glow(shape=(3, 32, 32), levels=3, flow_steps=2, width=16), 1e-4),
        (lambda: RealNVP(shape=(1, 28, 28), levels=2, width=16, depth=1), 1e-4),
    ],
    ids=["glow-28", "glow-32", "realnvp-28"],
)
def test_round_trip_in_float32(build, bound):
    """decode(encode(x)) == x within ``bound`` (max abs error) in float32, with random weights."""
    torch.manual_seed(0)
    model = build()
    model.initialize(torch.rand(16, *model.shape))
    randomise(model, std=0.05).eval()
    x = torch.rand(4, *model.shape)
    with torch.no_grad():
        latents = model.encode(x)
        assert len(latents) == len(model.levels)
        assert (model.decode(latents) - x).abs().max() < bound


def test_zero_initialised_glow_starts_linear():
    """With zero-initialised coupling nets, exp scales and fresh learned priors, exactly: every coupling is
    the identity, every prior is N(0, I), so the flow is linear and its log-det is the same for all inputs."""
    model = tiny_glow(scale="exp", shape=(1, 8, 8)).double()
    x = torch.rand(16, 1, 8, 8, dtype=torch.float64)
    model.initialize(x)
    for coupling in (m for m in model.modules() if isinstance(m, ImageCoupling)):
        h = torch.randn(5, 2 * coupling.net[0].in_channels, 2, 2, dtype=torch.float64)
        z, logdet = coupling(h)
        torch.testing.assert_close(z, h, rtol=0, atol=0)
        assert (logdet == 0).all()
    latents = model.encode(x)
    log_prior = sum(gaussian_log_prob(z, torch.zeros_like(z), torch.zeros_like(z)) for z in latents)
    logdet = model.log_prob(x) - log_prior
    torch.testing.assert_close(logdet, logdet[:1].expand_as(logdet), rtol=0, atol=1e-9)


def test_actnorm_initialises_to_zero_mean_unit_variance_once():
    layer = ActNorm(3)
    x = 2 + 5 * torch.randn(256, 3, 4, 4)
    with pytest.raises(RuntimeError, match="ActNorm has not been initialised"):
        layer(x)  # outside data_initialization, even in training mode
    with data_initialization(layer):
        z, _ = layer(x)
        torch.testing.assert_close(z.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
        torch.testing.assert_close(z.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4, rtol=0)
        bias = layer.bias.detach().clone()
        layer(torch.randn(8, 3, 4, 4))  # a second batch must not re-initialise
    torch.testing.assert_close(layer.bias.detach(), bias, rtol=0, atol=0)

    fresh = ActNorm(3)
    fresh.load_state_dict(layer.state_dict())
    with data_initialization(fresh):
        fresh(torch.randn(8, 3, 4, 4) * 100)  # loading counts as initialised
    torch.testing.assert_close(fresh.bias.detach(), bias, rtol=0, atol=0)


def test_lu_and_plain_1x1_convolutions_agree():
    lu, plain = InvConv1x1(6, lu=True, seed=4).double(), InvConv1x1(6, lu=False, seed=4).double()
    randomise(lu, std=0.3)
    with torch.no_grad():
        plain.weight.copy_(lu.matrix())
    x = torch.randn(5, 6, 3, 3, dtype=torch.float64)
    (z1, ld1), (z2, ld2) = lu(x), plain(x)
    torch.testing.assert_close(z1, z2)
    torch.testing.assert_close(ld1, ld2)


def test_orthogonal_start_and_cached_inverse_follow_the_weights():
    conv = InvConv1x1(4, lu=True, seed=0).double()
    w = conv.matrix()
    torch.testing.assert_close(w @ w.T, torch.eye(4, dtype=torch.float64), atol=1e-6, rtol=0)  # made in float32
    conv.eval()
    z = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    with torch.no_grad():
        first = conv.inverse(z)
        assert conv._inverse.value is not None
        conv.upper.add_(0.3)  # an optimiser step changes the weights in place
        torch.testing.assert_close(conv(conv.inverse(z))[0], z)
        assert not torch.allclose(conv.inverse(z), first)


def test_cached_inverse_is_only_used_without_autograd():
    """With gradients on, every inverse has its own graph (a cached one would be freed by the first
    backward); a value cached in inference mode is not handed to ordinary no-grad code."""
    conv = InvConv1x1(4, lu=True, seed=0).double().eval()
    z = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    for _ in range(2):
        conv.inverse(z).square().sum().backward()
    assert conv._inverse.value is None and conv.upper.grad is not None
    with torch.inference_mode():
        conv.inverse(z)
    with torch.no_grad():
        w_inv = conv._inverse.get(conv, lambda: torch.linalg.inv(conv.matrix()))
    assert not w_inv.is_inference()
    torch.testing.assert_close(w_inv @ conv.matrix().detach(), torch.eye(4, dtype=torch.float64))


def test_samples_are_ordinary_tensors_and_sampling_leaves_no_graph():
    model = ready(tiny_glow(), std=0.05).eval()
    x = model.sample(4, temperature=0.7)
    assert not x.is_inference() and not x.requires_grad
    z = model.encode(x)  # usable by autograd code afterwards
    sum(v.sum() for v in z).backward()


def test_temperature_zero_decodes_the_prior_means():
    model = ready(tiny_glow(), std=0.05)
    x = model.sample(3, temperature=0.0)
    torch.testing.assert_close(x, x[:1].expand_as(x))
    latents = model.encode(x)
    h = latents[-1]
    torch.testing.assert_close(h, model.prior.params(3, None)[0], atol=1e-6, rtol=0)
    mean_of_split, _ = model.split_priors[0].params(model.levels[1].inverse(h), None)
    torch.testing.assert_close(latents[0], mean_of_split, atol=1e-6, rtol=0)


def test_temperature_scales_every_level():
    # A logit with a tiny alpha maps onto (0, 1) but for 1e-12, so clamping never changes a sample and
    # encode recovers the latents.
    model = ready(tiny_glow(learned_prior=False, preprocessing=UNIT_NO_CLAMP), std=0.05)
    torch.manual_seed(0)
    z_hot = model.encode(model.sample(2000, temperature=1.0))
    torch.manual_seed(0)
    z_cold = model.encode(model.sample(2000, temperature=0.5))
    for hot, cold in zip(z_hot, z_cold):
        torch.testing.assert_close(cold, 0.5 * hot, atol=1e-4, rtol=1e-4)


def test_class_conditional_priors_depend_on_the_label():
    model = ready(tiny_glow(n_classes=4), std=0.2)
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64)
    a = model.log_prob(x, torch.tensor([0, 0]))
    b = model.log_prob(x, torch.tensor([3, 3]))
    assert not torch.allclose(a, b)
    assert model.sample(5, 0.7, labels=torch.full((5,), 2)).shape == (5, 1, 4, 4)
    with pytest.raises(ValueError, match="class-conditional .* pass labels"):
        model.log_prob(x)
    with pytest.raises(ValueError, match=r"labels must lie in 0..3, got \[0, 4\]"):
        model.log_prob(x, torch.tensor([0, 4]))
    with pytest.raises(ValueError, match=r"integer tensor of shape \[2\]"):
        model.log_prob(x, torch.tensor([1]))  # would broadcast silently
    with pytest.raises(ValueError, match=r"integer tensor of shape \[2\]"):
        model.log_prob(x, torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"integer tensor of shape \[3\]"):
        model.sample(3, labels=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="not class-conditional"):
        tiny_glow().log_prob(x.float(), torch.tensor([0, 1]))


def test_temperature_scales_every_level_of_learned_priors():
    """z = mean(h) + T * std(h) * eps at every level: the standardised noise is T * eps."""
    model = ready(tiny_glow(preprocessing=UNIT_NO_CLAMP), std=0.05)
    assert model.prior.mean.abs().sum() > 0 and model.split_priors[0].conv.conv.weight.abs().sum() > 0

    def standardised_noise(x):
        z_fine, z_top = model.encode(x)
        mean, log_std = model.prior.params(len(x), None)
        h = model.levels[1].inverse(z_top)
        split_mean, split_log_std = model.split_priors[0].params(h, None)
        return (z_top - mean) / log_std.exp(), (z_fine - split_mean) / split_log_std.exp()

    torch.manual_seed(0)
    hot = standardised_noise(model.sample(500, temperature=1.0))
    torch.manual_seed(0)
    cold = standardised_noise(model.sample(500, temperature=0.6))
    for h, c in zip(hot, cold):
        torch.testing.assert_close(c, 0.6 * h, atol=1e-5, rtol=1e-5)


def test_gaussian_log_prob_matches_torch_distributions():
    z, mean, log_std = torch.randn(3, 2, 4, 4, dtype=torch.float64).unbind(0)
    expected = torch.distributions.Normal(mean, log_std.exp()).log_prob(z).sum()
    torch.testing.assert_close(gaussian_log_prob(z[None], mean[None], log_std[None])[0], expected)


def test_decode_names_the_latent_shapes_it_needs():
    model = tiny_glow()
    with pytest.raises(
        ValueError,
        match=(
            r"one tensor \[B, \*s\] per level for s in \[\(2, 2, 2\), \(8, 1, 1\)\].*got \[\(2, 2, 2\), "
            r"\(4, 1, 1\)\]"
        ),
    ):
        model.decode(Latent([torch.zeros(1, 2, 2, 2), torch.zeros(1, 4, 1, 1)]))
    with pytest.raises(ValueError, match="got list"):
        model.decode([torch.zeros(1, 2, 2, 2), torch.zeros(1, 8, 1, 1)])


def test_interpolation_over_all_or_the_first_levels():
    model = ready(tiny_glow(preprocessing=UNIT_NO_CLAMP), std=0.05)  # no clamping, see above
    xa, xb = torch.rand(2, 1, 4, 4, dtype=torch.float64), torch.rand(2, 1, 4, 4, dtype=torch.float64)
    frames = model.interpolate(xa, xb, steps=5)
    assert frames.shape == (5, 2, 1, 4, 4)
    torch.testing.assert_close(frames[0], xa, atol=1e-6, rtol=0)
    torch.testing.assert_close(frames[-1], xb, atol=1e-6, rtol=0)
    partial_frames = model.interpolate(xa, xb, steps=3, levels=1)
    end = model.encode(partial_frames[-1])
    torch.testing.assert_close(end[0], model.encode(xb)[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(end[1], model.encode(xa)[1], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="levels must be between 0 and 2"):
        model.interpolate(xa, xb, levels=3)


def test_save_load_keeps_actnorm_state(tmp_path):
    model = ready(tiny_glow(n_classes=2), std=0.05).float()
    save(model, tmp_path / "glow.pt")
    loaded = load(tmp_path / "glow.pt")
    x, labels = torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 0, 1])
    torch.testing.assert_close(loaded.log_prob(x, labels), model.log_prob(x, labels))
    loaded.initialize(torch.rand(4, 1, 4, 4) * 0.1, labels)  # a no-op for a loaded model
    torch.testing.assert_close(loaded.eval().log_prob(x, labels), model.log_prob(x, labels))


def test_sides_not_divisible_name_the_fix():
    with pytest.raises(ValueError, match=r"28x28 are not divisible by 2\^3 = 8.*pad_to"):
        Glow(shape=(1, 28, 28), levels=3)
    assert Glow(shape=(1, 28, 28), levels=3, flow_steps=1, width=4, preprocessing=Preprocessing(pad_to=32)).shape == (
        1,
        28,
        28,
    )


def test_channel_coupling_needs_an_even_channel_count():
    with pytest.raises(ValueError, match="needs an even count; got 3"):
        ImageCoupling(3, glow_net, mask="channel")


@pytest.mark.parametrize("training", [False, True])
def test_sampling_before_initialisation_is_refused_and_initialises_nothing(training):
    model = tiny_glow().train(training)
    with pytest.raises(RuntimeError, match="ActNorm has not been initialised"):
        model.sample(2)
    assert not any(bool(m.initialized) for m in model.modules() if isinstance(m, ActNorm))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mixing": "random"}, "unknown mixing 'random'"),
        ({"coupling": "spline"}, "coupling must be 'affine' or 'additive'"),
        ({"scale": "relu"}, "unknown scale function 'relu'"),
        ({"levels": 0}, "levels and flow_steps must be at least 1"),
        ({"preprocessing": {"n_bits": 9}}, "n_bits must be between 1 and 8"),
        ({"n_classes": 0}, "n_classes must be at least 1"),
    ],
)
def test_bad_glow_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_glow(**kwargs)
