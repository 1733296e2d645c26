"""Sample quality of a set of images against real data, in one feature protocol.

`quality_metrics` takes generated (or any) uint8 images and the cached features of the real
reference set, and returns the requested metrics among ``fid``, ``kid``, ``is``, ``pr``.
Generated images are compared as 8-bit pixels, as they would be saved (`generate` quantises).
"""

from __future__ import annotations

import torch
from torch import Tensor
from tqdm.auto import tqdm

from lgm.evaluate.features import Protocol, cached_features, extract_features, real_images
from lgm.evaluate.metrics import fid, inception_score, kid, precision_recall
from lgm.flow.base import Flow
from lgm.flow.discrete import quantize

QUALITY_METRICS = ("fid", "kid", "is", "pr")


@torch.no_grad()
def generate(
    flow: Flow,
    n: int,
    temperature: float,
    seed: int = 0,
    batch_size: int = 500,
    denoise: bool | None = None,
    denoise_step: float = 1.0,
) -> Tensor:
    """``n`` samples of an image flow as uint8 images ``[n, C, H, W]`` (class-conditional: the classes of
    `sample_labels`); ``denoise`` and ``denoise_step`` as in `lgm.flow.Flow.sample`."""
    if flow.n_bits is None:
        raise ValueError("sample quality needs an image model (built with n_bits); this flow models continuous data")
    torch.manual_seed(seed)
    device = next(flow.parameters()).device
    out = []
    classes = sample_labels(n, flow.n_classes)
    for i in tqdm(range(0, n, batch_size), desc=f"sampling (T = {temperature})", leave=False):
        m = min(batch_size, n - i)
        labels = classes[i : i + m].to(device) if classes is not None else None
        x = flow.sample(m, temperature, labels, denoise=denoise, denoise_step=denoise_step)
        out.append(quantize(x.cpu(), flow.n_bits))
    return torch.cat(out)


def sample_labels(n: int, n_classes: int | None) -> Tensor | None:
    """The classes of `generate`'s ``n`` samples: ``0, 1, ..., n_classes - 1`` in turn ``[n]``; None
    for an unconditional model."""
    return torch.arange(n) % n_classes if n_classes else None


def class_accuracy(images: Tensor, labels: Tensor, protocol: Protocol) -> dict:
    """How often ``protocol``'s classifier gives uint8 ``images`` the class they were drawn for (``labels``
    ``[n]``): ``{"accuracy": .., "per_class": [..]}``, the per-class list indexed by class."""
    if protocol.logits is None:
        raise ValueError(f"the {protocol.name} protocol has no classifier, so no class accuracy")
    features = extract_features(protocol, images, desc=f"{protocol.name} features")
    with torch.inference_mode():
        correct = protocol.logits(features).argmax(1).cpu() == labels
    per_class = [correct[labels == c].float().mean().item() for c in range(int(labels.max()) + 1)]
    return {"accuracy": correct.float().mean().item(), "per_class": per_class}


def reference_features(protocol: Protocol, data: str, split: str, n: int, data_dir=None) -> Tensor:
    """Cached features of ``n`` real images of ``data``'s ``split`` (a subset drawn with seed 0)."""
    images = real_images(data, split, n, data_dir, seed=0)
    return cached_features(protocol, images, {"data": data, "split": split, "n": n, "subset_seed": 0})


def quality_metrics(
    images: Tensor,
    protocol: Protocol,
    reference: Tensor,
    wanted: tuple[str, ...] = QUALITY_METRICS,
    seed: int = 0,
    cache_as: dict | None = None,
) -> dict:
    """Metrics of uint8 ``images`` against real ``reference`` features ``[N, d]``.

    ``wanted`` among ``fid``, ``kid``, ``is`` (needs a protocol with logits), ``pr``. With
    ``cache_as`` (a description of real images), the images' features are cached too.
    Returns ``{"fid": .., "kid": .., "kid_std": .., "is": .., "is_std": .., "precision": .., "recall": ..}``
    (the keys asked for).
    """
    unknown = set(wanted) - set(QUALITY_METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; choose among {list(QUALITY_METRICS)}")
    if cache_as is not None:
        features = cached_features(protocol, images, cache_as)
    else:
        features = extract_features(protocol, images, desc=f"{protocol.name} features")
    out: dict = {}
    if "fid" in wanted:
        out["fid"] = fid(reference, features)
    if "kid" in wanted:
        out["kid"], out["kid_std"] = kid(reference, features, seed=seed)
    if "is" in wanted:
        if protocol.logits is None:
            raise ValueError(f"the {protocol.name} protocol has no class probabilities, so no Inception Score")
        with torch.inference_mode():
            out["is"], out["is_std"] = inception_score(protocol.logits(features), seed=seed)
    if "pr" in wanted:
        out["precision"], out["recall"] = precision_recall(reference, features)
    return out
