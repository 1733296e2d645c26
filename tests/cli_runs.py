"""Running ``lgm-flow`` in a subprocess, for the tests that kill runs or start several processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).parent

# A tiny Glow on the embedded 8x8 digits, with EMA, warmup, a cosine schedule, flips and periodic
# checkpoints: 13 optimiser steps per epoch, 2 epochs.
IMAGE_RUN = [
    "--data",
    "lgm.data.ImageDataModule",
    "--data.init_args.name",
    "digits",
    "--data.init_args.batch_size",
    "100",
    "--model.flow",
    "lgm.flow.Glow",
    "--model.flow.init_args.shape",
    "[1, 8, 8]",
    "--model.flow.init_args.levels",
    "2",
    "--model.flow.init_args.steps",
    "2",
    "--model.flow.init_args.hidden",
    "16",
    "--model.init_samples",
    "256",
    "--model.lr",
    "3e-3",
    "--model.warmup_steps",
    "4",
    "--model.schedule",
    "cosine",
    "--data.init_args.hflip",
    "true",
    "--ema.decay",
    "0.9",
    "--periodic_checkpoint.every_n_train_steps",
    "5",
    "--sample_grid.n",
    "4",
    "--sample_grid.temperatures",
    "[0.7]",
    "--trainer.max_epochs",
    "2",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
]


def run_cli(args: list[str], cwd: Path, returncode: int = 0) -> subprocess.CompletedProcess:
    """``python -m lgm.train.cli ARGS`` in ``cwd`` on one thread, with this folder importable (for the
    probes of `training_probes`); asserts the exit status."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(
        [sys.executable, "-m", "lgm.train.cli", *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert result.returncode == returncode, result.stderr[-3000:]
    return result
