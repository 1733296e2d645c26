"""Checkpoint writing that survives a kill at any moment."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO

from lgm.utils.files import atomic_save


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, atomic on any local file system (`lgm.flow.io.atomic_save`).

    Lightning's own writer renames a temporary file from the system's temp folder, which is a copy,
    not an atomic rename, when that folder is on another file system than the run.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        atomic_save(checkpoint, path)
