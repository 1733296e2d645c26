"""Variational dequantisation: q's density by brute force, the uniform case exactly, the bound's order."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import randomise
from torch import Tensor, nn

from lgm.flow import FlowMatching, Glow, NiceFlow, Preprocessing, load, save
from lgm.flow.dequantization import VariationalDequantizer
from lgm.flow.discrete import dequantize


def images(n: int, shape=(1, 4, 4), seed: int = 0) -> Tensor:
    return torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_log_q_is_the_change_of_variables_of_the_noise_map():
    dequantizer = randomise(VariationalDequantizer((1, 2, 3), width=4, steps=3), seed=1).double()
    x = images(1, (1, 2, 3)).double()
    eps = torch.randn(1, 1, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    u, log_q = dequantizer.transform(eps, x, 8)
    assert ((u > 0) & (u < 1)).all()
    jacobian = torch.autograd.functional.jacobian(lambda e: dequantizer.transform(e.view(1, 1, 2, 3), x, 8)[0], eps)
    log_det = torch.linalg.slogdet(jacobian.reshape(6, 6))[1]
    log_logistic = (torch.nn.functional.logsigmoid(eps) + torch.nn.functional.logsigmoid(-eps)).sum()
    torch.testing.assert_close(log_q, (log_logistic - log_det).unsqueeze(0))


def test_an_untrained_q_is_uniform():
    dequantizer = VariationalDequantizer((1, 8, 8))
    x = images(500, (1, 8, 8)).float()
    u, log_q = dequantizer(x, 8)
    assert log_q.abs().max() < 1e-4  # q = 1 on the unit cube
    # u ~ U(0, 1): its empirical distribution function is within Kolmogorov-Smirnov's 0.1% bound.
    sorted_u = u.flatten().sort().values.double()
    cdf = torch.arange(1, len(sorted_u) + 1, dtype=torch.float64) / len(sorted_u)
    assert (sorted_u - cdf).abs().max() < 1.95 / math.sqrt(len(sorted_u))


class UniformNoise(nn.Module):
    """``q = U[0, 1)``: ``log q = 0``, drawn as `lgm.flow.discrete.dequantize` draws it."""

    def forward(self, x: Tensor, n_bits: int) -> tuple[Tensor, Tensor]:
        return torch.rand(x.shape, dtype=x.dtype), x.new_zeros(x.shape[0])


def test_a_uniform_q_gives_the_uniform_bound_exactly():
    flow = Glow((1, 4, 4), levels=1, flow_steps=2, width=8)
    flow.initialize(images(16).float() / 256)
    randomise(flow, seed=3, std=0.1)
    uniform = Glow((1, 4, 4), levels=1, flow_steps=2, width=8)
    uniform.load_state_dict(flow.state_dict())
    flow.dequantizer = UniformNoise()
    x = images(8, seed=4)
    for k in (1, 3):
        torch.manual_seed(5)
        expected = uniform.bits_per_dim(x, dequant_samples=k)
        torch.manual_seed(5)
        assert torch.equal(flow.bits_per_dim(x, dequant_samples=k), expected)


def test_a_trained_q_tightens_the_bound_and_stays_above_the_importance_weighted_one():
    # Constant images: the data-initialised flow is a narrow Gaussian inside each pixel's bin, so uniform
    # noise is a poor q there, and the best q follows the flow's density.
    torch.manual_seed(0)
    flow = Glow((1, 4, 4), levels=1, flow_steps=2, width=8, preprocessing=Preprocessing(dequantization="variational"))
    assert flow.dequantization == "variational"
    x = torch.full((32, 1, 4, 4), 100, dtype=torch.uint8)
    flow.initialize(dequantize(x, 8))
    optimizer = torch.optim.Adam(flow.dequantizer.parameters(), lr=1e-2)  # the flow fixed, q alone trained
    for _ in range(60):
        loss = flow.bits_per_dim(x).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        draws = torch.stack([flow.bits_per_dim(x) for _ in range(20)]).flatten()
        bound, bound_se = draws.mean(), draws.std() / math.sqrt(len(draws))
        importance_weighted = flow.bits_per_dim(x, dequant_samples=64).mean()
        q, flow.dequantizer = flow.dequantizer, None
        uniform = torch.stack([flow.bits_per_dim(x) for _ in range(20)]).mean()
        flow.dequantizer = q
    assert importance_weighted <= bound + bound_se  # the single-sample bound is the looser one
    assert bound < uniform - 0.05  # the learned q gives a tighter bound than uniform noise


def test_variational_dequantisation_is_saved_and_checked(tmp_path):
    flow = NiceFlow((1, 4, 4), couplings=2, width=8, depth=1, preprocessing=Preprocessing(dequantization="variational"))
    randomise(flow.dequantizer, seed=7)
    save(flow, tmp_path / "nice.pt")
    loaded = load(tmp_path / "nice.pt")
    assert loaded.dequantization == "variational"
    x = images(4)
    torch.manual_seed(8)
    expected = flow.bits_per_dim(x)
    torch.manual_seed(8)
    torch.testing.assert_close(loaded.bits_per_dim(x), expected)
    assert NiceFlow((1, 4, 4), preprocessing=Preprocessing()).dequantization == "uniform"
    with pytest.raises(ValueError, match="dequantization must be one of uniform, variational"):
        Preprocessing(dequantization="learned")
    with pytest.raises(ValueError, match="noise augmentation replaces dequantisation"):
        Preprocessing(dequantization="variational", noise_std=0.05)
    with pytest.raises(ValueError, match="flow matching takes neither"):
        FlowMatching((1, 8, 8), preprocessing=Preprocessing(dequantization="variational"))
    with pytest.raises(ValueError, match=r"variational dequantisation is for images \(C, H, W\)"):
        VariationalDequantizer((16,))
