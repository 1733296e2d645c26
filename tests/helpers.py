"""Helpers shared by the test modules (imported as ``from helpers import ...``; fixtures and markers
live in ``conftest.py``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lgm.flow.base import data_initialization

TESTS = Path(__file__).parent

# The real MNIST/FashionMNIST files, where a checkout has them (see the README).
SHARED_DATA = Path(os.environ.get("LGM_DATA_DIR") or TESTS.resolve().parents[1] / "shared" / "data")
needs_shared_data = pytest.mark.skipif(
    not (SHARED_DATA / "mnist.npz").is_file(), reason="the shared MNIST/FashionMNIST .npz files are not present"
)


def initialized_net(module, shape):
    """Run one forward in data-initialisation mode so the actnorms inside coupling networks initialise."""
    with data_initialization(module):
        module(torch.rand(16, *shape, generator=torch.Generator().manual_seed(8)))
    return module.eval()


def randomise(module: torch.nn.Module, seed: int = 0, std: float = 0.5) -> torch.nn.Module:
    """Give every parameter random values, so no layer is a zero-initialised identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(std * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def fake_data(tmp_path, name="fashion_mnist", shape=(28, 28), n_train=120, n_test=60, seed=0):
    """A small npz data set of random blobs, written where `load_images` looks for ``name``."""
    rng = np.random.default_rng(seed)
    x_train = (rng.random((n_train, *shape)) < 0.3).astype(np.uint8) * rng.integers(
        100, 256, (n_train, *shape), dtype=np.uint8
    )
    x_test = (rng.random((n_test, *shape)) < 0.3).astype(np.uint8) * rng.integers(
        100, 256, (n_test, *shape), dtype=np.uint8
    )
    np.savez(
        tmp_path / f"{name}.npz",
        x_train=x_train,
        y_train=rng.integers(0, 10, n_train),
        x_test=x_test,
        y_test=rng.integers(0, 10, n_test),
    )
    return tmp_path


class SteppingClock:
    """A stand-in for the `time` module whose monotonic clock moves 20 s at every reading."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        self.now += 20.0
        return self.now


# -- running ``lgm-flow`` in a subprocess, for the tests that kill runs or start several processes --

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
    "--model.flow.init_args.flow_steps",
    "2",
    "--model.flow.init_args.width",
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
    """``python -m lgm.cli ARGS`` in ``cwd`` on one thread, with this folder importable (for the
    probes of `training_probes`); asserts the exit status."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run([sys.executable, "-m", "lgm.cli", *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == returncode, result.stderr[-3000:]
    return result
