"""Image data sets as uint8 tensors: MNIST, FashionMNIST, CIFAR-10, and scikit-learn's 8x8 digits.

`load_images(name, data_dir)` looks for the data in this order:

1. ``data_dir`` (or the environment variable ``LGM_DATA_DIR``), holding any of
   - ``<name>.npz`` with uint8 ``x_train, y_train, x_test, y_test`` (e.g. ``mnist.npz``);
   - the original IDX files (``train-images-idx3-ubyte`` ... , ``.gz`` or not), for MNIST and
     FashionMNIST;
   - torchvision's layout (``MNIST/raw/``, ``FashionMNIST/raw/``, ``cifar-10-batches-py/``);
2. else, with ``download=True``, torchvision downloads it into that folder (default
   ``~/.cache/lgm-flow/data``).

``digits`` is embedded in scikit-learn (1,797 images, values 0..16, rescaled to 0..255), so it
needs no file and no network: the default for quick runs.

Every source returns the same thing: `ImageArrays` with images ``uint8 [N, C, H, W]`` and labels
``int64 [N]``, checked for shape, dtype and range.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

DEFAULT_DATA_DIR = Path.home() / ".cache" / "lgm-flow" / "data"


@dataclass(frozen=True)
class ImageDataset:
    """What is known about a data set: its image shape, classes, and torchvision's name for it."""

    name: str
    shape: tuple[int, int, int]
    n_classes: int
    torchvision_name: str | None


DATASETS = {
    d.name: d
    for d in (
        ImageDataset("mnist", (1, 28, 28), 10, "MNIST"),
        ImageDataset("fashion_mnist", (1, 28, 28), 10, "FashionMNIST"),
        ImageDataset("cifar10", (3, 32, 32), 10, "CIFAR10"),
        ImageDataset("digits", (1, 8, 8), 10, None),
    )
}

IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
DIGITS_TEST_SIZE = 297  # of 1,797: a fixed, seeded 1,500 / 297 split


@dataclass(frozen=True)
class ImageArrays:
    """Images ``uint8 [N, C, H, W]`` and labels ``int64 [N]`` of the official train and test sets."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor


def get_dataset(name: str) -> ImageDataset:
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown image data set {name!r}; choose one of {sorted(DATASETS)}") from None


def load_images(name: str, data_dir: str | os.PathLike | None = None, download: bool = False) -> ImageArrays:
    """Load a data set from ``data_dir`` (or ``$LGM_DATA_DIR``), or download it; see the module doc."""
    info = get_dataset(name)
    if name == "digits":
        return _digits()
    root = Path(data_dir or os.environ.get("LGM_DATA_DIR") or DEFAULT_DATA_DIR)
    for reader in (_read_npz, _read_idx, _read_torchvision):
        arrays = reader(info, root)
        if arrays is not None:
            return arrays
    if download:
        _torchvision_class(info)(root=str(root), train=True, download=True)
        _torchvision_class(info)(root=str(root), train=False, download=True)
        arrays = _read_torchvision(info, root)
        if arrays is not None:
            return arrays
    raise FileNotFoundError(_missing_message(info, root))


def validation_split(n_train: int, val_size: int | None = None, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``(val_index, train_index)``: the held-out validation images of a training set of ``n_train``.

    A seeded permutation; its first ``val_size`` indices (default: 5,000, or a tenth of the set if
    that is smaller) are the validation set. `ImageDataModule` and the evaluation's ``val``
    reference split share it, so a model is never scored against images it trained on.
    """
    val_size = val_size if val_size is not None else min(5000, n_train // 10)
    if not 0 < val_size < n_train:
        raise ValueError(f"val_size must be between 1 and {n_train - 1}, got {val_size}")
    order = torch.randperm(n_train, generator=torch.Generator().manual_seed(seed))
    return order[:val_size], order[val_size:]


def to_nchw(x: np.ndarray | Tensor, shape: tuple[int, int, int], what: str) -> Tensor:
    """Check pixel arrays and return them as ``uint8 [N, C, H, W]``; accepts NHW (C = 1), NCHW or NHWC."""
    x = torch.as_tensor(np.asarray(x))
    if x.is_floating_point() or x.dtype == torch.bool:
        raise ValueError(
            f"{what}: expected integer pixels 0..255 (uint8), got {x.dtype}; "
            "convert images in [0, 1] with (x * 255).round().astype(numpy.uint8)"
        )
    if x.numel() and (x.min() < 0 or x.max() > 255):
        raise ValueError(f"{what}: pixel values must lie in 0..255, got values in [{x.min().item()}, {x.max().item()}]")
    c, h, w = shape
    if x.dim() == 3 and c == 1 and tuple(x.shape[1:]) == (h, w):
        x = x.unsqueeze(1)
    elif x.dim() == 4 and tuple(x.shape[1:]) == (h, w, c) and tuple(x.shape[1:]) != shape:
        x = x.permute(0, 3, 1, 2)
    if x.dim() != 4 or tuple(x.shape[1:]) != shape:
        raise ValueError(
            f"{what}: expected images of shape [N, {c}, {h}, {w}] (or [N, {h}, {w}, {c}]), got {list(x.shape)}"
        )
    return x.to(torch.uint8).contiguous()


def to_labels(y: np.ndarray | Tensor, n: int, n_classes: int, what: str) -> Tensor:
    """Check labels and return them as ``int64 [N]``."""
    y = torch.as_tensor(np.asarray(y))
    if y.is_floating_point() or y.dim() != 1 or len(y) != n:
        raise ValueError(f"{what}: expected {n} integer labels of shape [{n}], got {y.dtype} of shape {list(y.shape)}")
    if n and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"{what}: labels must lie in 0..{n_classes - 1}, got [{y.min().item()}, {y.max().item()}]")
    return y.long()


def _arrays(info: ImageDataset, source: str, x_train, y_train, x_test, y_test) -> ImageArrays:
    x_train = to_nchw(x_train, info.shape, f"{source} x_train")
    x_test = to_nchw(x_test, info.shape, f"{source} x_test")
    return ImageArrays(
        x_train,
        to_labels(y_train, len(x_train), info.n_classes, f"{source} y_train"),
        x_test,
        to_labels(y_test, len(x_test), info.n_classes, f"{source} y_test"),
    )


def _read_npz(info: ImageDataset, root: Path) -> ImageArrays | None:
    path = root / f"{info.name}.npz"
    if not path.is_file():
        return None
    with np.load(path) as f:
        missing = [k for k in IDX_FILES if k not in f.files]
        if missing:
            raise ValueError(f"{path} lacks the arrays {missing}; it must hold x_train, y_train, x_test, y_test")
        return _arrays(info, str(path), *(f[k] for k in IDX_FILES))


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (``.gz`` or not): a big-endian header, then unsigned bytes."""
    path = Path(path)
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    magic = int.from_bytes(data[:4], "big")
    if magic >> 8 != 0x08:  # 0x08 = unsigned byte
        raise ValueError(f"{path} is not an IDX file of unsigned bytes (magic number {magic:#x})")
    ndim = magic & 0xFF
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    payload = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if payload.size != int(np.prod(dims)):
        raise ValueError(f"{path} is truncated: header says {dims}, found {payload.size} values")
    return payload.reshape(dims).copy()  # frombuffer's view is read-only


def _find_idx(root: Path, stem: str) -> Path | None:
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_idx(info: ImageDataset, root: Path) -> ImageArrays | None:
    if info.name not in ("mnist", "fashion_mnist"):
        return None
    paths = {key: _find_idx(root, stem) for key, stem in IDX_FILES.items()}
    if not all(paths.values()):
        return None
    return _arrays(info, str(root), *(read_idx(paths[k]) for k in IDX_FILES))


def _torchvision_class(info: ImageDataset):
    import torchvision.datasets

    return getattr(torchvision.datasets, info.torchvision_name)


def _read_torchvision(info: ImageDataset, root: Path) -> ImageArrays | None:
    folder = root / ("cifar-10-batches-py" if info.name == "cifar10" else f"{info.torchvision_name}/raw")
    if not folder.is_dir():
        return None
    cls = _torchvision_class(info)
    train, test = cls(root=str(root), train=True), cls(root=str(root), train=False)
    return _arrays(info, str(folder), train.data, train.targets, test.data, test.targets)


def _digits() -> ImageArrays:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255 / 16)).astype(np.uint8)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0)).numpy()
    test, train = order[:DIGITS_TEST_SIZE], order[DIGITS_TEST_SIZE:]
    return _arrays(
        DATASETS["digits"],
        "scikit-learn digits",
        images[train],
        digits.target[train],
        images[test],
        digits.target[test],
    )


def _missing_message(info: ImageDataset, root: Path) -> str:
    expected = [f"{info.name}.npz (uint8 x_train, y_train, x_test, y_test)"]
    if info.name in ("mnist", "fashion_mnist"):
        expected.append("the IDX files " + ", ".join(f"{s}[.gz]" for s in IDX_FILES.values()))
        expected.append(f"torchvision's {info.torchvision_name}/raw/ folder")
    else:
        expected.append("torchvision's cifar-10-batches-py/ folder")
    state = "does not exist" if not root.exists() else "holds none of them"
    return (
        f"no {info.name} data found: {root} {state}. Expected one of: " + "; ".join(expected) + ". "
        "Point data_dir (or the LGM_DATA_DIR environment variable) at a folder holding them, "
        "or pass download=True (--data.init_args.download true) to fetch them with torchvision when online."
    )
