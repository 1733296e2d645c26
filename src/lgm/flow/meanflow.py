"""MeanFlow (Geng et al. 2025, "Mean Flows for One-step Generative Modeling"): a flow-matching model
whose network is the *average* velocity over a time interval, so that one evaluation crosses it.

In the convention of `lgm.flow.FlowMatching` (noise at ``t = 0``, data at ``t = 1``), the flow map of the
velocity field ``v`` moves a point ``y_s`` at time ``s`` to the time ``t >= s``:

    y_t = y_s + (t - s) u(y_s, s, t),    u(y_s, s, t) = 1 / (t - s) int_s^t v(y_tau, tau) dtau,

``y_tau`` the ODE path through ``y_s``. Differentiating ``(t - s) u`` along the path in ``s`` gives the
MeanFlow identity

    u(y_s, s, t) = v(y_s, s) + (t - s) du/ds,    du/ds = (d_y u) v + d_s u   (t held),

whose right side costs one Jacobian-vector product of the network (``torch.func.jvp``, tangent
``(v, 1)`` in ``(y, s)``). Training regresses ``u`` on it under a stop-gradient, with ``v`` either the
conditional velocity ``y_1 - y_0`` (from scratch: the identity is linear in ``v``, so the regression's
minimiser is the true average velocity) or a trained flow-matching model's velocity (``teacher=True``,
distillation: a continuous-time consistency distillation of the whole flow map). At ``s = t`` the loss
is flow matching's, and ``u(y, t, t) = v(y, t)``: ``log_prob`` integrates the ODE of this
instantaneous velocity exactly as `FlowMatching` does (solver error aside), whatever the sampler.

The network is FlowMatching's with a second time input, the interval ``t - s``, whose embedding
starts at zero (`lgm.flow.velocity.Conditioning`): a new MeanFlow started from a trained FlowMatching
(`MeanFlow.start_from`) is that model at every interval. Sampling with ``solver="flow_map"`` takes
``steps`` jumps of the flow map on the time grid (`lgm.flow.ode.time_grid`), one network evaluation
each; the ODE solvers follow ``u(y, t, t)`` instead. Encoding (data -> noise) always integrates that
ODE with the likelihood solver: the flow map is trained forward in time only. Guided sampling combines
average velocities, ``u_u + s (u_c - u_u)``: at ``s != 1`` an approximation of the guided field's map.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import Tensor

from lgm.flow.base import Flow
from lgm.flow.guidance import NO_GUIDANCE, check_guidance_scale, guide
from lgm.flow.latent import Capabilities
from lgm.flow.matching import FlowMatching, _ot_assignment
from lgm.flow.ode import SOLVERS, check_solver, time_grid
from lgm.flow.precision import run_network
from lgm.flow.preprocess import Preprocessing

FLOW_MAP = "flow_map"  # the sampler of jumps of the learned flow map
ADAPTIVE_WEIGHT_OFFSET = 1e-3  # MeanFlow's c in the adaptive weight 1 / (error + c)^p


class MeanFlow(FlowMatching):
    """A flow-matching model of the average velocity ``u(y, s, t)`` (see the module docstring).

    Takes `FlowMatching`'s arguments (the default sampler here is one flow-map jump) and:

    Args:
        flow_map_fraction: the fraction of training pairs with ``s < t``; the rest have ``s = t``
            (flow matching). MeanFlow's 0.25.
        time_mean, time_std: training times are ``sigmoid(N(time_mean, time_std^2))``; ``s, t`` are two
            such times, sorted. The default (0.4, 1) is MeanFlow's best, leaning to the data (t = 1).
        weighting_power: the loss of a sample is ``e / (e + 1e-3)^p`` with ``e`` its mean squared error,
            the weight without gradient (MeanFlow's adaptive weighting, ``p = 1``; 0: ``e`` itself).
        teacher: distil a trained `FlowMatching` (`start_from` copies its velocity field into a frozen
            ``teacher`` network, whose velocity replaces ``y_1 - y_0`` in the target). Saved with the model.
        teacher_guidance: distil the teacher's classifier-free guided velocity ``v_u + w (v_c - v_u)`` at
            this scale ``w`` (`lgm.flow.guidance`) for labelled pairs, so that the student samples guided
            images at its own scale 1, in one evaluation per jump (MeanFlow's guidance in the target).
            1: the conditional velocity itself. Needs ``teacher`` and label dropout (the "no class"
            velocity). The student's instantaneous velocity is then the guided field's, and so is the
            density ``log_prob`` reports.
    """

    average_velocity = True

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
        solver: str = FLOW_MAP,
        steps: int = 1,
        time_shift: float = 1.0,
        likelihood_solver: str = "auto",
        likelihood_steps: int | None = None,
        divergence: str = "auto",
        probes: int = 1,
        rtol: float = 1e-5,
        atol: float = 1e-5,
        flow_map_fraction: float = 0.25,
        time_mean: float = 0.4,
        time_std: float = 1.0,
        weighting_power: float = 1.0,
        teacher: bool = False,
        teacher_guidance: float = NO_GUIDANCE,
    ) -> None:
        if not 0 <= flow_map_fraction <= 1:
            raise ValueError(f"flow_map_fraction must be in [0, 1], got {flow_map_fraction}")
        if not time_std > 0 or weighting_power < 0:
            raise ValueError(f"need time_std > 0 and weighting_power >= 0, got {time_std} and {weighting_power}")
        teacher_guidance = check_guidance_scale(teacher_guidance)
        if teacher_guidance != NO_GUIDANCE and not (teacher and n_classes and label_dropout > 0):
            raise ValueError(
                "teacher_guidance needs a class-conditional teacher trained with label dropout: set teacher=True, "
                "n_classes and label_dropout > 0, or leave teacher_guidance at 1"
            )
        super().__init__(
            shape,
            width,
            depth,
            level_widths,
            embedding_width,
            n_classes,
            label_dropout,
            preprocessing,
            pairing,
            solver,
            steps,
            time_shift,
            likelihood_solver,
            likelihood_steps,
            divergence,
            probes,
            rtol,
            atol,
        )
        self.flow_map_fraction, self.time_mean, self.time_std = flow_map_fraction, time_mean, time_std
        self.weighting_power, self.teacher_guidance = weighting_power, teacher_guidance
        self.teacher = None
        if teacher:
            self.teacher = self._velocity_network(width, depth, level_widths, embedding_width, interval=False)
            self.teacher.requires_grad_(False)
        # Whether start_from has given the teacher its weights (saved, so that a resumed run knows).
        self.register_buffer("teacher_ready", torch.tensor(False))

    @property
    def capabilities(self) -> Capabilities:
        return dataclasses.replace(super().capabilities, objective="meanflow")

    def _check_sampler(self, solver: str, steps: int) -> None:
        if solver != FLOW_MAP and solver not in SOLVERS:
            raise ValueError(f"unknown sampler {solver!r}; choose {FLOW_MAP} or an ODE solver: {', '.join(SOLVERS)}")
        check_solver(SOLVERS[0] if solver == FLOW_MAP else solver, steps)

    def start_from(self, flow: Flow) -> None:
        """Take a trained `FlowMatching`'s weights (of the same architecture): its velocity field becomes
        ``u`` at every interval (the interval's embedding stays at zero) and, with ``teacher``, the teacher."""
        if type(flow) is not FlowMatching:
            raise ValueError(f"a MeanFlow starts from a trained FlowMatching, not a {type(flow).__name__}")
        new = ("velocity.conditioning.interval.", "teacher.", "teacher_ready")
        try:
            missing, unexpected = self.load_state_dict(flow.state_dict(), strict=False)
        except RuntimeError:  # tensors of other shapes
            missing, unexpected = [], ["(tensors of other shapes)"]
        if unexpected or any(not key.startswith(new) for key in missing):
            raise ValueError(
                "the FlowMatching to start from has another architecture (shape, widths, classes, label dropout, "
                f"preprocessing) than this MeanFlow: {(unexpected or missing)[:3]}"
            )
        if self.teacher is not None:
            self.teacher.load_state_dict(flow.velocity.state_dict())
            self.teacher_ready.fill_(True)

    def without_teacher(self) -> MeanFlow:
        """This model for sampling and likelihoods only: the same average-velocity network and sampler,
        no teacher (a distilled model's file at half the size). Its ``init_args`` say ``teacher=False``."""
        student = type(self)(**{**self.init_args, "teacher": False, "teacher_guidance": NO_GUIDANCE})
        student.load_state_dict({k: v for k, v in self.state_dict().items() if not k.startswith("teacher.")})
        student.use_solver(self.solver, self.steps, self.time_shift)
        return student.train(self.training)

    # -- training ---------------------------------------------------------------------------------

    def objective(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """MeanFlow's loss per sample ``[B]``: the adaptively weighted mean squared error of ``u(y_s, s, t)``
        against ``v + (t - s) du/ds`` (stop-gradient), ``y_s = (1 - s) y_0 + s y_1``."""
        if self.teacher is not None and not self.teacher_ready:
            raise ValueError(
                "this MeanFlow distils a teacher it has not got: start it from a trained FlowMatching "
                "(MeanFlow.start_from, --model.start_from PATH), or build it with teacher=False to train from scratch"
            )
        y1 = self._to_model_space(x, labels)
        y0 = torch.randn_like(y1)
        if self.pairing == "ot":
            y0 = y0[_ot_assignment(y0, y1)]
        s, t = self._training_times(len(y1), y1.device)
        view = (-1, *[1] * (y1.dim() - 1))
        ys = (1 - s.view(view)) * y0 + s.view(view) * y1
        classes = self.class_indices(labels, len(y1), y1.device)
        v = y1 - y0 if self.teacher is None else self._teacher_velocity(ys, s, classes)
        u, target = torch.empty_like(ys), v.clone()
        # At s = t the target is v itself: one plain pass (in the run's network precision). Only the pairs
        # with s < t need du/ds, a Jacobian-vector product, in float32 (autocast has no forward-mode
        # convolutions on CPUs).
        same, apart = (s == t).nonzero().squeeze(1), (s < t).nonzero().squeeze(1)
        if len(same):
            u[same] = self._velocity(ys[same], s[same], _pick(classes, same), None, torch.zeros_like(s[same]))
        if len(apart):
            classes_apart, end = _pick(classes, apart), t[apart]

            def average_velocity(y: Tensor, start: Tensor) -> Tensor:
                return run_network(self.velocity, None, y, start, classes_apart, end - start)

            u[apart], du_ds = torch.func.jvp(average_velocity, (ys[apart], s[apart]), (v[apart], torch.ones_like(end)))
            target[apart] += (end - s[apart]).view(view) * du_ds.detach()
        error = (u - target).square().flatten(1).mean(1)
        return error / (error.detach() + ADAPTIVE_WEIGHT_OFFSET) ** self.weighting_power

    def _training_times(self, n: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """``(s, t)`` ``[n]`` each, ``s <= t``: two logit-normal times sorted, or (a fraction
        ``1 - flow_map_fraction``) one time twice."""
        times = torch.sigmoid(self.time_mean + self.time_std * torch.randn(2, n, device=device))
        s, t = times.min(0).values, times.max(0).values
        same = torch.rand(n, device=device) >= self.flow_map_fraction
        return torch.where(same, times[0], s), torch.where(same, times[0], t)

    @torch.no_grad()
    def _teacher_velocity(self, y: Tensor, t: Tensor, classes: Tensor | None) -> Tensor:
        """The teacher's velocity of ``classes``, guided at ``teacher_guidance`` (where that is not 1)."""
        strong = run_network(self.teacher, self.network_dtype, y, t, classes)
        if self.teacher_guidance == NO_GUIDANCE:
            return strong
        no_class = torch.full_like(classes, self.n_classes)
        return guide(strong, run_network(self.teacher, self.network_dtype, y, t, no_class), self.teacher_guidance)

    # -- sampling ---------------------------------------------------------------------------------

    def _integrate(self, y: Tensor, labels: Tensor | None, t0: float, t1: float) -> Tensor:
        """``steps`` flow-map jumps from ``t0`` to ``t1 > t0`` (``solver="flow_map"``); else, and always from
        data to noise, the ODE of ``u(y, t, t)`` (the sampling solver, or for ``flow_map`` the likelihood's)."""
        if self.solver != FLOW_MAP:
            return super()._integrate(y, labels, t0, t1)
        if t1 < t0:
            return super()._integrate(y, labels, t0, t1, *self.likelihood_integration)
        self.last_network_evaluations = 0
        times = time_grid(t0, t1, self.steps, self.time_shift)
        for start, end in zip(times, times[1:]):
            start_times = torch.full((len(y),), start, device=y.device)
            interval = torch.full((len(y),), end - start, device=y.device)
            y = y + (end - start) * self._guided_velocity(y, start_times, labels, None, interval)
        self.last_nfe = self.steps
        return y


def _pick(classes: Tensor | None, index: Tensor) -> Tensor | None:
    return classes[index] if classes is not None else None
