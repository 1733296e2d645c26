"""The ``lgm-flow`` command: Lightning's CLI (``fit``, ``validate``, ``test``) with YAML configs,
``lgm-flow sample --ckpt PATH`` (see `lgm.train.sample`), ``lgm-flow evaluate`` (see
`lgm.evaluate.cli`) and ``lgm-flow classifier fit|test`` (see `lgm.evaluate.classifier_cli`).

``lgm-flow fit`` with no config trains NICE on the 2-D banana (generated in memory, no download).
``lgm-flow fit --config configs/nice_banana.yaml --model.lr 3e-3`` reads a recipe and overrides it.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lgm.flow.io import CheckpointError, check_readable
from lgm.train.callbacks import CheckpointOnSigterm, SampleGrid, ToyDiagnostics, TrainingTimeSnapshots
from lgm.train.ema import FlowEMA
from lgm.train.guard import TrainingDiverged
from lgm.train.module import FlowModule
from lgm.train.sample import sample_main

DEFAULT_FLOW = {"class_path": "lgm.flow.NiceFlow", "init_args": {"shape": [2], "prior": "gaussian"}}
LIGHTNING_CKPT_KEYWORDS = ("last", "best", "hpc", "registry")  # --ckpt_path values that name no file
DEFAULT_DATA = {"class_path": "lgm.data.ToyDataModule", "init_args": {"name": "banana"}}


def default_trainer(run_version: str) -> dict:
    """Trainer defaults: CSV and TensorBoard logs in one folder, ``runs/lgm/<run_version>/``.

    Both loggers get the same explicit version; left to themselves they would each pick the next
    free number and write into two different folders.
    """
    logger_args = {"save_dir": "runs", "name": "lgm", "version": run_version}
    return {
        "max_epochs": 40,
        "default_root_dir": "runs",
        # `lgm.data.InMemoryBatches` shards batches across ranks itself, and resumes mid-epoch.
        "use_distributed_sampler": False,
        "plugins": [{"class_path": "lgm.train.checkpoint_io.AtomicCheckpointIO"}],
        "logger": [
            {"class_path": "lgm.train.loggers.ResumableCSVLogger", "init_args": logger_args},
            {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": logger_args},
        ],
    }


class FlowCLI(LightningCLI):
    """Adds what every run gets: checkpoints (last, on SIGTERM too, and best by ``val/loss``), 2-D
    diagnostics, sample grids."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Two checkpoint callbacks share `last.ckpt` (no version counter, so both overwrite the one file):
        # `checkpoint` after every validation (and the best by val/loss), `periodic_checkpoint` every N
        # steps within epochs. Lightning writes each file atomically.
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(ModelCheckpoint, "periodic_checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/loss",
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-epoch{epoch}-step{step}",
                "checkpoint.auto_insert_metric_name": False,
                "checkpoint.enable_version_counter": False,
                "periodic_checkpoint.every_n_train_steps": 500,
                "periodic_checkpoint.save_top_k": 0,
                "periodic_checkpoint.save_last": True,
                "periodic_checkpoint.enable_version_counter": False,
                "model.flow": DEFAULT_FLOW,
                "data": DEFAULT_DATA,
            }
        )
        parser.add_lightning_class_args(FlowEMA, "ema")
        parser.add_lightning_class_args(ToyDiagnostics, "toy_diagnostics")
        parser.add_lightning_class_args(SampleGrid, "sample_grid")
        parser.add_lightning_class_args(TrainingTimeSnapshots, "snapshots")
        parser.add_lightning_class_args(CheckpointOnSigterm, "sigterm_checkpoint")

    def before_instantiate_classes(self) -> None:
        """``fit --ckpt_path runs/lgm/<version>/checkpoints/<file>`` resumes into that run's folder, so
        that a run's logs, checkpoints and snapshots stay in one place across interruptions. A version
        set on the command line or in a config (not the fresh default) is left alone."""
        if self.config.get("subcommand") != "fit":
            return
        loggers = self.config.fit.trainer.get("logger")
        logger_args = [lg.init_args for lg in (loggers if isinstance(loggers, list) else [loggers]) if hasattr(lg, "init_args")]
        version = resumed_run_version(self.config.fit.get("ckpt_path"), logger_args)
        for args in logger_args if version else []:
            if args.get("version") == os.environ.get("LGM_RUN_VERSION"):
                args.version = version

    def _parse_ckpt_path(self) -> None:
        """Check a ``--ckpt_path`` file before anything reads it. (Lightning's version of this hook reads
        hyperparameters saved in the checkpoint into the config; FlowModule saves none, see its notes.)"""
        ckpt_path = self.config[self.config.subcommand].get("ckpt_path") if self.config.get("subcommand") else None
        if ckpt_path and ckpt_path not in LIGHTNING_CKPT_KEYWORDS:
            check_readable(ckpt_path)


def main(args: list[str] | None = None) -> None:
    argv = sys.argv[1:] if args is None else args
    if argv[:1] == ["sample"]:
        sample_main(argv[1:])
        return
    if argv[:1] == ["evaluate"]:
        from lgm.evaluate.cli import evaluate_main

        evaluate_main(argv[1:])
        return
    if argv[:1] == ["classifier"]:
        from lgm.evaluate.classifier_cli import classifier_main

        classifier_main(argv[1:])
        return
    try:
        run_cli(args)
    except (TrainingDiverged, CheckpointError, FileNotFoundError) as error:
        sys.exit(f"lgm-flow: {error}")
    except SIGTERMException:
        # Lightning's exception is a SystemExit with status 0; a stopped run must not look finished.
        sys.exit(128 + signal.SIGTERM)


def resumed_run_version(ckpt_path: str | None, logger_args: list) -> str | None:
    """The run folder name ``<version>`` when ``ckpt_path`` is ``<save_dir>/<name>/<version>/checkpoints/<file>``
    of the loggers (all of them), else None (a new run folder)."""
    if not ckpt_path or ckpt_path in LIGHTNING_CKPT_KEYWORDS or not logger_args:
        return None
    ckpt = Path(ckpt_path).resolve()
    if ckpt.parent.name != "checkpoints":
        return None
    run = ckpt.parent.parent
    if all(run.parent == (Path(args.get("save_dir") or ".") / (args.get("name") or "")).resolve() for args in logger_args):
        return run.name
    return None


@contextmanager
def fixed_run_version() -> Iterator[str]:
    """The run folder's name, ``<YYYYmmdd-HHMMSS>``, held in ``$LGM_RUN_VERSION`` while the command runs:
    the processes Lightning launches for DDP inherit it (and keep it), so every rank logs into one folder."""
    inherited = os.environ.get("LGM_RUN_VERSION")
    version = inherited or datetime.now().strftime("%Y%m%d-%H%M%S")
    os.environ["LGM_RUN_VERSION"] = version
    try:
        yield version
    finally:
        if inherited is None:
            del os.environ["LGM_RUN_VERSION"]


def run_cli(args: list[str] | None) -> None:
    with fixed_run_version() as version:
        FlowCLI(
            FlowModule,
            L.LightningDataModule,
            subclass_mode_data=True,
            trainer_defaults=default_trainer(version),
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            args=args,
        )


if __name__ == "__main__":
    main()
