"""Training: the Lightning module, callbacks, `fit_flow` for notebooks and scripts, and the ``lgm-flow`` command."""

from lgm.train.callbacks import SampleGrid, ToyDiagnostics
from lgm.train.ema import FlowEMA
from lgm.train.fit import FitResult, fit_flow
from lgm.train.guard import TrainingDiverged
from lgm.train.module import FlowModule

__all__ = ["FitResult", "FlowEMA", "FlowModule", "SampleGrid", "ToyDiagnostics", "TrainingDiverged", "fit_flow"]
