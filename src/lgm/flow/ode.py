"""Ordinary differential equation solvers for continuous flows.

``odeint(func, state, t0, t1, solver, steps)`` integrates ``d state / dt = func(t, state)`` from
``t0`` to ``t1`` (either direction) and returns the final state and the number of function
evaluations (NFE). ``state`` is a tuple of tensors (e.g. points and their log-determinant).

Fixed-step solvers take ``steps`` equal steps: ``euler`` (order 1, 1 NFE per step), ``midpoint``
and ``heun`` (order 2, 2 NFE), ``rk4`` (classic Runge-Kutta, order 4, 4 NFE). ``dopri5`` is the
adaptive Dormand-Prince method of ``torchdiffeq``, controlled by
``rtol``/``atol`` instead of ``steps``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

State = tuple[Tensor, ...]
Dynamics = Callable[[float, State], State]

FIXED_STEP_SOLVERS = ("euler", "midpoint", "heun", "rk4")
SOLVERS = (*FIXED_STEP_SOLVERS, "dopri5")


def check_solver(solver: str, steps: int) -> None:
    """Raise a `ValueError` naming the choices for an unknown solver or a step count below 1."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown ODE solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"the number of solver steps must be a positive integer, got {steps!r}")


def _axpy(state: State, h: float, *terms: tuple[float, State]) -> State:
    """``state + h * sum(w * k for w, k in terms)``, element-wise over the tuple."""
    return tuple(s + h * sum(w * k[i] for w, k in terms) for i, s in enumerate(state))


def _step(func: Dynamics, solver: str, t: float, h: float, y: State) -> State:
    k1 = func(t, y)
    if solver == "euler":
        return _axpy(y, h, (1.0, k1))
    if solver == "midpoint":
        k2 = func(t + h / 2, _axpy(y, h / 2, (1.0, k1)))
        return _axpy(y, h, (1.0, k2))
    if solver == "heun":
        k2 = func(t + h, _axpy(y, h, (1.0, k1)))
        return _axpy(y, h, (0.5, k1), (0.5, k2))
    k2 = func(t + h / 2, _axpy(y, h / 2, (1.0, k1)))
    k3 = func(t + h / 2, _axpy(y, h / 2, (1.0, k2)))
    k4 = func(t + h, _axpy(y, h, (1.0, k3)))
    return _axpy(y, h, (1 / 6, k1), (1 / 3, k2), (1 / 3, k3), (1 / 6, k4))


def odeint(
    func: Dynamics,
    state: State,
    t0: float,
    t1: float,
    solver: str = "rk4",
    steps: int = 32,
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> tuple[State, int]:
    """Integrate ``d state / dt = func(t, state)`` from ``t0`` to ``t1``; returns ``(state at t1, NFE)``."""
    check_solver(solver, steps)
    calls = 0

    def counted(t: float, y: State) -> State:
        nonlocal calls
        calls += 1
        return func(t, y)

    if solver == "dopri5":
        import torchdiffeq

        times = torch.tensor([t0, t1], dtype=torch.float64)
        final = torchdiffeq.odeint(
            lambda t, y: counted(float(t), y), state, times, method="dopri5", rtol=rtol, atol=atol
        )
        return tuple(s[-1] for s in final), calls
    h = (t1 - t0) / steps
    for i in range(steps):
        state = _step(counted, solver, t0 + i * h, h, state)
    return state, calls
