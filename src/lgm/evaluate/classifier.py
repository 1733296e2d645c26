"""The data-set classifiers of the classifier-FID protocol: a small CNN on 32x32 images.

Its penultimate layer (`Classifier.features`, 256-d) is the feature space of the classifier FID,
KID and precision/recall; its softmax is the Inception Score's ``p(y|x)``. Trained weights for MNIST
and FashionMNIST ship inside the package (`load_classifier`), each checked against a SHA-256
checksum before it is read.

Input convention (`Classifier.forward`, `Classifier.features`): images ``[B, C, 28, 28]`` or
``[B, C, 32, 32]``, either uint8 pixels in 0..255 or floats in [0, 1]. 28x28 images are padded to
32x32 with black borders (centred), so MNIST-like data and padded flow samples look the same to it.
"""

from __future__ import annotations

import hashlib
import io
from importlib import resources

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lgm.data.images import get_dataset
from lgm.utils.files import atomic_write_bytes

SIZE = 32
FEATURE_DIM = 256

# SHA-256 of the shipped weight files, checked by `load_classifier` before they are read, and the
# test-set accuracy each reached (all 10,000 test images; docs/how-to/evaluation.md has the commands).
SHIPPED_WEIGHTS = {
    "mnist": "78646215dba8e9a8239e7f89a62fa4fedda1413703546e20c20f9618f20cd9ae",
    "fashion_mnist": "f51d3628630308bdfe3a729a35756bf4cd26a82afa62424c2a912cd47fc8c738",
}
SHIPPED_TEST_ACCURACY = {
    "mnist": 0.9955,
    "fashion_mnist": 0.9384,
}


def to_unit_images(x: Tensor, channels: int) -> Tensor:
    """Check a batch of images and return it as float32 ``[B, C, 32, 32]`` in [0, 1].

    Accepts uint8 (or other integer) pixels in 0..255 or floats in [0, 1], shaped
    ``[B, C, 28, 28]`` (padded with black, centred) or ``[B, C, 32, 32]``.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"expected a torch.Tensor of images, got {type(x).__name__}")
    if x.dim() != 4 or x.shape[1] != channels or tuple(x.shape[2:]) not in ((28, 28), (SIZE, SIZE)):
        raise ValueError(
            f"expected images of shape [B, {channels}, 28, 28] or [B, {channels}, 32, 32], got {list(x.shape)}"
        )
    if x.dtype == torch.bool:
        raise ValueError("expected uint8 pixels in 0..255 or floats in [0, 1], got a bool tensor")
    if x.is_floating_point():
        if x.numel() and (x.min() < 0 or x.max() > 1):
            raise ValueError(
                f"float images must lie in [0, 1], got values in [{x.min().item():.3g}, {x.max().item():.3g}]; "
                "pass uint8 pixels 0..255 as they are, or divide by 255"
            )
        x = x.float()
    else:
        if x.numel() and (x.min() < 0 or x.max() > 255):
            raise ValueError(f"integer pixels must lie in 0..255, got [{x.min().item()}, {x.max().item()}]")
        x = x.float() / 255
    if x.shape[-1] != SIZE:
        pad = (SIZE - x.shape[-1]) // 2
        x = F.pad(x, (pad, pad, pad, pad))
    return x


def _conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class Classifier(nn.Module):
    """A VGG-style CNN: 32x32 -> 16 -> 8 -> 4 (conv3x3-BN-ReLU blocks), then 2048 -> 256 -> classes.

    About 0.8M parameters. ``features(x)`` is the 256-d penultimate layer (after ReLU, before
    dropout); ``forward(x)`` the class logits ``[B, n_classes]``. Inputs: see `to_unit_images`.
    """

    def __init__(self, in_channels: int = 1, n_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.in_channels, self.n_classes, self.width = in_channels, n_classes, width
        w = width
        self.body = nn.Sequential(
            _conv(in_channels, w),
            nn.MaxPool2d(2),
            _conv(w, 2 * w),
            _conv(2 * w, 2 * w),
            nn.MaxPool2d(2),
            _conv(2 * w, 4 * w),
            _conv(4 * w, 4 * w),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(4 * w * 4 * 4, FEATURE_DIM),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(FEATURE_DIM, n_classes))

    def features(self, x: Tensor) -> Tensor:
        """Penultimate-layer features ``[B, 256]`` of images ``x`` (see `to_unit_images`)."""
        return self.body((to_unit_images(x, self.in_channels) - 0.5) / 0.5)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits ``[B, n_classes]``."""
        return self.head(self.features(x))


def classifier_for(data: str) -> Classifier:
    """An untrained classifier shaped for the data set ``data`` (``mnist``, ``fashion_mnist``, ``cifar10``)."""
    info = get_dataset(data)
    if info.shape[1:] not in ((28, 28), (SIZE, SIZE)):
        raise ValueError(f"the classifier takes 28x28 or 32x32 images; {data!r} has {info.shape[1]}x{info.shape[2]}")
    return Classifier(in_channels=info.shape[0], n_classes=info.n_classes)


def save_classifier(model: Classifier, path, half: bool = True) -> str:
    """Write the weights (float16 by default, to halve the file) and return the file's SHA-256."""
    state = {k: (v.half() if half and v.is_floating_point() else v) for k, v in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(
        {"in_channels": model.in_channels, "n_classes": model.n_classes, "width": model.width, "state": state}, buffer
    )
    data = buffer.getvalue()
    atomic_write_bytes(data, path)
    return hashlib.sha256(data).hexdigest()


def read_classifier(data: bytes, source: str) -> Classifier:
    """Rebuild a classifier from the bytes `save_classifier` wrote; eval mode, float32."""
    try:
        saved = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        model = Classifier(saved["in_channels"], saved["n_classes"], saved["width"])
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in saved["state"].items()})
    except Exception as e:  # noqa: BLE001 - any failure means the file is not a classifier
        raise ValueError(f"{source} is not a classifier written by lgm-flow classifier fit: {e}") from e
    return model.eval()


def load_classifier(data: str | None = None, path=None) -> Classifier:
    """The shipped classifier for ``data`` (checksum-verified), or one written to ``path`` by `save_classifier`."""
    if path is not None:
        with open(path, "rb") as f:
            return read_classifier(f.read(), str(path))
    if data not in SHIPPED_WEIGHTS:
        raise ValueError(
            f"no shipped classifier for {data!r} (there are {sorted(SHIPPED_WEIGHTS)}); train one with "
            f"`lgm-flow classifier fit --data {data} --out PATH` and pass its path"
        )
    blob = resources.files("lgm.evaluate").joinpath("weights", f"{data}_classifier.pt").read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != SHIPPED_WEIGHTS[data]:
        raise ValueError(
            f"the shipped {data} classifier weights are damaged (SHA-256 {digest}, expected "
            f"{SHIPPED_WEIGHTS[data]}); reinstall lgm-flow"
        )
    return read_classifier(blob, f"the shipped {data} classifier")
