"""Training: the Lightning module, callbacks and the ``lgm-flow`` command."""

from lgm.train.callbacks import ToyDiagnostics
from lgm.train.module import FlowModule

__all__ = ["FlowModule", "ToyDiagnostics"]
