"""What every figure function does last: lay the figure out and, when asked, save it.

Figures are built on `matplotlib.figure.Figure` directly, not through ``pyplot``: they need no
display and no global backend, are never kept alive by pyplot's figure list, and a notebook shows a
returned `Figure` inline.
"""

from __future__ import annotations

import os
from pathlib import Path

from matplotlib.figure import Figure

from lgm.utils.files import atomic_file


def finish(fig: Figure, path: str | os.PathLike | None = None, dpi: int = 100) -> Figure:
    """Tighten ``fig``'s layout, save it to ``path`` if given (atomically: the file appears whole or
    not at all; its format from the suffix, PNG without one), and return it."""
    fig.tight_layout()
    if path is not None:
        with atomic_file(path, "wb") as f:
            fig.savefig(f, dpi=dpi, format=Path(path).suffix[1:] or "png")
    return fig
