"""Lightning data modules. Batches are plain tensors ``[B, *shape]``."""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset

from lgm.data.toy import ToyDensity, get_density


def _unwrap(batch: tuple[Tensor]) -> Tensor:
    return batch[0]


def batch_loader(data: Tensor, batch_size: int, shuffle: bool, seed: int = 0) -> DataLoader:
    """Batches of an in-memory tensor, gathered with one index op per batch (no per-item collation)."""
    dataset = TensorDataset(data)
    sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed)) if shuffle else SequentialSampler(dataset)
    return DataLoader(
        dataset,
        sampler=BatchSampler(sampler, batch_size=batch_size, drop_last=shuffle),
        batch_size=None,
        collate_fn=_unwrap,
    )


class ToyDataModule(L.LightningDataModule):
    """Samples of a 2-D toy density (see `lgm.data.toy`), generated in memory: no files, no download.

    Train, validation and test sets are drawn with different seeds, so they never share points.

    Args:
        name: the toy density, e.g. ``"banana"``.
        n_train, n_val, n_test: set sizes.
        batch_size: training and evaluation batch size.
        seed: base seed; the three sets use ``seed``, ``seed + 1`` and ``seed + 2``.
    """

    def __init__(
        self,
        name: str = "banana",
        n_train: int = 50_000,
        n_val: int = 10_000,
        n_test: int = 100_000,
        batch_size: int = 512,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.density: ToyDensity = get_density(name)
        self.shape = (2,)
        self.n_train, self.n_val, self.n_test = n_train, n_val, n_test
        self.batch_size = batch_size
        self.seed = seed

    def setup(self, stage: str | None = None) -> None:
        self.train_data = self.density.sample(self.n_train, seed=self.seed)
        self.val_data = self.density.sample(self.n_val, seed=self.seed + 1)
        self.test_data = self.density.sample(self.n_test, seed=self.seed + 2)

    def train_dataloader(self) -> DataLoader:
        return batch_loader(self.train_data, self.batch_size, shuffle=True, seed=self.seed)

    def val_dataloader(self) -> DataLoader:
        return batch_loader(self.val_data, self.batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return batch_loader(self.test_data, self.batch_size, shuffle=False)
