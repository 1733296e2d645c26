"""Training from Python in one call, for notebooks and scripts.

`fit_flow` runs the training that ``lgm-flow fit`` runs (`FlowModule` with its warmup, schedules and
NaN guard; `FlowEMA`; atomic checkpoints; exact resume), with the budget given as steps, minutes or
epochs, and hands back the trained flow and its logged curves. Given a ``run_dir`` that already holds
a checkpoint of the same model, it resumes from it, so re-running a notebook cell continues training
(the time budget counts across resumes).
"""

from __future__ import annotations

import csv
import logging
import math
import signal
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lgm.flow.base import Flow
from lgm.flow.io import check_readable
from lgm.train.loggers import ResumableCSVLogger
from lgm.train.module import FlowModule
from lgm.train.setup import LAST_CHECKPOINT, RUN_CALLBACKS, instantiated, new_run_version, run_folder, trainer_settings


@dataclass
class FitResult:
    """What `fit_flow` returns.

    Attributes:
        flow: the trained flow in eval mode (the weights' moving average when EMA is on).
        history: every logged metric (``"train/bpd"``, ``"val/bpd"``, ``"train/grad_norm"``, ...; NICE
            on 2-D data logs ``nll`` instead of ``bpd``) as a list of ``(step, value)``, in step order.
        steps: optimiser steps taken in total (across resumes).
        seconds: wall-clock time of this call.
        checkpoint: the run's ``last.ckpt``; `lgm.flow.load` reads it, ``lgm-flow fit --ckpt_path``
            resumes from it.
    """

    flow: Flow
    history: dict[str, list[tuple[int, float]]]
    steps: int
    seconds: float
    checkpoint: Path

    def final(self, metric: str) -> float:
        """The last logged value of ``metric`` (e.g. ``"val/bpd"``)."""
        if not self.history.get(metric):
            raise KeyError(f"{metric!r} was never logged; logged metrics: {sorted(self.history)}")
        return self.history[metric][-1][1]


def fit_flow(
    flow: Flow,
    data: L.LightningDataModule,
    *,
    steps: int | None = None,
    minutes: float | None = None,
    epochs: int | None = None,
    val_every: int | None = None,
    run_dir: str | Path | None = None,
    resume: bool = True,
    ema: bool | None = None,
    ema_decay: float = 0.999,
    seed: int = 0,
    progress: bool = True,
    verbose: bool = False,
    trainer_args: dict[str, Any] | None = None,
    **module_args: Any,
) -> FitResult:
    """Train ``flow`` on ``data`` until the first of ``steps``, ``minutes`` and ``epochs`` is reached.

    Args:
        flow: the model to train (trained in place).
        data: a data module, e.g. ``lgm.data.ToyDataModule("banana")`` or ``ImageDataModule("mnist")``.
        steps, minutes, epochs: the budget; at least one is needed.
        val_every: validate every this many steps (default: at the end of each epoch).
        run_dir: folder for ``checkpoints/last.ckpt`` (written every 500 steps, at the end, and when
            the process gets SIGTERM) and ``metrics.csv``; default ``<root>/lgm/<date-time>/`` when
            ``trainer_args`` names a ``default_root_dir`` (as ``lgm-flow fit`` lays out runs), else a new
            temporary folder.
        resume: continue from ``run_dir``'s ``last.ckpt`` if there is one.
        ema, ema_decay: see `lgm.train.FlowEMA` (``None``: on for image flows).
        seed: seeds the weights' initialisation order, data order and all training noise.
        progress: show Lightning's progress bar.
        verbose: show Lightning's information messages and warnings (accelerators found, checkpoint
            restored, ...); errors always show.
        trainer_args: further `lightning.Trainer` arguments (or replacements of the ones set here), e.g.
            ``{"gradient_clip_val": 50}``, ``{"limit_val_batches": 10}`` or ``{"log_every_n_steps": 1}``.
        **module_args: `FlowModule` arguments: ``lr``, ``optimizer``, ``warmup_steps``, ``schedule``, ...
    """
    if steps is None and minutes is None and epochs is None:
        raise ValueError("give a training budget: steps=, minutes= and/or epochs=")
    for name, value in (("steps", steps), ("minutes", minutes), ("epochs", epochs), ("val_every", val_every)):
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be a positive number, got {value}")
    root = (trainer_args or {}).get("default_root_dir")
    if run_dir is None and root is not None:
        run_dir = run_folder(root, new_run_version(root))
    run_dir = Path(run_dir) if run_dir is not None else Path(tempfile.mkdtemp(prefix="lgm-fit-"))
    last = run_dir / LAST_CHECKPOINT
    ckpt_path = None
    if resume and last.exists():
        check_readable(last)
        ckpt_path = str(last)

    L.seed_everything(seed, verbose=False)
    if steps is not None:  # the step budget is enforced here, not by the trainer, so a cosine schedule learns it here
        module_args.setdefault("schedule_steps", steps)
    module = FlowModule(flow, seed=seed, **module_args)
    timer = Timer(timedelta(minutes=minutes), interval="step") if minutes is not None else None
    at_stop = StopAndCheckpoint(last, steps, timer)
    start = time.monotonic()
    with _quiet_lightning(not verbose):
        trainer = L.Trainer(
            **{
                "max_epochs": epochs if epochs is not None else -1,
                "val_check_interval": val_every,
                "check_val_every_n_epoch": None if val_every is not None else 1,
                "default_root_dir": run_dir,
                "logger": ResumableCSVLogger(run_dir, name="", version=""),
                "callbacks": [
                    RUN_CALLBACKS["ema"](enabled=ema, decay=ema_decay),
                    *([timer] if timer is not None else []),  # before `at_stop`, which must see the time run out
                    at_stop,
                    RUN_CALLBACKS["sigterm_checkpoint"](str(last)),
                ],
                "enable_checkpointing": False,  # `at_stop` writes the checkpoints: see its notes
                **instantiated(trainer_settings()),
                "devices": 1,
                "enable_progress_bar": progress,
                "enable_model_summary": False,
                "log_every_n_steps": 10,
                **(trainer_args or {}),
            }
        )
        try:
            trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
        except SIGTERMException:  # a SystemExit with status 0: a stopped run must not look finished
            raise SystemExit(128 + signal.SIGTERM) from None
        if at_stop.start_step < trainer.global_step != at_stop.saved_step:  # stopped another way, e.g. by the user
            trainer.save_checkpoint(last, weights_only=False)
    return FitResult(
        flow=module.flow.eval(),
        history=read_history(run_dir / "metrics.csv"),
        steps=trainer.global_step,
        seconds=time.monotonic() - start,
        checkpoint=last,
    )


class StopAndCheckpoint(L.Callback):
    """Ends training when the step or time budget is spent; saves ``path`` every ``every_n_steps`` and
    after the training batch at which training stops (budget spent, or the last batch of the last epoch).

    Every save happens right after a training batch, the state from which Lightning resumes exactly.
    Lightning's own ``max_steps`` is not used (it switches to iteration-based restarts, which resume
    one epoch off), nor are checkpoints after the validation that follows a stop mid-epoch or after
    ``Trainer.fit`` returns (both record the epoch as finished, so a resumed run would skip its rest).
    """

    def __init__(self, path: Path, max_steps: int | None, timer: Timer | None, every_n_steps: int = 500) -> None:
        self.path, self.max_steps, self.timer, self.every_n_steps = path, max_steps, timer, every_n_steps
        self.start_step = self.saved_step = -1

    def _budget_spent(self, trainer: L.Trainer) -> bool:
        steps_spent = self.max_steps is not None and trainer.global_step >= self.max_steps
        time_spent = self.timer is not None and self.timer.time_remaining() <= 0
        return steps_spent or time_spent

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start_step = trainer.global_step
        if self._budget_spent(trainer):  # a finished run, resumed: train nothing
            trainer.should_stop = True

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self._budget_spent(trainer):
            trainer.should_stop = True
        last_epoch_ends = (
            trainer.max_epochs not in (None, -1)
            and trainer.current_epoch + 1 >= trainer.max_epochs
            and trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        )
        if trainer.should_stop or last_epoch_ends or trainer.global_step % self.every_n_steps == 0:
            trainer.save_checkpoint(self.path, weights_only=False)
            self.saved_step = trainer.global_step


@contextmanager
def _quiet_lightning(quiet: bool) -> Iterator[None]:
    """Hide Lightning's information messages and warnings while the block runs (if ``quiet``)."""
    if not quiet:
        yield
        return
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module="lightning")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def read_history(path: str | Path) -> dict[str, list[tuple[int, float]]]:
    """The metrics in a Lightning ``metrics.csv`` as ``{name: [(step, value), ...]}`` in step order.

    A step logged twice (an interrupted run's rows, then the resumed run's) keeps its later value.
    """
    path = Path(path)
    if not path.exists():
        return {}
    values: dict[str, dict[int, float]] = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            step = int(row["step"])
            for name, value in row.items():
                if name not in ("step", "epoch") and value not in ("", None):
                    values.setdefault(name, {})[step] = float(value)
    return {name: sorted(by_step.items()) for name, by_step in sorted(values.items())}
