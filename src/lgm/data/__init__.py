"""Data: 2-D toy densities and Lightning data modules."""

from lgm.data import toy
from lgm.data.modules import ToyDataModule

__all__ = ["ToyDataModule", "toy"]
