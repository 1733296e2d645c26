"""Flow matching: a continuous normalising flow trained by regression (Lipman et al. 2023; rectified
flow, Liu et al. 2023).

A velocity field ``v(y, t)`` moves noise ``y_0 ~ N(0, I)`` at ``t = 0`` to data ``y_1`` at ``t = 1``
along ``dy/dt = v(y, t)``. Training regresses ``v`` on the straight conditional path
``y_t = (1 - t) y_0 + t y_1``, whose velocity is ``y_1 - y_0``; pairing noise and data by a
minibatch optimal-transport assignment (``pairing="ot"``) straightens the learned paths.

The same conventions as every flow here: ``encode`` goes data -> latent (integrating from ``t = 1``
to ``t = 0``), ``decode`` latent -> data, and ``log_prob`` is exact up to the solver's error by the
instantaneous change of variables ``d log p(y_t) / dt = -div v(y_t, t)``:

    log p(x) = log N(y_0; 0, I) - int_0^1 div v(y_t, t) dt + log|det d(preprocessing)/dx|,

integrated together with the path from data to noise. The divergence is exact (``D`` backward
passes, for small ``D``) or Hutchinson's unbiased estimate ``E[eps^T (dv/dy) eps]`` with ``probes``
Rademacher vectors, fixed along each path. Images are dequantised and preprocessed exactly as for
the coupling flows, so `bits_per_dim` is the same bound on the same data.

Unlike the coupling flows, ``decode(encode(x))`` equals ``x`` only up to the solver's error, which
shrinks as ``steps`` grows (the test suite checks it).

A class-conditional model trained with ``label_dropout > 0`` is also the unconditional one and samples
with classifier-free guidance (`FlowMatching.use_guidance`): ``v = v_u + s (v_c - v_u)``, two network
evaluations per velocity where ``s != 1`` (`lgm.flow.guidance`); ``log_prob`` stays the unguided model's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from lgm.flow.base import Compose, Flow, data_initialization
from lgm.flow.discrete import check_images, dequantize_images
from lgm.flow.guidance import NO_GUIDANCE, check_label_dropout, guide
from lgm.flow.latent import Capabilities, Latent
from lgm.flow.ode import SOLVERS, check_solver, check_time_shift, odeint
from lgm.flow.precision import NETWORK_DTYPES, run_network
from lgm.flow.preprocess import Preprocessing
from lgm.flow.priors import StandardGaussian
from lgm.flow.velocity import VelocityMLP, VelocityUNet

DIVERGENCES = ("auto", "exact", "hutchinson")
PAIRINGS = ("independent", "ot")
EXACT_DIVERGENCE_MAX_DIM = 64  # "auto" uses the exact divergence up to this many dimensions


class FlowMatching(Flow):
    """A continuous flow ``dy/dt = v(y, t)`` trained by flow matching.

    Args:
        shape: shape of one sample: ``2`` for 2-D points, ``(1, 28, 28)`` for MNIST.
        width, depth: the velocity MLP's features per hidden layer and hidden layers (vectors).
        level_widths: the velocity U-Net's channels per resolution, finest first (images).
        embedding_width: features of the time (and class) embedding.
        n_classes: number of classes for a class-conditional model, else ``None``.
        label_dropout: in training, the probability of replacing a label by "no class", so that the model is
            also the unconditional one and can be guided (class-conditional only; 0 for none).
        preprocessing: ``None`` for continuous data (vectors); for images, their bit depth and
            preprocessing (`lgm.flow.Preprocessing`), as for `lgm.flow.Glow`. ``normalize="global"`` or
            ``"per_pixel"`` scales the data to unit variance (set from the first batch), the scale of
            the Gaussian source; its log-determinant enters bits/dim like every preprocessing step's.
        pairing: ``"independent"`` noise-data pairs, or ``"ot"``: each batch's pairs re-matched by an
            exact assignment minimising the total squared distance (minibatch optimal transport).
        solver, steps: the ODE solver (see `lgm.flow.ode`) and its number of steps, for sampling and
            encoding. Change them after training at will (`use_solver`).
        time_shift: the spacing of the fixed steps (`lgm.flow.ode.time_grid`): 1 equal, > 1 shorter
            near the noise (t = 0), < 1 shorter near the data.
        likelihood_solver, likelihood_steps: the solver of `log_prob` (so of bits/dim and the test
            loop). ``"auto"`` is ``dopri5`` for images and the sampling ODE solver for vectors (``dopri5``
            if sampling has none): on images a few fixed steps overstate the likelihood badly (RK4 x 16
            gave 2.63 bits/dim for a FashionMNIST model whose converged value is 3.31).
            ``likelihood_steps=None``: ``steps``.
        divergence: ``"exact"``, ``"hutchinson"`` or ``"auto"`` (exact up to 64 dimensions).
        probes: Hutchinson probe vectors per sample (the estimate's variance falls as 1/probes).
        rtol, atol: tolerances of the adaptive ``dopri5`` solver.
    """

    average_velocity = False  # the network is v(y, t); MeanFlow's is an average velocity over an interval

    def __init__(
        self,
        shape: int | Sequence[int] = 2,
        width: int = 128,
        depth: int = 3,
        level_widths: Sequence[int] = (32, 64, 64),
        embedding_width: int = 64,
        n_classes: int | None = None,
        label_dropout: float = 0.0,
        preprocessing: Preprocessing | None = None,
        pairing: str = "independent",
        solver: str = "rk4",
        steps: int = 32,
        time_shift: float = 1.0,
        likelihood_solver: str = "auto",
        likelihood_steps: int | None = None,
        divergence: str = "auto",
        probes: int = 1,
        rtol: float = 1e-5,
        atol: float = 1e-5,
    ) -> None:
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self._check_sampler(solver, steps)
        check_time_shift(time_shift)
        check_label_dropout(label_dropout)
        if pairing not in PAIRINGS:
            raise ValueError(f"pairing must be one of {PAIRINGS}, got {pairing!r}")
        if divergence not in DIVERGENCES:
            raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
        if probes < 1:
            raise ValueError(f"probes must be at least 1, got {probes}")
        preprocessing = Preprocessing.of(preprocessing)
        if preprocessing is None:
            if len(shape) != 1:
                raise ValueError("continuous data are vectors (shape=D); for images give their preprocessing")
            preprocess, model_shape, n_bits = [], shape, None
        else:
            if len(shape) != 3:
                raise ValueError(f"images need shape (C, H, W), got {shape}")
            (preprocess, model_shape), n_bits = preprocessing.transforms(shape), preprocessing.n_bits
            if preprocessing.noise_std is not None or preprocessing.dequantization != "uniform":
                raise ValueError(
                    "noise augmentation (noise_std) and variational dequantisation are for flows trained by "
                    "likelihood; flow matching takes neither (leave them out of its preprocessing)"
                )
        super().__init__(Compose(*preprocess), StandardGaussian(model_shape), shape, n_bits=n_bits)
        self.preprocessing = preprocessing
        self.model_shape = model_shape
        self.n_classes = n_classes
        self.label_dropout = label_dropout if n_classes else 0.0
        self.velocity = self._velocity_network(width, depth, level_widths, embedding_width, self.average_velocity)
        self.pairing, self.solver, self.steps, self.time_shift = pairing, solver, steps, time_shift
        self.likelihood_solver, self.likelihood_steps = likelihood_solver, likelihood_steps
        check_solver(*self.likelihood_integration)
        self.divergence, self.probes, self.rtol, self.atol = divergence, probes, rtol, atol
        self.last_nfe = 0  # function evaluations of the latest integration
        self.last_network_evaluations = 0  # network evaluations of the latest sampling or encoding
        self.network_dtype: torch.dtype | None = None  # see use_network_precision

    def _velocity_network(
        self, width: int, depth: int, level_widths: Sequence[int], embedding_width: int, interval: bool
    ) -> VelocityMLP | VelocityUNet:
        """The velocity MLP (vectors) or U-Net (images) of this model's classes (and "no class", with label
        dropout), taking the length of a time interval too if ``interval``."""
        embeddings = self.n_classes + 1 if self.label_dropout > 0 else self.n_classes
        if len(self.model_shape) == 1:
            return VelocityMLP(self.model_shape[0], width, depth, embedding_width, embeddings, interval)
        return VelocityUNet(self.model_shape[0], tuple(level_widths), embedding_width, embeddings, interval)

    def use_solver(self, solver: str | None = None, steps: int | None = None, time_shift: float | None = None) -> None:
        """Sample and encode with ``solver``, ``steps`` and ``time_shift`` from now on (``None`` keeps the
        current one); a `ValueError` names the choices for a bad value, and nothing changes then."""
        solver = self.solver if solver is None else solver
        steps = self.steps if steps is None else steps
        time_shift = self.time_shift if time_shift is None else time_shift
        self._check_sampler(solver, steps)
        check_time_shift(time_shift)
        self.solver, self.steps, self.time_shift = solver, steps, time_shift

    def _check_sampler(self, solver: str, steps: int) -> None:
        check_solver(solver, steps)

    def use_likelihood_solver(self, solver: str | None = None, steps: int | None = None) -> None:
        """Integrate `log_prob` with ``solver`` (or ``"auto"``) and ``steps`` from now on (``None`` keeps
        the current one); a `ValueError` names the choices for a bad value, and nothing changes then."""
        solver = self.likelihood_solver if solver is None else solver
        steps = self.likelihood_steps if steps is None else steps
        check_solver(*self._resolve_likelihood_solver(solver, steps))
        self.likelihood_solver, self.likelihood_steps = solver, steps

    @property
    def likelihood_integration(self) -> tuple[str, int]:
        """The ``(solver, steps)`` that `log_prob` integrates with, ``"auto"`` resolved."""
        return self._resolve_likelihood_solver(self.likelihood_solver, self.likelihood_steps)

    def _resolve_likelihood_solver(self, solver: str, steps: int | None) -> tuple[str, int]:
        if solver == "auto":
            solver = self.solver if self.n_bits is None and self.solver in SOLVERS else "dopri5"
        elif solver not in SOLVERS:
            raise ValueError(f"unknown likelihood solver {solver!r}; choose auto or one of {', '.join(SOLVERS)}")
        return solver, self.steps if steps is None else steps

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            exact_inverse=False,
            exact_likelihood=False,
            solver=True,
            objective="fm",
            guidance=self.label_dropout > 0,
        )

    def solver_info(self) -> dict:
        """The latest sampling's or encoding's solver, steps, time shift, velocity evaluations (solver calls)
        and network evaluations (two per guided velocity)."""
        return {
            "solver": self.solver,
            "steps": self.steps,
            "time_shift": self.time_shift,
            "velocity_evaluations": self.last_nfe,
            "network_evaluations": self.last_network_evaluations,
        }

    def likelihood_info(self) -> dict:
        solver, steps = self.likelihood_integration
        return {
            "solver": solver,
            **({} if solver == "dopri5" else {"steps": steps}),
            "divergence": self.divergence,
            "probes": self.probes,
        }

    # -- training ---------------------------------------------------------------------------------

    def objective(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """The flow-matching loss per sample ``[B]``: ``mean_d (v(y_t, t) - (y_1 - y_0))^2`` with
        ``t ~ U[0, 1]``, ``y_1`` the (dequantised, preprocessed) data and ``y_0 ~ N(0, I)``."""
        y1 = self._to_model_space(x, labels)
        y0 = torch.randn_like(y1)
        if self.pairing == "ot":
            y0 = y0[_ot_assignment(y0, y1)]
        t = torch.rand(len(y1), device=y1.device)
        tt = t.view(-1, *[1] * (y1.dim() - 1))
        yt = (1 - tt) * y0 + tt * y1
        classes = self.class_indices(labels, len(y1), y1.device)
        return (self._velocity(yt, t, classes) - (y1 - y0)).square().flatten(1).mean(1)

    def _to_model_space(self, x: Tensor, labels: Tensor | None) -> Tensor:
        """Training data -> the space the field lives in: uint8 images are dequantised and preprocessed."""
        self.check_labels(labels, x.shape[0])
        if self.n_bits is not None:
            check_images(x, self.shape)
            x = dequantize_images(x, self.n_bits)
        self.check_input(x)
        return self.transform(x)[0]

    # -- the ODE ----------------------------------------------------------------------------------

    def use_network_precision(self, precision: str) -> None:
        """As `lgm.flow.Flow.use_network_precision`, for the velocity field in training and in fixed-step
        integration. The adaptive ``dopri5`` always evaluates it in float32: bf16 rounding looks like
        error to its step control, which then takes about 4 times the steps (470 against 116 velocity
        evaluations, for the same bits/dim to 1e-4, on a FashionMNIST model)."""
        super().use_network_precision(precision)
        self.network_dtype = NETWORK_DTYPES[self.network_precision]

    def _velocity(
        self, y: Tensor, t: Tensor, classes: Tensor | None, solver: str | None = None, interval: Tensor | None = None
    ) -> Tensor:
        """``v(y, t)`` of class indices ``classes`` (`class_indices`) in the run's network precision (float32
        under ``solver="dopri5"``), in ``y``'s dtype; for average-velocity networks (`lgm.flow.MeanFlow`),
        over the time ``interval`` ``[B]`` (``None``: 0, the instantaneous velocity)."""
        inputs = (y, t, classes) if interval is None else (y, t, classes, interval)
        return run_network(self.velocity, None if solver == "dopri5" else self.network_dtype, *inputs)

    def _guided_velocity(
        self, y: Tensor, t: Tensor, labels: Tensor | None, solver: str | None = None, interval: Tensor | None = None
    ) -> Tensor:
        """The velocity that sampling follows: ``v_u + s (v_c - v_u)`` for the guidance scale ``s`` (one
        network evaluation where ``s = 1`` or there are no labels, else two); counts them."""
        strong = self._velocity(y, t, self.class_indices(labels, len(y), y.device), solver, interval)
        self.last_network_evaluations += 1
        if self.guidance == NO_GUIDANCE or labels is None:
            return strong
        self.last_network_evaluations += 1
        weak = self._velocity(y, t, self.class_indices(None, len(y), y.device), solver, interval)
        return guide(strong, weak, self.guidance)

    def _integrate(
        self,
        y: Tensor,
        labels: Tensor | None,
        t0: float,
        t1: float,
        solver: str | None = None,
        steps: int | None = None,
    ) -> Tensor:
        """Follow the (guided) velocity from ``t0`` to ``t1`` with ``solver`` and ``steps`` (default: the
        sampling solver's)."""
        solver, steps = solver or self.solver, steps or self.steps
        self.last_network_evaluations = 0

        def dynamics(t: float, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
            return (self._guided_velocity(state[0], torch.full((len(y),), t, device=y.device), labels, solver),)

        (y,), self.last_nfe = odeint(dynamics, (y,), t0, t1, solver, steps, self.rtol, self.atol, self.time_shift)
        return y

    def _integrate_with_logdet(self, y: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor]:
        """Data-space point ``y`` (t = 1) -> ``(y_0, log|det dy_0/dy_1|)`` (= ``-int_0^1 div v dt``)."""
        exact = self.divergence == "exact" or (
            self.divergence == "auto" and math.prod(self.model_shape) <= EXACT_DIVERGENCE_MAX_DIM
        )
        probes = None if exact else torch.randint(0, 2, (self.probes, *y.shape), device=y.device).to(y.dtype) * 2 - 1
        solver, steps = self.likelihood_integration

        def dynamics(t: float, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
            # The divergence needs autograd even when the caller runs under no_grad or inference_mode
            # (Lightning's test loop); a clone made outside inference mode can take part in it.
            with torch.inference_mode(False), torch.enable_grad():
                point = state[0].clone().requires_grad_(True)
                classes = self.class_indices(labels.clone() if labels is not None else None, len(y), y.device)
                v = self._velocity(point, torch.full((len(y),), t, device=y.device), classes, solver)
                div = _exact_divergence(v, point) if probes is None else _hutchinson_divergence(v, point, probes)
            return v.detach(), div.detach()

        start = (y, torch.zeros(len(y), device=y.device, dtype=y.dtype))
        (y0, logdet), self.last_nfe = odeint(dynamics, start, 1.0, 0.0, solver, steps, self.rtol, self.atol)
        return y0, logdet

    # -- the Flow interface -------------------------------------------------------------------------

    def log_prob(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """``log p(x)`` in nats ``[B]``, by integrating the change of variables from data to noise."""
        self.check_input(x)
        self.check_labels(labels, x.shape[0])
        y, pre_logdet = self.transform(x)
        y0, ode_logdet = self._integrate_with_logdet(y, labels)
        return self.prior.log_prob(y0) + ode_logdet + pre_logdet

    def bijection(self, x: Tensor, labels: Tensor | None = None) -> tuple[Latent, Tensor]:
        raise ValueError(
            "a continuous flow (FlowMatching) is invertible only up to its ODE solver's error and has no "
            "closed-form log-det to check: compare decode(encode(x)) with x as model.steps grows instead"
        )

    def encode(self, x: Tensor, labels: Tensor | None = None) -> Latent:
        """Data ``[B, *shape]`` -> latents ``[B, *model_shape]`` (noise at t = 0), without gradients."""
        self.check_input(x)
        self.check_labels(labels, x.shape[0])
        with torch.no_grad():
            return Latent(self._integrate(self.transform(x)[0], labels, 1.0, 0.0))

    def decode(self, latent: Latent, labels: Tensor | None = None) -> Tensor:
        """Latents ``[B, *model_shape]`` -> data ``[B, *shape]``, without gradients."""
        self.check_latent(latent)
        z = latent.levels[0]
        self.check_labels(labels, z.shape[0])
        with torch.no_grad():
            return self.transform.inverse(self._integrate(z, labels, 0.0, 1.0))

    def _draw(self, n: int, temperature: float, labels: Tensor | None) -> Tensor:
        """``n`` samples (see `lgm.flow.Flow.sample`): the initial noise scaled by ``temperature``,
        integrated to ``t = 1``; the number of velocity evaluations is left in ``last_nfe``."""
        return self.decode(Latent(self.prior.sample(n, labels, temperature)), labels)

    @torch.no_grad()
    def initialize(self, x: Tensor, labels: Tensor | None = None) -> None:
        """Initialise data-dependent preprocessing (there is none in the field itself)."""
        with data_initialization(self):
            self.transform(x)


def _exact_divergence(v: Tensor, y: Tensor) -> Tensor:
    """``sum_i dv_i/dy_i`` per sample ``[B]``, one backward pass per dimension."""
    flat = v.flatten(1)
    div = torch.zeros(len(v), device=v.device, dtype=v.dtype)
    for i in range(flat.shape[1]):
        div = div + torch.autograd.grad(flat[:, i].sum(), y, retain_graph=True)[0].flatten(1)[:, i]
    return div


def _hutchinson_divergence(v: Tensor, y: Tensor, probes: Tensor) -> Tensor:
    """Hutchinson's estimate ``mean_k eps_k^T (dv/dy) eps_k`` per sample ``[B]``, ``probes [K, B, ...]``."""
    total = torch.zeros(len(v), device=v.device, dtype=v.dtype)
    for k, eps in enumerate(probes):
        (vjp,) = torch.autograd.grad(v, y, eps, retain_graph=k < len(probes) - 1)
        total = total + (vjp * eps).flatten(1).sum(1)
    return total / len(probes)


@torch.no_grad()
def _ot_assignment(noise: Tensor, data: Tensor) -> Tensor:
    """The permutation of ``noise`` minimising ``sum_i ||noise[perm[i]] - data[i]||^2`` (exact, scipy)."""
    from scipy.optimize import linear_sum_assignment

    cost = torch.cdist(data.flatten(1).float(), noise.flatten(1).float()).square()
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    return torch.as_tensor(cols[rows.argsort()], device=noise.device)
