"""Data: 2-D toy densities, image data sets, and their Lightning data modules."""

from lgm.data import toy
from lgm.data.images import ImageArrays, load_images
from lgm.data.modules import ImageDataModule, InMemoryBatches, ToyDataModule

__all__ = ["ImageArrays", "ImageDataModule", "InMemoryBatches", "ToyDataModule", "load_images", "toy"]
