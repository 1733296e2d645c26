"""Finding where a flow's computation stops being finite, for the message that stops a diverged run."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


class TrainingDiverged(FloatingPointError):
    """Training produced non-finite values it could not skip past; the message says where and what to
    try, ``step`` is the optimiser step at which it stopped."""

    def __init__(self, message: str, step: int | None = None) -> None:
        super().__init__(message)
        self.step = step


def _tensors(output: object) -> list[Tensor]:
    if isinstance(output, Tensor):
        return [output]
    if isinstance(output, (tuple, list)):
        return [t for item in output for t in _tensors(item)]
    return []


def first_nonfinite_module(model: nn.Module, run: Callable[[], object]) -> str | None:
    """Name and class of the first submodule of ``model`` whose output is non-finite during ``run()``.

    "First" in the order outputs are produced, so a network nested in a coupling is blamed before the
    coupling, and an early layer before a later one. ``None`` when every output is finite.
    """
    found: list[str] = []
    names = {module: name for name, module in model.named_modules()}

    def hook(module: nn.Module, inputs: object, output: object) -> None:
        if not found and any(not torch.isfinite(t).all() for t in _tensors(output) if t.is_floating_point()):
            found.append(f"{names[module] or '<model>'} ({type(module).__name__})")

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        run()
    except (ValueError, RuntimeError):  # a layer may refuse non-finite input after the culprit
        pass
    finally:
        for h in handles:
            h.remove()
    return found[0] if found else None


def describe_nonfinite(model: nn.Module, run: Callable[[], object]) -> str:
    """A phrase saying where ``run()`` (the last step's loss) went non-finite: a named layer, or past the layers."""
    culprit = first_nonfinite_module(model, run)
    if culprit is None:
        return (
            "every layer's output is finite on the last batch, so the prior's log-density or the gradients overflowed"
        )
    return f"the first non-finite output comes from layer {culprit}"
