"""Two-dimensional toy densities: seeded samplers, and closed-form densities where they exist.

Each density is a class with ``sample(n, seed=0) -> Tensor[n, 2]`` (float32) and ``bounds``, a box
that holds practically all of its mass (for plots and grid integrals). Densities known in closed
form (`Banana`, `EightGaussians`) also have ``log_prob(x) -> Tensor[B]`` (nats) and ``entropy()``
where that is closed form too, so that a model's KL divergence to the truth can be measured:
``KL(true || model) = E_true[log p_true(x) - log p_model(x)]``.

A lowercase function per density samples it directly: ``toy.banana(1000, seed=0)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_LOG_2PI = math.log(2 * math.pi)


def _normal_log_prob(x: Tensor, mean: Tensor | float, std: float) -> Tensor:
    return -0.5 * ((x - mean) / std).square() - math.log(std) - 0.5 * _LOG_2PI


class ToyDensity:
    """A 2-D density to sample from. Subclasses implement ``_sample(n, generator)``."""

    name: str = ""
    bounds: tuple[tuple[float, float], tuple[float, float]] = ((-4.0, 4.0), (-4.0, 4.0))
    has_log_prob: bool = False

    def sample(self, n: int, seed: int = 0) -> Tensor:
        """``n`` points ``[n, 2]``; the same ``seed`` always gives the same points."""
        if n < 0:
            raise ValueError(f"n must be non-negative, got {n}")
        generator = torch.Generator().manual_seed(seed)
        return self._sample(n, generator).float()

    def _sample(self, n: int, g: torch.Generator) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class Banana(ToyDensity):
    """The course's banana: ``x2 ~ N(0, 0.5^2)``, ``x1 | x2 ~ N(x2^2, 0.1^2)``; points are ``(x1, x2)``.

    ``(x1, x2) -> (x1 - x2^2, x2)`` has unit Jacobian, so the entropy is that of two independent
    Gaussians: ``H = log(2 pi e s1 s2) = log(2 pi e * 0.1 * 0.5) ~= -0.1578`` nats.
    """

    name = "banana"
    bounds = ((-1.0, 5.0), (-2.5, 2.5))
    has_log_prob = True
    std_x1, std_x2 = 0.1, 0.5

    def _sample(self, n: int, g: torch.Generator) -> Tensor:
        x2 = self.std_x2 * torch.randn(n, generator=g)
        x1 = x2.square() + self.std_x1 * torch.randn(n, generator=g)
        return torch.stack((x1, x2), dim=1)

    def log_prob(self, x: Tensor) -> Tensor:
        x1, x2 = x[:, 0], x[:, 1]
        return _normal_log_prob(x2, 0.0, self.std_x2) + _normal_log_prob(x1, x2.square(), self.std_x1)

    def entropy(self) -> float:
        return math.log(2 * math.pi * math.e * self.std_x1 * self.std_x2)


class EightGaussians(ToyDensity):
    """An equal mixture of 8 isotropic Gaussians (std 0.2) centred on a circle of radius 2."""

    name = "eight_gaussians"
    bounds = ((-3.0, 3.0), (-3.0, 3.0))
    has_log_prob = True
    radius, std = 2.0, 0.2

    def centers(self) -> Tensor:
        angles = torch.arange(8) * (2 * math.pi / 8)
        return self.radius * torch.stack((angles.cos(), angles.sin()), dim=1)

    def _sample(self, n: int, g: torch.Generator) -> Tensor:
        which = torch.randint(0, 8, (n,), generator=g)
        return self.centers()[which] + self.std * torch.randn(n, 2, generator=g)

    def log_prob(self, x: Tensor) -> Tensor:
        centers = self.centers().to(x)
        per_component = _normal_log_prob(x[:, None, :], centers[None], self.std).sum(dim=2)
        return torch.logsumexp(per_component, dim=1) - math.log(8)


class TwoMoons(ToyDensity):
    """Two interleaved half circles with Gaussian noise (std 0.1), centred and scaled by 2."""

    name = "two_moons"
    bounds = ((-3.5, 3.5), (-2.0, 2.0))

    def _sample(self, n: int, g: torch.Generator) -> Tensor:
        t = math.pi * torch.rand(n, generator=g)
        upper = torch.rand(n, generator=g) < 0.5
        x = torch.where(upper, t.cos(), 1 - t.cos())
        y = torch.where(upper, t.sin(), 0.5 - t.sin())
        points = torch.stack((x - 0.5, y - 0.25), dim=1) + 0.1 * torch.randn(n, 2, generator=g)
        return 2 * points


class Circles(ToyDensity):
    """Two concentric circles of radius 2 and 1, equally likely, with radial noise (std 0.08)."""

    name = "circles"
    bounds = ((-3.0, 3.0), (-3.0, 3.0))

    def _sample(self, n: int, g: torch.Generator) -> Tensor:
        radius = torch.where(torch.rand(n, generator=g) < 0.5, 2.0, 1.0) + 0.08 * torch.randn(n, generator=g)
        angle = 2 * math.pi * torch.rand(n, generator=g)
        return radius[:, None] * torch.stack((angle.cos(), angle.sin()), dim=1)


class Checkerboard(ToyDensity):
    """Uniform on the 8 dark squares (side 2) of a 4 x 4 checkerboard covering [-4, 4]^2."""

    name = "checkerboard"
    bounds = ((-4.5, 4.5), (-4.5, 4.5))

    def _sample(self, n: int, g: torch.Generator) -> Tensor:
        x1 = 4 * torch.rand(n, generator=g) - 2
        x2 = torch.rand(n, generator=g) - 2 * torch.randint(0, 2, (n,), generator=g) + torch.floor(x1) % 2
        return 2 * torch.stack((x1, x2), dim=1)


class TwoSpirals(ToyDensity):
    """Two interleaved spiral arms (1.5 turns each, radius up to 3) with Gaussian noise (std 0.1)."""

    name = "two_spirals"
    bounds = ((-4.0, 4.0), (-4.0, 4.0))

    def _sample(self, n: int, g: torch.Generator) -> Tensor:
        # sqrt makes points uniform along the arm rather than crowded at its centre.
        t = 3 * math.pi * torch.rand(n, generator=g).sqrt()
        sign = torch.where(torch.rand(n, generator=g) < 0.5, 1.0, -1.0)
        arm = (t / math.pi)[:, None] * torch.stack((-t.cos(), t.sin()), dim=1)
        return sign[:, None] * arm + 0.1 * torch.randn(n, 2, generator=g)


class Pinwheel(ToyDensity):
    """Five curved blades: radial std 0.3, tangential std 0.1, curvature rate 0.25, scaled by 2."""

    name = "pinwheel"
    bounds = ((-4.0, 4.0), (-4.0, 4.0))
    blades, radial_std, tangential_std, rate = 5, 0.3, 0.1, 0.25

    def _sample(self, n: int, g: torch.Generator) -> Tensor:
        blade = torch.randint(0, self.blades, (n,), generator=g)
        f = torch.randn(n, 2, generator=g) * torch.tensor([self.radial_std, self.tangential_std])
        f[:, 0] += 1.0
        angle = blade * (2 * math.pi / self.blades) + self.rate * f[:, 0].exp()
        cos, sin = angle.cos(), angle.sin()
        rotated = torch.stack((cos * f[:, 0] - sin * f[:, 1], sin * f[:, 0] + cos * f[:, 1]), dim=1)
        return 2 * rotated


TOY_DENSITIES: dict[str, type[ToyDensity]] = {
    cls.name: cls for cls in (Banana, EightGaussians, TwoMoons, Circles, Checkerboard, TwoSpirals, Pinwheel)
}


def get_density(name: str) -> ToyDensity:
    """The toy density called ``name`` (one of `TOY_DENSITIES`)."""
    try:
        return TOY_DENSITIES[name]()
    except KeyError:
        raise ValueError(f"unknown toy density {name!r}; choose one of {sorted(TOY_DENSITIES)}") from None


# Samplers by name: ``toy.banana(n, seed=0) -> Tensor[n, 2]``.
banana = Banana().sample
eight_gaussians = EightGaussians().sample
two_moons = TwoMoons().sample
circles = Circles().sample
checkerboard = Checkerboard().sample
two_spirals = TwoSpirals().sample
pinwheel = Pinwheel().sample
