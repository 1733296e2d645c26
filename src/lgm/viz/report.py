"""The figures of an evaluation report, drawn from the material `lgm.evaluate.evaluate` computes."""

from __future__ import annotations

from pathlib import Path

from lgm.viz.images import plot_corruption, plot_image_panels, plot_interpolations, plot_latent_norms, plot_scales

# The kinds of figure a report holds, and what draws each from its arguments.
DRAWERS = {
    "image_panels": plot_image_panels,
    "interpolations": plot_interpolations,
    "latent_norms": plot_latent_norms,
    "scales": plot_scales,
    "corruption": plot_corruption,
}


def draw_report_figures(figures: dict[str, tuple[str, dict]], stem: Path) -> dict[str, str]:
    """Write each figure ``{name: (kind, arguments)}`` to ``<stem>_<name>.png``; return ``{name: path}``."""
    paths = {}
    for name, (kind, arguments) in figures.items():
        paths[name] = f"{stem}_{name}.png"
        DRAWERS[kind](**arguments, path=paths[name])
    return paths
