"""Figures: 2-D density comparisons and sample plots; image grids and evaluation plots."""

from lgm.viz.density import plot_density_comparison, plot_samples
from lgm.viz.images import grid_image, plot_image_panels, plot_interpolations

__all__ = ["grid_image", "plot_density_comparison", "plot_image_panels", "plot_interpolations", "plot_samples"]
