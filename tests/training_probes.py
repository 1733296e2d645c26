"""Callbacks that tests inject into `lgm-flow` runs in subprocesses (via ``--trainer.callbacks+=``)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import lightning as L
import torch


class SignalAtStep(L.Callback):
    """Send the process ``signal`` (``"SIGKILL"``: no clean-up at all; ``"SIGTERM"``: what ``kill PID``
    sends) right after optimiser step ``step``."""

    def __init__(self, step: int, signal: str) -> None:
        self.step, self.signal = step, signal

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), getattr(signal, self.signal))


class SaveRankState(L.Callback):
    """Each rank writes its module's state at the start and the end of training: ``rank{r}_{start,end}.pt``."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def _save(self, trainer, pl_module, when: str) -> None:
        state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        torch.save(state, self.folder / f"rank{trainer.global_rank}_{when}.pt")

    def on_train_start(self, trainer, pl_module):
        self._save(trainer, pl_module, "start")

    def on_train_end(self, trainer, pl_module):
        self._save(trainer, pl_module, "end")


class SaveMetrics(L.Callback):
    """Rank 0 writes the logged metrics to ``path`` (JSON) after validation."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_validation_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            self.path.write_text(json.dumps({k: float(v) for k, v in trainer.callback_metrics.items()}))
