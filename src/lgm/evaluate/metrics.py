"""Sample-quality metrics computed from features: FID, KID, Inception Score, precision/recall.

Each function takes features already extracted (``[N, d]`` tensors, see `lgm.evaluate.features`), so
the same code serves the classifier and the Inception protocols, and the real data's features can
be cached. FID and KID are torchmetrics' implementations, fed through an identity "extractor";
the Inception Score is torchmetrics' too, on class logits. Precision/recall (Kynkäänniemi et al.
2019, "Improved precision and recall metric for assessing generative models") is written here.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

# From the modules themselves: `torchmetrics.image` exports these only when torch-fidelity is
# installed, which custom feature extractors do not need.
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore
from torchmetrics.image.kid import KernelInceptionDistance


class GivenFeatures(nn.Module):
    """The identity, posing as torchmetrics' feature extractor: ``update`` then receives features."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence torchmetrics' note that KID and IS keep every feature: here they are given, already in memory."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features in buffer.*")
        # One split has no spread: torchmetrics' std() then warns and returns nan, which is the honest answer.
        warnings.filterwarnings("ignore", message=".*degrees of freedom is <= 0.*")
        yield


def _check_pair(real: Tensor, fake: Tensor, minimum: int = 2) -> None:
    if real.dim() != 2 or fake.dim() != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"expected features [N, d] and [M, d] of equal d, got {list(real.shape)} and {list(fake.shape)}"
        )
    if min(len(real), len(fake)) < minimum:
        raise ValueError(
            f"need at least {minimum} samples on each side, got {len(real)} real and {len(fake)} generated"
        )


def fid(real: Tensor, fake: Tensor) -> float:
    """Fréchet distance between Gaussians fit to ``real`` ``[N, d]`` and ``fake`` ``[M, d]`` features.

    ``||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2))``, covariances with the ``N - 1``
    denominator, computed in float64 (torchmetrics' `FrechetInceptionDistance`).
    """
    _check_pair(real, fake)
    metric = FrechetInceptionDistance(feature=GivenFeatures(real.shape[1]))
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    return metric.compute().item()


def kid(real: Tensor, fake: Tensor, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Kernel distance: the unbiased estimate of MMD^2 with the kernel ``(x.y / d + 1)^3``.

    Averaged over ``subsets`` random subsets of ``min(subset_size, N, M)`` samples from each side
    (torchmetrics' `KernelInceptionDistance`, seeded); returns ``(mean, std over subsets)``.
    """
    _check_pair(real, fake)
    size = min(subset_size, len(real), len(fake))
    with _quiet():
        metric = KernelInceptionDistance(feature=GivenFeatures(real.shape[1]), subsets=subsets, subset_size=size)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return mean.item(), std.item()


def inception_score(logits: Tensor, splits: int = 10, seed: int = 0) -> tuple[float, float]:
    """``exp(E_x KL(p(y|x) || p(y)))`` from class logits ``[N, K]``, over ``splits`` random splits.

    Returns ``(mean, std over splits)``. It lies between 1 (every image gets the same prediction)
    and ``K`` (confident predictions, all classes equally often). torchmetrics' `InceptionScore`.
    """
    if logits.dim() != 2 or len(logits) < splits:
        raise ValueError(f"expected logits [N, K] with N >= splits = {splits}, got {list(logits.shape)}")
    with _quiet():
        metric = InceptionScore(feature=GivenFeatures(logits.shape[1]), splits=splits)
    metric.update(logits.double())
    with torch.random.fork_rng(devices=[]), _quiet():
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return mean.item(), std.item()


def knn_radii(x: Tensor, k: int, chunk: int = 1024) -> Tensor:
    """Distance from each row of ``x`` ``[N, d]`` to its ``k``-th nearest other row, ``[N]``."""
    if len(x) <= k:
        raise ValueError(f"k-NN radii with k = {k} need more than {k} samples, got {len(x)}")
    radii = []
    for i in range(0, len(x), chunk):
        d = torch.cdist(x[i : i + chunk], x)
        # The k+1 smallest include the point itself at distance 0.
        radii.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(radii)


def coverage_by_balls(centres: Tensor, radii: Tensor, queries: Tensor, chunk: int = 1024) -> Tensor:
    """For each query ``[M, d]``: does it lie in some ball ``||q - c_i|| <= r_i``? Returns bool ``[M]``."""
    inside = []
    for i in range(0, len(queries), chunk):
        d = torch.cdist(queries[i : i + chunk], centres)
        inside.append((d <= radii.unsqueeze(0)).any(dim=1))
    return torch.cat(inside)


def precision_recall(real: Tensor, fake: Tensor, k: int = 3) -> tuple[float, float]:
    """Kynkäänniemi et al. (2019): k-NN manifold precision and recall of ``fake`` against ``real``.

    Each set's manifold is the union of balls around its points with radius the distance to the
    ``k``-th nearest neighbour in the same set. Precision: fraction of generated samples inside
    the real manifold; recall: fraction of real samples inside the generated manifold.
    Features ``[N, d]`` and ``[M, d]`` (float64 distances).
    """
    _check_pair(real, fake, minimum=k + 1)
    real, fake = real.double(), fake.double()
    precision = coverage_by_balls(real, knn_radii(real, k), fake).double().mean().item()
    recall = coverage_by_balls(fake, knn_radii(fake, k), real).double().mean().item()
    return precision, recall
