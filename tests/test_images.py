"""Image readers agree across file layouts; bad data fails with messages that say what to do."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import SHARED_DATA, needs_shared_data

from lgm.data import ImageDataModule, InMemoryBatches, load_images
from lgm.data.images import IDX_FILES, read_idx


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    """The IDX format: magic (0x0000 08 ndim), big-endian int32 dims, then the bytes."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


def small_mnist_like(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, (50, 28, 28), dtype=np.uint8),
        "y_train": rng.integers(0, 10, 50, dtype=np.uint8),
        "x_test": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, 10, 20, dtype=np.uint8),
    }


def assert_same(a, b):
    for key in ("x_train", "y_train", "x_test", "y_test"):
        torch.testing.assert_close(getattr(a, key), getattr(b, key), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_readers_agree_byte_for_byte_across_layouts(tmp_path, name):
    arrays = small_mnist_like()
    (tmp_path / "npz").mkdir()
    np.savez_compressed(tmp_path / "npz" / f"{name}.npz", **arrays)
    for layout, compress in (("idx", False), ("idx_gz", True)):
        (tmp_path / layout).mkdir()
        for key, stem in IDX_FILES.items():
            write_idx(tmp_path / layout / (stem + (".gz" if compress else "")), arrays[key], compress)
    raw = tmp_path / "torchvision" / {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}[name] / "raw"
    raw.mkdir(parents=True)
    for key, stem in IDX_FILES.items():
        write_idx(raw / stem, arrays[key])

    from_npz = load_images(name, tmp_path / "npz")
    assert from_npz.x_train.shape == (50, 1, 28, 28) and from_npz.x_train.dtype == torch.uint8
    torch.testing.assert_close(from_npz.x_train[:, 0], torch.from_numpy(arrays["x_train"]), rtol=0, atol=0)
    for layout in ("idx", "idx_gz", "torchvision"):
        assert_same(load_images(name, tmp_path / layout), from_npz)


def test_cifar10_npz_in_nhwc_is_read_as_nchw(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, 12)
    np.savez(tmp_path / "cifar10.npz", x_train=x, y_train=y, x_test=x[:4], y_test=y[:4])
    arrays = load_images("cifar10", tmp_path)
    assert arrays.x_train.shape == (12, 3, 32, 32)
    torch.testing.assert_close(arrays.x_train.permute(0, 2, 3, 1), torch.from_numpy(x), rtol=0, atol=0)


def test_cifar10_torchvision_layout(tmp_path, monkeypatch):
    import pickle

    import torchvision.datasets

    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, 4).tolist()
        batches[name] = (data, labels)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [str(i) for i in range(10)]}, f)
    # Synthetic files cannot match torchvision's MD5 sums; everything else is torchvision's real reader.
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args: True)
    arrays = load_images("cifar10", tmp_path)
    assert arrays.x_train.shape == (20, 3, 32, 32) and arrays.x_test.shape == (4, 3, 32, 32)
    torch.testing.assert_close(arrays.x_test.reshape(4, -1), torch.from_numpy(batches["test_batch"][0]), rtol=0, atol=0)


def test_missing_data_names_the_files_and_the_fixes(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_images("mnist", tmp_path / "nowhere")
    message = str(info.value)
    for expected in (
        "does not exist",
        "mnist.npz",
        "train-images-idx3-ubyte",
        "MNIST/raw",
        "LGM_DATA_DIR",
        "download=True",
    ):
        assert expected in message


@pytest.mark.parametrize(
    "change, message",
    [
        ({"x_train": np.zeros((50, 27, 28), np.uint8)}, r"x_train: expected images of shape \[N, 1, 28, 28\]"),
        ({"x_train": np.zeros((50, 28, 28), np.float32)}, "x_train: expected integer pixels 0..255"),
        ({"x_test": np.full((20, 28, 28), 256, np.int32)}, "x_test: pixel values must lie in 0..255"),
        ({"y_train": np.zeros(49, np.uint8)}, "y_train: expected 50 integer labels"),
        ({"y_test": np.full(20, 10, np.uint8)}, r"y_test: labels must lie in 0..9"),
    ],
)
def test_bad_arrays_are_named(tmp_path, change, message):
    np.savez(tmp_path / "mnist.npz", **{**small_mnist_like(), **change})
    with pytest.raises(ValueError, match=message):
        load_images("mnist", tmp_path)


def test_npz_missing_an_array(tmp_path):
    arrays = small_mnist_like()
    del arrays["y_test"]
    np.savez(tmp_path / "mnist.npz", **arrays)
    with pytest.raises(ValueError, match=r"lacks the arrays \['y_test'\]"):
        load_images("mnist", tmp_path)


def test_truncated_idx_file(tmp_path):
    write_idx(tmp_path / "x", np.zeros((3, 4, 4), np.uint8))
    (tmp_path / "x").write_bytes((tmp_path / "x").read_bytes()[:-5])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "x")


def test_unknown_data_set():
    with pytest.raises(ValueError, match="unknown image data set 'svhn'"):
        load_images("svhn")


@needs_shared_data
@pytest.mark.parametrize("name, mean", [("mnist", 0.1307), ("fashion_mnist", 0.2860)])
def test_shared_data_sets_load(name, mean):
    arrays = load_images(name, SHARED_DATA)
    assert arrays.x_train.shape == (60000, 1, 28, 28) and arrays.x_test.shape == (10000, 1, 28, 28)
    assert abs(arrays.x_train.float().mean().item() / 255 - mean) < 1e-3


def test_digits_are_embedded_and_split():
    arrays = load_images("digits")
    assert arrays.x_train.shape == (1500, 1, 8, 8) and arrays.x_test.shape == (297, 1, 8, 8)
    assert arrays.x_train.dtype == torch.uint8 and int(arrays.x_train.max()) == 255


def test_the_seed_changes_the_order_but_not_the_held_out_images():
    first, second, other_split = (ImageDataModule("digits", seed=s, split_seed=k) for s, k in ((0, 0), (1, 0), (0, 1)))
    for dm in (first, second, other_split):
        dm.setup()
    assert torch.equal(first.val_index, second.val_index)
    assert not torch.equal(next(iter(first.train_dataloader()))[0], next(iter(second.train_dataloader()))[0])
    assert not torch.equal(first.val_index.sort().values, other_split.val_index.sort().values)


def test_data_module_split_batches_and_flip():
    dm = ImageDataModule("digits", val_size=100, batch_size=32, hflip=True, seed=3)
    dm.setup()
    assert len(dm.train_index) == 1400 and len(dm.val_index) == 100
    assert set(dm.train_index.tolist()).isdisjoint(dm.val_index.tolist())
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 1, 8, 8) and x.dtype == torch.uint8 and y.shape == (32,)

    unflipped = InMemoryBatches(dm.arrays.x_train[dm.train_index], batch_size=32, shuffle=True, seed=3)
    plain = next(iter(unflipped))
    same = (x == plain).flatten(1).all(1)
    mirrored = (x == plain.flip(-1)).flatten(1).all(1)
    assert (same | mirrored).all() and 0 < (mirrored & ~same).sum() < 32
    assert torch.equal(next(iter(dm.val_dataloader()))[0], dm.arrays.x_train[dm.val_index[:32]])  # never flipped


def test_data_module_rejects_an_impossible_split():
    dm = ImageDataModule("digits", val_size=1500)
    with pytest.raises(ValueError, match="val_size must be between 1 and 1499"):
        dm.setup()
