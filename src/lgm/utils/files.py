"""Writing files so that they appear whole or not at all, and checking beforehand that they can be written."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import torch


def check_writable(path: str | os.PathLike) -> None:
    """Raise an `OSError` whose one-line message names the fix unless a file can be written at ``path``
    (its missing folders made): checked before work whose result would have nowhere to go."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {str(path)!r}: it is a folder; name a file in it")
    folder = next((p for p in (path.parent, *path.parent.parents) if p.exists()), Path("."))
    if not folder.is_dir():
        raise NotADirectoryError(
            f"cannot write {str(path)!r}: {str(folder)!r} is a file, not a folder; choose another path"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(
            f"cannot write {str(path)!r}: no permission to write in {str(folder)!r}; choose a folder you can write to"
        )


@contextmanager
def atomic_file(path: str | os.PathLike, mode: str) -> Iterator[IO]:
    """A file to write that replaces ``path`` only once it is complete: a temporary file beside
    ``path``, flushed to disk, then renamed over it. A crash or kill at any moment leaves either the
    previous file or the new one, never a partial file."""
    path = Path(path)
    check_writable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save(payload: object, path: str | os.PathLike) -> None:
    """``torch.save(payload, path)`` atomically on any local file system (see `atomic_file`)."""
    with atomic_file(path, "wb") as f:
        torch.save(payload, f)


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    """Write ``text`` to ``path`` atomically (reports: never a half-written JSON file)."""
    with atomic_file(path, "w") as f:
        f.write(text)


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> None:
    """Write ``data`` to ``path`` atomically (model and weight files)."""
    with atomic_file(path, "wb") as f:
        f.write(data)
