"""Callbacks that keep a run's checkpoints: at training-time marks, at the final step, on SIGTERM.
(The callbacks that draw figures during training are in `lgm.viz.callbacks`.)"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint, Timer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException


def run_folder(trainer: L.Trainer) -> Path:
    """The run's log folder (where its figures and reports go), or the trainer's root without a logger."""
    return Path(trainer.log_dir or trainer.default_root_dir)


class TrainingTimeSnapshots(L.Callback):
    """Keep a checkpoint of the run at given amounts of training time, for curves of a metric against time.

    Writes ``snapshot-{M}min.ckpt`` beside the run's other checkpoints the first time the training
    time reaches each mark ``M`` (minutes), checked after every training batch and validation (a mark
    counts as reached a second early, so a mark equal to ``max_time`` is kept). Training time is
    that of the trainer's `Timer` (what ``--trainer.max_time`` counts) when there is one, else this
    callback's own clock; both count from the start of training, validation
    included, and carry across resumes (the time is saved in every checkpoint). A snapshot is a
    full checkpoint: `lgm.flow.load` reads it (the weight average when `FlowEMA` keeps one), and
    ``lgm-flow fit --ckpt_path`` resumes from it. Under DDP, rank 0's clock decides for all ranks.

    Args:
        minutes: the marks, e.g. ``[60, 120, 240, 360]``; none (the default) turns the callback off.
    """

    def __init__(self, minutes: list[float] = []) -> None:  # noqa: B006
        if any(m <= 0 for m in minutes):
            raise ValueError(f"snapshot marks must be positive minutes, got {list(minutes)}")
        self.minutes = sorted(minutes)
        self.saved: list[float] = []
        self._before = 0.0  # seconds of training in earlier processes (own clock only)
        self._start: float | None = None

    def _elapsed(self, trainer: L.Trainer) -> float:
        timers = [cb for cb in trainer.callbacks if isinstance(cb, Timer)]
        return timers[0].time_elapsed("train") if timers else self._own_clock()

    def _own_clock(self) -> float:
        return self._before + (time.monotonic() - self._start if self._start is not None else 0.0)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.monotonic()

    def _save_due(self, trainer: L.Trainer) -> None:
        pending = [m for m in self.minutes if m not in self.saved]
        if not pending:
            return
        due = trainer.strategy.broadcast(self._elapsed(trainer) >= pending[0] * 60 - 1.0, src=0)
        if due:
            self.saved.append(pending[0])
            folder = (
                Path(trainer.checkpoint_callback.dirpath)
                if trainer.checkpoint_callback
                else run_folder(trainer) / "checkpoints"
            )
            trainer.save_checkpoint(folder / f"snapshot-{pending[0]:g}min.ckpt")

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        self._save_due(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After validation, not at the epoch's end: a checkpoint written in `on_train_epoch_end` does not
        # resume exactly when training stops by max_steps (see `lgm.cli.lightning.FlowCLI`).
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self._save_due(trainer)

    def state_dict(self) -> dict:
        return {"elapsed_s": self._own_clock(), "saved": list(self.saved)}

    def load_state_dict(self, state_dict: dict) -> None:
        self._before = state_dict["elapsed_s"]
        self.saved = list(state_dict["saved"])


class RunCheckpoint(ModelCheckpoint):
    """Lightning's `ModelCheckpoint`, for several instances that share one ``last.ckpt``, which always
    ends up holding the run's final step.

    When training ends, Lightning's callback writes ``last.ckpt`` only if *this instance* has not
    written it in the current session: so the file may miss the last steps (both instances saved
    earlier), or be written twice at the final step with different loop states (the one that saves
    after validation often has not saved since a resume). Here the first instance writes ``last.ckpt``
    when training ends unless some checkpoint callback has already saved at the final step, so a run
    that was interrupted and resumed ends with the same ``last.ckpt`` as one that was not.

    The callback's state is stored under `ModelCheckpoint`'s key, so checkpoints written with either
    class resume with the other.
    """

    @property
    def state_key(self) -> str:
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        savers = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint) and cb.save_last]
        if (
            self.save_last
            and not trainer.fast_dev_run
            and all(cb._last_global_step_saved != trainer.global_step for cb in savers)
        ):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class CheckpointOnSigterm(L.Callback):
    """Save ``last.ckpt`` when the run is stopped by SIGTERM (``kill``, a scheduler's pre-emption).

    Lightning finishes the training batch in progress, then raises `SIGTERMException`; this callback
    writes the run's ``last.ckpt`` at that point, so ``--ckpt_path .../last.ckpt`` resumes exactly
    where the run stopped rather than at the last periodic checkpoint. A signal that arrives during
    validation (which includes one that arrives during an epoch's last training batch: Lightning
    validates before it stops) leaves ``last.ckpt`` as it was, since a half-done validation is not a
    state to resume from. `lgm.cli.main` then exits with status 143 (128 + SIGTERM), not 0, so
    a script can tell a stopped run from a finished one. Every rank calls the (collective) save under DDP.

    Args:
        path: the file to write; default ``last.ckpt`` in the checkpoint callback's folder.
    """

    def __init__(self, path: str | None = None) -> None:
        self.path = path

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or not trainer.training:
            return
        if self.path is None and trainer.checkpoint_callback is None:
            return
        path = Path(self.path) if self.path is not None else Path(trainer.checkpoint_callback.dirpath) / "last.ckpt"
        trainer.save_checkpoint(path)
        if trainer.is_global_zero:
            print(f"lgm-flow: stopped by SIGTERM after step {trainer.global_step}; saved {path}", file=sys.stderr)
