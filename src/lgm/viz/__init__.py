"""Figures: 2-D density comparisons and sample plots."""

from lgm.viz.density import plot_density_comparison, plot_samples

__all__ = ["plot_density_comparison", "plot_samples"]
