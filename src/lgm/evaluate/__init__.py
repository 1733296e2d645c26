"""Evaluation of trained flows."""

from lgm.evaluate.density import grid_log_prob, integrate_density, kl_to_truth

__all__ = ["grid_log_prob", "integrate_density", "kl_to_truth"]
