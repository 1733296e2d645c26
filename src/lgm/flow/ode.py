"""Ordinary differential equation solvers for continuous flows.

``odeint(func, state, t0, t1, solver, steps)`` integrates ``d state / dt = func(t, state)`` from
``t0`` to ``t1`` (either direction) and returns the final state and the number of function
evaluations (NFE). ``state`` is a tuple of tensors (e.g. points and their log-determinant).

Fixed-step solvers take ``steps`` steps: ``euler`` (order 1, 1 NFE per step), ``midpoint`` and
``heun`` (order 2, 2 NFE), ``rk4`` (classic Runge-Kutta, order 4, 4 NFE) and ``adams2`` (the two-step
Adams-Bashforth method for uneven steps: order 2 at 1 NFE per step, reusing the previous step's
evaluation; its first step is Euler's). ``dopri5`` is the adaptive Dormand-Prince method of
``torchdiffeq``, controlled by ``rtol``/``atol`` instead of ``steps``.

The fixed steps are equal, or, with ``time_shift = k != 1`` on the time interval ``[0, 1]`` of a
flow, equal in ``u`` with ``t = u / (u + k (1 - u))`` (`time_grid`; the shift of Esser et al. 2024,
"Scaling Rectified Flow Transformers"): ``k > 1`` makes the steps short near ``t = 0`` (the noise of a
flow-matching model) and long near ``t = 1``, ``k < 1`` the reverse.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

State = tuple[Tensor, ...]
Dynamics = Callable[[float, State], State]

FIXED_STEP_SOLVERS = ("euler", "midpoint", "heun", "rk4", "adams2")
SOLVERS = (*FIXED_STEP_SOLVERS, "dopri5")


def check_solver(solver: str, steps: int) -> None:
    """Raise a `ValueError` naming the choices for an unknown solver or a step count below 1."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown ODE solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"the number of solver steps must be a positive integer, got {steps!r}")


def check_time_shift(time_shift: float) -> None:
    """Raise a `ValueError` unless ``time_shift`` is a finite number > 0."""
    if isinstance(time_shift, bool) or not isinstance(time_shift, (int, float)) or not 0 < time_shift < math.inf:
        raise ValueError(f"the time shift must be a finite number > 0 (1: equal steps), got {time_shift!r}")


def time_grid(t0: float, t1: float, steps: int, time_shift: float = 1.0) -> list[float]:
    """The ``steps + 1`` times of a fixed-step integration from ``t0`` to ``t1``: equal steps, or, for
    ``time_shift = k != 1`` (times in ``[0, 1]`` only), ``t = u / (u + k (1 - u))`` of equal steps in ``u``."""
    check_time_shift(time_shift)
    times = [t0 + (t1 - t0) * i / steps for i in range(steps + 1)]
    if time_shift == 1:
        return times
    if not (0 <= min(t0, t1) and max(t0, t1) <= 1):
        raise ValueError(f"a time shift needs times in [0, 1], got {t0} to {t1}")
    return [u / (u + time_shift * (1 - u)) for u in times]


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


def _adams2_step(
    func: Dynamics, t: float, h: float, y: State, previous: tuple[float, State] | None
) -> tuple[State, tuple[float, State]]:
    """One two-step Adams-Bashforth step of size ``h`` (Euler's without a ``previous`` ``(h, slope)``);
    returns the new state and this step's ``(h, slope)``."""
    k = func(t, y)
    if previous is None:
        return _axpy(y, h, (1.0, k)), (h, k)
    ratio = h / previous[0]
    return _axpy(y, h, (1 + ratio / 2, k), (-ratio / 2, previous[1])), (h, k)


def odeint(
    func: Dynamics,
    state: State,
    t0: float,
    t1: float,
    solver: str = "rk4",
    steps: int = 32,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    time_shift: float = 1.0,
) -> tuple[State, int]:
    """Integrate ``d state / dt = func(t, state)`` from ``t0`` to ``t1``; returns ``(state at t1, NFE)``.
    Fixed-step solvers step on `time_grid` ``(t0, t1, steps, time_shift)``."""
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
    times = time_grid(t0, t1, steps, time_shift)
    previous = None
    for t, t_next in zip(times, times[1:]):
        if solver == "adams2":
            state, previous = _adams2_step(counted, t, t_next - t, state, previous)
        else:
            state = _step(counted, solver, t, t_next - t, state)
    return state, calls
