"""What every training run gets, whether `lgm-flow fit` or `lgm.train.fit_flow` starts it: where its
folder goes, and the Trainer settings and callbacks they share.

The two differ only in how they checkpoint: the CLI keeps Lightning's `ModelCheckpoint` (after each
validation, periodically, the best by ``val/loss``; see `lgm.train.callbacks.RunCheckpoint`), while
`fit_flow` saves right after the training batch at which its budget runs out, so that a budget that
ends mid-epoch resumes exactly (see `lgm.train.fit.StopAndCheckpoint`).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from lightning.pytorch.cli import instantiate_class

from lgm.train.callbacks import CheckpointOnSigterm
from lgm.train.ema import FlowEMA

DEFAULT_ROOT_DIR = "runs"
RUN_GROUP = "lgm"  # runs live in <root>/lgm/<version>/
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"  # inside a run folder


def new_run_version(root: str | Path = DEFAULT_ROOT_DIR) -> str:
    """The name of a new run folder under ``root``: the date and time, ``YYYYmmdd-HHMMSS`` (see
    `unused_run_version` for runs started in the same second)."""
    return unused_run_version([Path(root) / RUN_GROUP], datetime.now().strftime("%Y%m%d-%H%M%S"))


def unused_run_version(parents: list[Path], version: str) -> str:
    """``version``, else ``version-2``, ``version-3``, ...: the first name that no folder in ``parents``
    holds yet, so that two runs started in the same second never share a folder."""
    name, count = version, 1
    while any((parent / name).exists() for parent in parents):
        count += 1
        name = f"{version}-{count}"
    return name


def run_folder(root: str | Path, version: str) -> Path:
    """``<root>/lgm/<version>``: the folder of one run (logs, ``checkpoints/``, figures)."""
    return Path(root) / RUN_GROUP / version


def trainer_settings() -> dict[str, Any]:
    """Trainer arguments of every run, as config values (class paths), the form Lightning's CLI takes as
    defaults; `instantiated` builds them for a `lightning.Trainer`."""
    return {
        # `lgm.data.InMemoryBatches` shards batches across ranks itself, and resumes mid-epoch.
        "use_distributed_sampler": False,
        # Checkpoints written to a temporary file, then renamed: never half a checkpoint.
        "plugins": [{"class_path": "lgm.train.checkpoint_io.AtomicCheckpointIO"}],
    }


# The callbacks of every run, by the name the CLI gives their options (``--ema.decay``): the weights'
# moving average, and the checkpoint written when the run is stopped by SIGTERM.
RUN_CALLBACKS = {"ema": FlowEMA, "sigterm_checkpoint": CheckpointOnSigterm}


def instantiated(value: Any) -> Any:
    """Config values with class paths (as `trainer_settings` gives them) as the objects they describe."""
    if isinstance(value, dict) and "class_path" in value:
        return instantiate_class((), {"init_args": {}, **value})
    if isinstance(value, list):
        return [instantiated(v) for v in value]
    if isinstance(value, dict):
        return {k: instantiated(v) for k, v in value.items()}
    return value
