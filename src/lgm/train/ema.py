"""An exponential moving average of the weights, on by default for image flows."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging
from torch import Tensor

from lgm.flow.base import Flow


def ema_with_warmup(decay: float):
    """``avg_fn`` for ``AveragedModel``: an exponential moving average whose decay warms up as
    ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates (as TensorFlow's ``ExponentialMovingAverage``
    with ``num_updates``), so the average soon forgets the initial weights instead of keeping
    ``decay ** n`` of them (60% after 500 steps at 0.999)."""

    def avg_fn(averaged: Tensor, current: Tensor, num_averaged: Tensor) -> Tensor:
        d = torch.clamp((1 + num_averaged) / (10 + num_averaged), max=decay)
        return d * averaged + (1 - d) * current

    return avg_fn


class FlowEMA(WeightAveraging):
    """An exponential moving average of the weights (and buffers) with Lightning's `WeightAveraging`,
    with the defaults and hooks flows need.

    The average is what validation measures, what `lgm.viz.SampleGrid` draws from, what
    checkpoints store as the model (``state_dict``; the raw weights go to ``current_model_state``
    so that a resumed run continues exactly) and what the module holds after training, so
    ``lgm.flow.load`` and ``lgm-flow test`` see the averaged model.

    Args:
        enabled: ``None`` (default) averages image flows and leaves 2-D toys alone; ``True`` or
            ``False`` force it.
        decay: the average's decay per optimiser step once warmed up (0.999: a horizon of about
            1,000 steps); see `ema_with_warmup`.
    """

    def __init__(self, enabled: bool | None = None, decay: float = 0.999) -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"the EMA decay must be in [0, 1), got {decay}")
        super().__init__(avg_fn=ema_with_warmup(decay))
        self.decay = decay
        self.enabled = enabled
        self.active = False
        self._raw_state: dict[str, Tensor] | None = None  # the raw weights, once the average replaced them

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        flow: Flow = pl_module.flow
        self._raw_state = None
        self.active = self.enabled if self.enabled is not None else flow.n_bits is not None
        if self.active:
            super().setup(trainer, pl_module, stage)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start the average from the data-initialised model: the copy made in ``setup`` predates actnorm's
        initialisation. After a resume the average comes from the checkpoint and is kept."""
        if self._average_model is None:
            return
        self._average_model.to(pl_module.device)
        if int(self._average_model.n_averaged) == 0:
            pl_module.initialize_flow()
            self._average_model.update_parameters(pl_module)

    @property
    def average_flow(self) -> Flow | None:
        """The averaged flow while training (``None`` when inactive)."""
        return self._average_model.module.flow if self._average_model is not None else None

    # Lightning's hooks assume an average model exists; without one (inactive) they do nothing.

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any) -> None:
        if self._average_model is not None:
            super().on_train_batch_end(trainer, pl_module, *args, **kwargs)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._average_model is not None:
            super().on_train_epoch_end(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Put the average into the module, keeping the raw weights for checkpoints written after this
        (Lightning's end-of-training ``last.ckpt``, `lgm.train.fit_flow`'s final save), which must resume
        from the raw weights, not from the average."""
        if self._average_model is not None:
            self._raw_state = {name: t.detach().clone() for name, t in pl_module.state_dict().items()}
            super().on_train_end(trainer, pl_module)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._average_model is not None:
            super().on_save_checkpoint(trainer, pl_module, checkpoint)
            if self._raw_state is not None:
                checkpoint["current_model_state"] = self._raw_state

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._average_model is not None:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
        elif "current_model_state" in checkpoint and trainer.state.fn == "fit":
            # Resuming an averaged run without averaging: continue from the raw weights, not the average.
            pl_module.load_state_dict(checkpoint["current_model_state"])
