"""Training: the Lightning module, callbacks and the ``lgm-flow`` command."""

from lgm.train.callbacks import SampleGrid, ToyDiagnostics
from lgm.train.module import FlowModule

__all__ = ["FlowModule", "SampleGrid", "ToyDiagnostics"]
