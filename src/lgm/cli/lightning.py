"""``lgm-flow fit``, ``validate``, ``test``: Lightning's CLI with YAML configs, and what every run gets.

``lgm-flow fit`` with no config trains NICE on the 2-D banana (generated in memory, no download).
``lgm-flow fit --config configs/nice_banana.yaml --model.lr 3e-3`` reads a recipe and overrides it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lgm.flow.io import CheckpointError, check_readable
from lgm.train.callbacks import RunCheckpoint, TrainingTimeSnapshots
from lgm.train.module import FlowModule
from lgm.train.setup import (
    DEFAULT_ROOT_DIR,
    RUN_CALLBACKS,
    RUN_GROUP,
    new_run_version,
    trainer_settings,
    unused_run_version,
)
from lgm.viz.callbacks import SampleGrid, ToyDiagnostics

DEFAULT_FLOW = {"class_path": "lgm.flow.NiceFlow", "init_args": {"shape": [2], "prior": "gaussian"}}
LIGHTNING_CKPT_KEYWORDS = ("last", "best", "hpc", "registry")  # --ckpt_path values that name no file
DEFAULT_DATA = {"class_path": "lgm.data.ToyDataModule", "init_args": {"name": "banana"}}


def default_trainer(run_version: str) -> dict:
    """Trainer defaults: CSV and TensorBoard logs in one folder, ``runs/lgm/<run_version>/`` (``runs``
    being ``--trainer.default_root_dir``'s default).

    Both loggers get the same explicit version; left to themselves they would each pick the next
    free number and write into two different folders.
    """
    logger_args = {"save_dir": DEFAULT_ROOT_DIR, "name": RUN_GROUP, "version": run_version}
    return {
        "max_epochs": 40,
        "default_root_dir": DEFAULT_ROOT_DIR,
        **trainer_settings(),
        "logger": [
            {"class_path": "lgm.train.loggers.ResumableCSVLogger", "init_args": logger_args},
            {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": logger_args},
        ],
    }


class FlowCLI(LightningCLI):
    """Adds what every run gets: checkpoints (last, on SIGTERM too, and best by ``val/loss``), 2-D
    diagnostics, sample grids.

    ``names_run_folder``: whether this process chose the run folder's name (`fixed_run_version`), and so
    may change it when another run already holds that folder; False in the processes DDP launches,
    which must log into the folder their parent named.
    """

    def __init__(self, *args: Any, names_run_folder: bool = True, **kwargs: Any) -> None:
        self.names_run_folder = names_run_folder
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Two checkpoint callbacks share `last.ckpt` (no version counter, so both overwrite the one file):
        # `checkpoint` after every validation (and the best by val/loss), `periodic_checkpoint` every N
        # steps within epochs; when training ends, `last.ckpt` holds the final step (see `RunCheckpoint`).
        # Lightning writes each file atomically.
        #
        # Both save after validation, never in `on_train_epoch_end` (Lightning's default when validation
        # runs once per epoch). A checkpoint from the end of an epoch resumes one epoch off when training
        # stops by max_steps: Lightning then restarts every resume as an interrupted epoch and runs that
        # epoch's end a second time, so the data loaders are given the epoch after the right one. After
        # validation the epoch's end is still to come, which is the state Lightning's restart expects.
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.add_lightning_class_args(RunCheckpoint, "periodic_checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/loss",
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-epoch{epoch}-step{step}",
                "checkpoint.auto_insert_metric_name": False,
                "checkpoint.enable_version_counter": False,
                "checkpoint.save_on_train_epoch_end": False,
                "periodic_checkpoint.every_n_train_steps": 500,
                "periodic_checkpoint.save_top_k": 0,
                "periodic_checkpoint.save_last": True,
                "periodic_checkpoint.enable_version_counter": False,
                "periodic_checkpoint.save_on_train_epoch_end": False,
                "model.flow": DEFAULT_FLOW,
                "data": DEFAULT_DATA,
            }
        )
        parser.add_lightning_class_args(ToyDiagnostics, "toy_diagnostics")
        parser.add_lightning_class_args(SampleGrid, "sample_grid")
        parser.add_lightning_class_args(TrainingTimeSnapshots, "snapshots")
        for name, callback in RUN_CALLBACKS.items():
            parser.add_lightning_class_args(callback, name)

    # Bad data, or data that does not fit the model, is refused before the run folder and its
    # config.yaml are written (Lightning's own call of `setup` then has nothing left to do).
    def before_fit(self) -> None:
        self._check_data("fit")

    def before_validate(self) -> None:
        self._check_data("validate")

    def before_test(self) -> None:
        self._check_data("test")

    def _check_data(self, stage: str) -> None:
        self.model.check_data(self.datamodule)
        self.datamodule.setup(stage)

    def before_instantiate_classes(self) -> None:
        """Put the run where the user asked, and keep a resumed run in its folder.

        The loggers write into ``<trainer.default_root_dir>/lgm/<version>/`` (checkpoints go into its
        ``checkpoints/``), unless a logger's ``save_dir`` was set. ``fit --ckpt_path
        <root>/lgm/<version>/checkpoints/<file>`` resumes into that run's folder, so that a run's logs,
        checkpoints and snapshots stay in one place across interruptions. A new run whose folder name
        (the second it started) another run already holds gets ``-2``, ``-3``, ... appended. A version
        set on the command line or in a config (not the fresh default) is left alone."""
        config = self.config.get(self.config.get("subcommand") or "", None)
        if config is None:
            return
        loggers = config.trainer.get("logger")
        logger_args = [
            lg.init_args for lg in (loggers if isinstance(loggers, list) else [loggers]) if hasattr(lg, "init_args")
        ]
        root = config.trainer.get("default_root_dir")
        for args in logger_args:
            if root and args.get("save_dir") == DEFAULT_ROOT_DIR:
                args.save_dir = str(root)
        fresh = os.environ.get("LGM_RUN_VERSION")
        defaults = [args for args in logger_args if args.get("version") == fresh]
        version = resumed_run_version(config.get("ckpt_path"), logger_args) if self.config.subcommand == "fit" else None
        if version is None and self.names_run_folder and defaults:
            folders = [Path(args.get("save_dir") or ".") / (args.get("name") or "") for args in defaults]
            version = unused_run_version(folders, fresh)
            os.environ["LGM_RUN_VERSION"] = version  # the processes DDP launches inherit it
        for args in defaults if version else []:
            args.version = version

    def _parse_ckpt_path(self) -> None:
        """Check a ``--ckpt_path`` file before anything reads it. (Lightning's version of this hook reads
        hyperparameters saved in the checkpoint into the config; FlowModule saves none, see its notes.)"""
        ckpt_path = self.config[self.config.subcommand].get("ckpt_path") if self.config.get("subcommand") else None
        if ckpt_path and ckpt_path not in LIGHTNING_CKPT_KEYWORDS:
            checkpoint = check_training_checkpoint(ckpt_path)
            max_steps = self.config[self.config.subcommand].trainer.get("max_steps", -1)
            trains_on = max_steps in (-1, None) or max_steps > checkpoint["global_step"]
            if self.config.subcommand == "fit" and ended_mid_epoch(checkpoint) and trains_on:
                print(
                    f"lgm-flow: warning: {ckpt_path!r} was written when training ended mid-epoch (by max_steps or "
                    "max_time), a state Lightning records as a finished epoch: training on from it starts the next "
                    "epoch, so it will not match a run that trained this long in one go",
                    file=sys.stderr,
                )


def check_training_checkpoint(path: str) -> dict:
    """The checkpoint at ``path`` (its tensors memory-mapped, not read). Raise `CheckpointError` unless it
    is a complete checkpoint written by Lightning (``lgm-flow fit``, `lgm.train.fit_flow`): a model file
    of `lgm.flow.save` holds weights, not a training state."""
    check_readable(path)
    payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # mmap: reads no tensor data
    if not isinstance(payload, dict) or "pytorch-lightning_version" not in payload:
        kind = (
            "a model file (lgm.flow.save)"
            if isinstance(payload, dict) and "lgm_flow" in payload
            else "no training checkpoint"
        )
        raise CheckpointError(
            f"{path!r} is {kind}: --ckpt_path takes a checkpoint written by `lgm-flow fit` "
            "(a run's checkpoints/last.ckpt, best-*.ckpt or snapshot-*.ckpt)"
        )
    return payload


def ended_mid_epoch(checkpoint: dict) -> bool:
    """Whether a Lightning checkpoint was saved after training stopped inside an epoch: its loop state
    then says the epoch finished (every epoch started has completed) though its last batch never ran."""
    loop = checkpoint.get("loops", {}).get("fit_loop", {})
    epochs, batches = loop.get("epoch_progress", {}).get("current", {}), loop.get("epoch_loop.batch_progress", {})
    if not epochs or not batches:
        return False
    return (
        epochs["completed"] == epochs["started"] > 0
        and not batches.get("is_last_batch", True)
        and batches["current"]["completed"] > 0
    )


def resumed_run_version(ckpt_path: str | None, logger_args: list) -> str | None:
    """The run folder name ``<version>`` when ``ckpt_path`` is ``<save_dir>/<name>/<version>/checkpoints/<file>``
    of the loggers (all of them), else None (a new run folder)."""
    if not ckpt_path or ckpt_path in LIGHTNING_CKPT_KEYWORDS or not logger_args:
        return None
    ckpt = Path(ckpt_path).resolve()
    if ckpt.parent.name != "checkpoints":
        return None
    run = ckpt.parent.parent
    if all(
        run.parent == (Path(args.get("save_dir") or ".") / (args.get("name") or "")).resolve() for args in logger_args
    ):
        return run.name
    return None


@contextmanager
def fixed_run_version() -> Iterator[str]:
    """The run folder's name, ``<YYYYmmdd-HHMMSS>``, held in ``$LGM_RUN_VERSION`` while the command runs:
    the processes Lightning launches for DDP inherit it (and keep it), so every rank logs into one folder."""
    inherited = os.environ.get("LGM_RUN_VERSION")
    version = inherited or new_run_version()
    os.environ["LGM_RUN_VERSION"] = version
    try:
        yield version
    finally:
        if inherited is None:
            del os.environ["LGM_RUN_VERSION"]


def run_lightning(args: list[str] | None) -> None:
    """Run Lightning's subcommands (``fit``, ``validate``, ``test``, ``predict``) on ``args``."""
    names_run_folder = "LGM_RUN_VERSION" not in os.environ  # else a DDP rank launched by a parent run
    with fixed_run_version() as version:
        FlowCLI(
            FlowModule,
            L.LightningDataModule,
            subclass_mode_data=True,
            trainer_defaults=default_trainer(version),
            names_run_folder=names_run_folder,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"exit_on_error": False},  # `main` reports a bad option in one line
            args=None if args == sys.argv[1:] else args,  # Lightning warns when both are given
        )
