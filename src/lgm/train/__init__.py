"""Training: the Lightning module, callbacks and the ``lgm-flow`` command."""

from lgm.train.callbacks import SampleGrid, ToyDiagnostics
from lgm.train.ema import FlowEMA
from lgm.train.guard import TrainingDiverged
from lgm.train.module import FlowModule

__all__ = ["FlowEMA", "FlowModule", "SampleGrid", "ToyDiagnostics", "TrainingDiverged"]
