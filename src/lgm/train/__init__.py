"""Training: the Lightning module, its callbacks, and `fit_flow` for notebooks and scripts."""

from lgm.train.ema import FlowEMA
from lgm.train.fit import FitResult, fit_flow
from lgm.train.guard import TrainingDiverged
from lgm.train.module import FlowModule

__all__ = ["FitResult", "FlowEMA", "FlowModule", "TrainingDiverged", "fit_flow"]
