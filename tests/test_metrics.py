"""Sample-quality metrics against closed forms and brute-force oracles."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.linalg
import torch

from lgm.evaluate.metrics import fid, inception_score, kid, knn_radii, precision_recall


def gaussian(n: int, d: int, seed: int, mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
    return mean + std * torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def fid_oracle(a: torch.Tensor, b: torch.Tensor) -> float:
    """The Fréchet distance of the sample means and covariances, with scipy's matrix square root."""
    a, b = a.numpy(), b.numpy()
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(ca @ cb).real
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(ca + cb - 2 * root))


def test_fid_of_a_set_with_itself_is_zero():
    a = gaussian(500, 16, 0)
    assert abs(fid(a, a)) < 1e-8


def test_fid_matches_the_closed_form_of_sample_statistics():
    a = gaussian(400, 8, 0)
    b = gaussian(300, 8, 1, mean=0.5, std=torch.linspace(0.5, 2, 8).double())
    assert fid(a, b) == pytest.approx(fid_oracle(a, b), rel=1e-8)


def test_fid_of_a_shifted_gaussian_approaches_the_population_value():
    # N(0, I) vs N(mu, I) in d dimensions: FID = ||mu||^2; N(0, I) vs N(0, s^2 I): d (1 - s)^2.
    # Tolerances are about 4 standard errors of the estimates at this n.
    d, n = 4, 40_000
    assert fid(gaussian(n, d, 0), gaussian(n, d, 1, mean=1.5)) == pytest.approx(d * 1.5**2, abs=0.17)
    assert fid(gaussian(n, d, 2), gaussian(n, d, 3, std=2.0)) == pytest.approx(d * 1.0, abs=0.1)


def mmd_unbiased_oracle(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD^2 with the kernel (x.y / d + 1)^3, by explicit loops over pairs."""
    d = x.shape[1]

    def k(a, b):
        return (float(a @ b) / d + 1) ** 3

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(n), 2)) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_kid_on_whole_sets_is_the_unbiased_mmd():
    x, y = gaussian(12, 3, 0), gaussian(12, 3, 1, mean=0.3)
    mean, std = kid(x, y, subsets=3, subset_size=12)
    assert mean == pytest.approx(mmd_unbiased_oracle(x, y), rel=1e-9)
    assert std == pytest.approx(0, abs=1e-12)  # every "subset" is the whole set, permuted


def test_kid_is_unbiased_for_equal_distributions_on_small_samples():
    values = torch.tensor(
        [kid(gaussian(20, 4, 2 * s), gaussian(20, 4, 2 * s + 1), subsets=1, subset_size=20)[0] for s in range(300)]
    )
    stderr = values.std() / len(values) ** 0.5
    assert abs(values.mean()) < 3 * stderr
    # The biased (V-statistic) estimate would sit well above zero: the test can tell the difference.
    assert values.std() > 0


def test_kid_grows_with_the_distance_between_distributions():
    a = gaussian(300, 4, 0)
    near, far = (
        kid(a, gaussian(300, 4, 1, mean=0.2), subset_size=100)[0],
        kid(a, gaussian(300, 4, 2, mean=1.0), subset_size=100)[0],
    )
    assert 0 < near < far


def test_inception_score_bounds():
    assert inception_score(torch.zeros(100, 10))[0] == pytest.approx(1.0)
    confident_uniform = 50.0 * torch.eye(10).repeat(30, 1)
    assert inception_score(confident_uniform, splits=1)[0] == pytest.approx(10.0, rel=1e-6)
    assert inception_score(50.0 * torch.eye(10)[torch.zeros(300, dtype=torch.long)])[0] == pytest.approx(1.0)


def test_inception_score_needs_enough_images():
    with pytest.raises(ValueError, match="splits"):
        inception_score(torch.zeros(5, 10), splits=10)


def test_knn_radii_match_brute_force():
    x = gaussian(50, 3, 0)
    dist = torch.cdist(x, x)
    expected = dist.sort(dim=1).values[:, 3]  # column 0 is the point itself
    assert torch.allclose(knn_radii(x, 3, chunk=7), expected)


def precision_recall_oracle(real: torch.Tensor, fake: torch.Tensor, k: int) -> tuple[float, float]:
    def covered(centres, queries):
        radii = torch.cdist(centres, centres).sort(dim=1).values[:, k]
        return np.mean([any(float((q - c).norm()) <= float(r) for c, r in zip(centres, radii)) for q in queries])

    return covered(real, fake), covered(fake, real)


def test_precision_recall_identical_disjoint_and_partial():
    a = gaussian(200, 5, 0)
    assert precision_recall(a, a) == (1.0, 1.0)
    assert precision_recall(a, gaussian(200, 5, 1, mean=100.0)) == (0.0, 0.0)
    real, fake = gaussian(80, 2, 2), gaussian(60, 2, 3, mean=1.0, std=0.5)
    assert precision_recall(real, fake) == pytest.approx(precision_recall_oracle(real, fake, 3))


def test_feature_shapes_are_checked():
    with pytest.raises(ValueError, match="equal d"):
        fid(torch.zeros(10, 3), torch.zeros(10, 4))
    with pytest.raises(ValueError, match="at least 2"):
        fid(torch.zeros(10, 3), torch.zeros(1, 3))
