"""Lightning data modules: 2-D toy points (batches ``float32 [B, 2]``) and images (batches
``(uint8 [B, C, H, W], int64 [B])``)."""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset

from lgm.data.images import ImageArrays, get_dataset, load_images
from lgm.data.toy import ToyDensity, get_density


def _unwrap_single(batch: tuple[Tensor, ...]) -> Tensor | tuple[Tensor, ...]:
    return batch[0] if len(batch) == 1 else batch


def batch_loader(*tensors: Tensor, batch_size: int, shuffle: bool, seed: int = 0) -> DataLoader:
    """Batches of in-memory tensors, gathered with one index op per batch (no per-item collation).

    One tensor gives batches that are tensors; several give tuples. Shuffling uses its own seeded
    generator, so the data order does not depend on the global random state.
    """
    dataset = TensorDataset(*tensors)
    sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed)) if shuffle else SequentialSampler(dataset)
    return DataLoader(
        dataset,
        sampler=BatchSampler(sampler, batch_size=batch_size, drop_last=shuffle),
        batch_size=None,
        collate_fn=_unwrap_single,
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
        return batch_loader(self.train_data, batch_size=self.batch_size, shuffle=True, seed=self.seed)

    def val_dataloader(self) -> DataLoader:
        return batch_loader(self.val_data, batch_size=self.batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return batch_loader(self.test_data, batch_size=self.batch_size, shuffle=False)


class ImageDataModule(L.LightningDataModule):
    """An image data set (see `lgm.data.images`) held in memory as uint8 tensors.

    The validation set is a seeded random subset of the official training set; the test set is
    the official one, kept for final numbers. Batches are ``(images uint8 [B, C, H, W], labels)``;
    the model dequantises them (see `lgm.flow.discrete`).

    Args:
        name: ``"digits"`` (embedded, 8x8), ``"mnist"``, ``"fashion_mnist"`` or ``"cifar10"``.
        data_dir: folder with the data (default ``$LGM_DATA_DIR``, then ``~/.cache/lgm-flow/data``).
        download: let torchvision download missing data (needs a network).
        val_size: validation images taken from the training set (default: 5,000, or a tenth of the
            training set if that is smaller).
        batch_size: batch size for training and evaluation.
        hflip: flip training images horizontally at random (for CIFAR-10; not for digits).
        seed: seed of the train/validation split and of the training order.
    """

    def __init__(
        self,
        name: str = "digits",
        data_dir: str | None = None,
        download: bool = False,
        val_size: int | None = None,
        batch_size: int = 64,
        hflip: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.info = get_dataset(name)
        self.shape = self.info.shape
        self.n_classes = self.info.n_classes
        self.data_dir, self.download = data_dir, download
        self.val_size, self.batch_size, self.hflip, self.seed = val_size, batch_size, hflip, seed

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "arrays"):
            return
        self.arrays: ImageArrays = load_images(self.info.name, self.data_dir, self.download)
        n = len(self.arrays.x_train)
        val_size = self.val_size if self.val_size is not None else min(5000, n // 10)
        if not 0 < val_size < n:
            raise ValueError(f"val_size must be between 1 and {n - 1} for {self.info.name}, got {val_size}")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        self.val_index, self.train_index = order[:val_size], order[val_size:]

    def train_dataloader(self) -> DataLoader:
        a, i = self.arrays, self.train_index
        return batch_loader(a.x_train[i], a.y_train[i], batch_size=self.batch_size, shuffle=True, seed=self.seed)

    def val_dataloader(self) -> DataLoader:
        a, i = self.arrays, self.val_index
        return batch_loader(a.x_train[i], a.y_train[i], batch_size=self.batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        a = self.arrays
        return batch_loader(a.x_test, a.y_test, batch_size=self.batch_size, shuffle=False)

    def on_after_batch_transfer(self, batch: tuple[Tensor, Tensor], dataloader_idx: int) -> tuple[Tensor, Tensor]:
        if self.hflip and self.trainer is not None and self.trainer.training:
            x, y = batch
            flip = torch.rand(x.shape[0], device=x.device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            return x, y
        return batch
