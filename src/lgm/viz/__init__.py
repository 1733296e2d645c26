"""Figures: 2-D density comparisons and sample plots; image grids and evaluation plots.

Every ``plot_*`` function returns a matplotlib `Figure` (a notebook shows it inline) and saves it
when given ``path=``.
"""

from lgm.viz.callbacks import SampleGrid, ToyDiagnostics
from lgm.viz.density import plot_density_comparison, plot_samples
from lgm.viz.images import (
    grid_image,
    plot_corruption,
    plot_image_panels,
    plot_interpolations,
    plot_latent_norms,
    plot_scales,
)

__all__ = [
    "SampleGrid",
    "ToyDiagnostics",
    "grid_image",
    "plot_corruption",
    "plot_density_comparison",
    "plot_image_panels",
    "plot_interpolations",
    "plot_latent_norms",
    "plot_samples",
    "plot_scales",
]
