"""Lightning data modules: 2-D toy points (batches ``float32 [B, 2]``) and images (batches
``(uint8 [B, C, H, W], int64 [B])``)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import lightning as L
import torch
from torch import Tensor

from lgm.data.images import ImageArrays, get_dataset, load_images, validation_split
from lgm.data.toy import ToyDensity, get_density


def _distributed_rank_and_size() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class InMemoryBatches:
    """Batches of in-memory tensors, resumable mid-epoch, sharded across data-parallel ranks.

    Each batch is gathered with one index op (no per-item collation): one tensor gives batches
    that are tensors, several give tuples. The order is a function of ``(seed, epoch)`` only, so
    a resumed run sees exactly the batches an uninterrupted one would have:

    - ``set_epoch(e)`` (Lightning calls it before every epoch) picks the epoch's permutation;
    - ``state_dict()`` / ``load_state_dict()`` (Lightning saves them in checkpoints) record the epoch
      and how many batches of it were handed out.

    Under ``torch.distributed`` rank ``r`` of ``W`` takes batches ``r, r + W, r + 2W, ...``; when
    shuffling, every rank gets the same number of batches (the remainder is dropped), so no rank waits
    on another; in evaluation order every sample is kept (batches are made smaller only if there are
    fewer than ``W``). Training runs therefore keep ``use_distributed_sampler=False`` in the trainer.

    Args:
        tensors: tensors with the same first dimension (e.g. images ``uint8 [N, C, H, W]`` and labels ``[N]``).
        batch_size: samples per batch (per rank under data parallelism).
        shuffle: a fresh seeded permutation each epoch and incomplete last batches dropped (training);
            otherwise the stored order and every sample (evaluation).
        seed: seed of the permutations and of the flips.
        hflip: mirror each image (the last dimension) with probability 1/2, drawn from the same
            seeded stream as the order. Only for images; applies to the first tensor.
    """

    def __init__(self, *tensors: Tensor, batch_size: int, shuffle: bool, seed: int = 0, hflip: bool = False) -> None:
        if not tensors or any(len(t) != len(tensors[0]) for t in tensors):
            raise ValueError("InMemoryBatches needs one or more tensors with the same first dimension")
        check_batch_size(batch_size)
        self.tensors, self.batch_size, self.shuffle, self.seed, self.hflip = tensors, batch_size, shuffle, seed, hflip
        self.epoch = 0
        self._handed_out = 0  # batches of the current epoch already yielded
        self._resume_at = 0  # batches to skip at the next iteration (set by load_state_dict)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self._resume_at = epoch, 0

    # Lightning finds ``set_epoch`` on a loader's ``sampler`` (or ``batch_sampler.sampler``).
    batch_sampler = None

    @property
    def sampler(self) -> InMemoryBatches:
        return self

    def _batch_indices(self) -> list[Tensor]:
        n = len(self.tensors[0])
        rank, world = _distributed_rank_and_size()
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self._epoch_seed()))
            batches = list(order[: n - n % self.batch_size].split(self.batch_size))
            batches = batches[: len(batches) - len(batches) % world]
        else:
            # Smaller batches only when there are fewer batches than ranks: every rank needs one.
            size = self.batch_size if math.ceil(n / self.batch_size) >= world else math.ceil(n / world)
            batches = list(torch.arange(n).split(size))
        return batches[rank::world]

    def _epoch_seed(self) -> int:
        return self.seed * 1_000_003 + self.epoch

    def __len__(self) -> int:
        return len(self._batch_indices())

    def __iter__(self) -> Iterator[Tensor | tuple[Tensor, ...]]:
        batches, start = self._batch_indices(), self._resume_at
        self._resume_at = 0
        if self.hflip:
            flip_stream = torch.Generator().manual_seed(self._epoch_seed() + 500_009)
            flips = torch.rand(len(self.tensors[0]), generator=flip_stream) < 0.5
        for position in range(start, len(batches)):
            index = batches[position]
            batch = [t[index] for t in self.tensors]
            if self.hflip:
                mirrored = flips[index].view(-1, *[1] * (batch[0].dim() - 1))
                batch[0] = torch.where(mirrored, batch[0].flip(-1), batch[0])
            self._handed_out = position + 1
            yield batch[0] if len(batch) == 1 else tuple(batch)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches": self._handed_out, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(
                f"the checkpoint's data order was seeded with {state['seed']}, this data module with {self.seed}: "
                "resume with the same --data.init_args.seed"
            )
        self.epoch, self._resume_at = state["epoch"], state["batches"]


def check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")


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
        check_batch_size(batch_size)
        if min(n_train, n_val, n_test) < 1:
            raise ValueError(f"n_train, n_val and n_test must be at least 1, got {n_train}, {n_val}, {n_test}")
        self.shape = (2,)
        self.n_train, self.n_val, self.n_test = n_train, n_val, n_test
        self.batch_size = batch_size
        self.seed = seed

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "train_data"):
            return
        self.train_data = self.density.sample(self.n_train, seed=self.seed)
        self.val_data = self.density.sample(self.n_val, seed=self.seed + 1)
        self.test_data = self.density.sample(self.n_test, seed=self.seed + 2)

    def train_dataloader(self) -> InMemoryBatches:
        return InMemoryBatches(self.train_data, batch_size=self.batch_size, shuffle=True, seed=self.seed)

    def val_dataloader(self) -> InMemoryBatches:
        return InMemoryBatches(self.val_data, batch_size=self.batch_size, shuffle=False)

    def test_dataloader(self) -> InMemoryBatches:
        return InMemoryBatches(self.test_data, batch_size=self.batch_size, shuffle=False)


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
        seed: seed of the training order (and flips): what differs between the seeds of a recipe.
        split_seed: seed of the train/validation split, kept apart from ``seed`` so that every seed of a
            recipe holds out the same validation images (those `lgm-flow evaluate --reference val`
            and ``--select-temperature`` score against, with the defaults).
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
        split_seed: int = 0,
    ) -> None:
        super().__init__()
        self.info = get_dataset(name)
        check_batch_size(batch_size)
        self.shape = self.info.shape
        self.n_classes = self.info.n_classes
        self.data_dir, self.download = data_dir, download
        self.val_size, self.batch_size, self.hflip, self.seed, self.split_seed = (
            val_size,
            batch_size,
            hflip,
            seed,
            split_seed,
        )

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "arrays"):
            return
        self.arrays: ImageArrays = load_images(self.info.name, self.data_dir, self.download)
        try:
            self.val_index, self.train_index = validation_split(
                len(self.arrays.x_train), self.val_size, self.split_seed
            )
        except ValueError as e:
            raise ValueError(f"{e} for {self.info.name}") from None

    def train_dataloader(self) -> InMemoryBatches:
        a, i = self.arrays, self.train_index
        return InMemoryBatches(
            a.x_train[i], a.y_train[i], batch_size=self.batch_size, shuffle=True, seed=self.seed, hflip=self.hflip
        )

    def val_dataloader(self) -> InMemoryBatches:
        a, i = self.arrays, self.val_index
        return InMemoryBatches(a.x_train[i], a.y_train[i], batch_size=self.batch_size, shuffle=False)

    def test_dataloader(self) -> InMemoryBatches:
        a = self.arrays
        return InMemoryBatches(a.x_test, a.y_test, batch_size=self.batch_size, shuffle=False)
