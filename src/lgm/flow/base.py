"""The transform protocol, composition, and `Flow` = transform + prior.

Conventions used by every transform in `lgm.flow`:

* ``forward`` goes data -> latent (the *normalising* direction) and returns ``(z, logdet)``,
  where ``logdet = log|det dz/dx|`` per sample, shape ``[B]``, summed over every dimension.
* ``inverse`` goes latent -> data and returns ``x`` only. Every transform is exactly invertible.
* ``Flow.log_prob(x) = prior.log_prob(z) + logdet``, in nats, per sample (change of variables).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from lgm.flow.discrete import check_images, dequantize, reduce_bits


class Transform(nn.Module):
    """A bijection between data space and latent space.

    Subclasses implement ``forward(x) -> (z, logdet)`` and ``inverse(z) -> x``. Inputs carry a
    leading batch dimension ``B``; ``logdet`` has shape ``[B]``.
    """

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def inverse(self, z: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class Compose(Transform):
    """Apply transforms in order in the forward direction (data -> latent), reversed in the inverse.

    The log-determinants add up: ``log|det d(f2 o f1)/dx| = log|det df1/dx| + log|det df2/dy|``.
    """

    def __init__(self, *transforms: Transform) -> None:
        super().__init__()
        self.transforms = nn.ModuleList(transforms)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logdet = x.new_zeros(x.shape[0])
        for transform in self.transforms:
            x, step_logdet = transform(x)
            logdet = logdet + step_logdet
        return x, logdet

    def inverse(self, z: Tensor) -> Tensor:
        for transform in reversed(self.transforms):
            z = transform.inverse(z)
        return z


class Reshape(Transform):
    """Reshape each sample from ``in_shape`` to ``out_shape`` (volume preserving: logdet = 0)."""

    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> None:
        super().__init__()
        if math.prod(in_shape) != math.prod(out_shape):
            raise ValueError(f"cannot reshape {in_shape} into {out_shape}: sizes differ")
        self.in_shape = tuple(in_shape)
        self.out_shape = tuple(out_shape)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x.reshape(x.shape[0], *self.out_shape), x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor) -> Tensor:
        return z.reshape(z.shape[0], *self.in_shape)


class DataInitialized(Transform):
    """A transform whose parameters are set from data (normalisation, actnorm).

    Initialisation happens only inside `data_initialization` (which `Flow.initialize` and training
    use): the layer then sets itself from the first batch it sees there. The flag ``initialized``
    is a buffer, saved in checkpoints, so loading trained weights never re-initialises. Used before
    initialisation, the layer raises rather than compute with placeholder parameters.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("initialized", torch.tensor(False))
        self.initializing = False
        self._known_initialized = False

    @property
    def is_initialized(self) -> bool:
        """The ``initialized`` flag, remembered on the Python side once true, so that the hot path
        never reads it back from an accelerator (a device synchronisation per layer and call)."""
        if not self._known_initialized:
            self._known_initialized = bool(self.initialized)
        return self._known_initialized

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._known_initialized = False  # the loaded flag may say otherwise: read it again
        super()._load_from_state_dict(*args, **kwargs)

    def initialize(self, x: Tensor) -> None:  # pragma: no cover - abstract
        """Set the parameters from a batch ``x`` of this layer's inputs."""
        raise NotImplementedError

    def ensure_initialized(self, x: Tensor | None = None) -> None:
        """Initialise from ``x`` inside `data_initialization`; raise a `RuntimeError` if still uninitialised."""
        if self.is_initialized:
            return
        if x is None or not self.initializing:
            raise RuntimeError(
                f"{type(self).__name__} has not been initialised from data yet. Call flow.initialize(batch) "
                "(training with FlowModule does this before the first step) or load trained weights"
            )
        with torch.no_grad():
            self.initialize(x)
        self.initialized.fill_(True)


@contextmanager
def data_initialization(module: nn.Module) -> Iterator[None]:
    """Within this context, uninitialised `DataInitialized` layers of ``module`` set themselves from
    the first batch that reaches them."""
    layers = [m for m in module.modules() if isinstance(m, DataInitialized)]
    for layer in layers:
        layer.initializing = True
    try:
        yield
    finally:
        for layer in layers:
            layer.initializing = False


class Flow(nn.Module):
    """A normalising flow: a `Transform` from data to latent space and a prior on the latent.

    Args:
        transform: the bijection, data -> latent (preprocessing included, see `lgm.flow.preprocess`).
        prior: a distribution over latents with ``log_prob(z) -> [B]`` and
            ``sample(n, temperature) -> z`` (see `lgm.flow.priors`).
        shape: the shape of one data sample, e.g. ``(2,)`` or ``(1, 28, 28)``; inputs are checked
            against it so that a wrong shape fails with a clear message.
        n_bits: ``None`` for continuous data; for images, the bit depth of the discrete data. Then
            ``log_prob`` is the density of dequantised images ``y = (x + u) / 2**n_bits`` in
            ``[0, 1]``, and `bits_per_dim` takes the discrete 8-bit images themselves.

    Model classes built from plain arguments (`NiceFlow`, ...) record those arguments in
    ``self.init_args`` so that `lgm.flow.save` / `lgm.flow.load` can rebuild them.
    """

    init_args: dict[str, Any]
    n_classes: int | None = None

    def __init__(self, transform: Transform, prior: nn.Module, shape: tuple[int, ...], n_bits: int | None = None) -> None:
        super().__init__()
        if n_bits is not None and not 1 <= n_bits <= 8:
            raise ValueError(f"n_bits must be between 1 and 8 (or None for continuous data), got {n_bits}")
        self.transform = transform
        self.prior = prior
        self.shape = tuple(shape)
        self.n_bits = n_bits

    def check_input(self, x: Tensor) -> None:
        """Raise a `ValueError` naming the problem if ``x`` is not a finite ``[B, *shape]`` batch."""
        if not isinstance(x, Tensor):
            raise TypeError(f"expected a torch.Tensor of shape [B, {_fmt(self.shape)}], got {type(x).__name__}")
        if tuple(x.shape[1:]) != self.shape or x.dim() != len(self.shape) + 1:
            raise ValueError(
                f"expected input of shape [B, {_fmt(self.shape)}] (a batch of samples), got {list(x.shape)}; "
                "add a batch dimension with x.unsqueeze(0) for a single sample"
            )
        if not x.is_floating_point():
            hint = "; for discrete images use bits_per_dim(x)" if self.n_bits is not None else ""
            raise ValueError(f"expected a floating-point tensor, got {x.dtype}; convert with x.float(){hint}")
        if not torch.isfinite(x).all():
            raise ValueError("input contains NaN or Inf values; clean the data before computing densities")
        if self.n_bits is not None and (x.min() < 0 or x.max() > 1):
            raise ValueError(
                f"dequantised images must lie in [0, 1], got values in [{x.min().item():.3g}, {x.max().item():.3g}]; "
                "pass uint8 images to bits_per_dim, or dequantise them with lgm.flow.discrete.dequantize"
            )

    def check_labels(self, labels: Tensor | None, batch: int) -> None:
        """Class-conditional models need ``batch`` integer labels in ``0..n_classes-1``; others none."""
        if self.n_classes is None:
            if labels is not None:
                raise ValueError("this model is not class-conditional: do not pass labels")
            return
        if labels is None:
            raise ValueError(f"this model is class-conditional ({self.n_classes} classes): pass labels")
        if not isinstance(labels, Tensor) or labels.is_floating_point() or labels.shape != (batch,):
            raise ValueError(f"labels must be an integer tensor of shape [{batch}], one class index per sample")
        if labels.min() < 0 or labels.max() >= self.n_classes:
            raise ValueError(f"labels must lie in 0..{self.n_classes - 1}, got [{labels.min().item()}, {labels.max().item()}]")

    def encode(self, x: Tensor) -> Tensor:
        """Map data ``[B, *shape]`` to latents."""
        self.check_input(x)
        return self.transform(x)[0]

    def decode(self, z: Tensor) -> Tensor:
        """Map latents back to data ``[B, *shape]``; ``decode(encode(x)) == x`` to float precision."""
        return self.transform.inverse(z)

    def log_prob(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """Log-density of ``x`` (``[B, *shape]``) in nats, shape ``[B]`` (given ``labels`` if class-conditional)."""
        self.check_input(x)
        self.check_labels(labels, x.shape[0])
        z, logdet = self.transform(x)
        return self.prior.log_prob(z) + logdet

    def bits_per_dim(self, x: Tensor, labels: Tensor | None = None, dequant_samples: int = 1) -> Tensor:
        """Bits per dimension of discrete 8-bit images ``x`` (integers in 0..255), shape ``[B]``.

        ``bpd = (-log p(y) + D n_bits ln 2) / (D ln 2)`` with ``y = (x + u) / 2**n_bits``,
        ``u ~ U[0, 1)^D`` and ``D`` the number of values of one image: an upper bound on the
        model's discrete negative log2-likelihood per dimension. With ``dequant_samples = K > 1``
        the bound is the tighter importance-weighted one, ``log p(x) >= log mean_k p(y_k) - D n_bits ln 2``.
        """
        if self.n_bits is None:
            raise ValueError("bits_per_dim needs a model of discrete images: build it with n_bits (e.g. 8)")
        if dequant_samples < 1:
            raise ValueError(f"dequant_samples must be at least 1, got {dequant_samples}")
        check_images(x, self.shape)
        x = reduce_bits(x, self.n_bits)
        # Dequantise in float32 at least: in bfloat16, 255 + u would round back onto the integer.
        dtype = torch.float64 if any(p.dtype == torch.float64 for p in self.parameters()) else torch.float32
        log_px = torch.stack([self.log_prob(dequantize(x, self.n_bits, dtype), labels) for _ in range(dequant_samples)])
        log_px = torch.logsumexp(log_px, dim=0) - math.log(dequant_samples)
        dims = math.prod(self.shape)
        return -log_px / (dims * math.log(2)) + self.n_bits

    # What training minimises. Coupling flows train on their likelihood; a model trained on another
    # objective (flow matching) overrides these, and may ask to be validated on it too, when its
    # likelihood is expensive.
    validate_likelihood = True

    @property
    def objective_name(self) -> str:
        """Short name of `objective` for logs: ``"nll"`` (nats) or ``"bpd"`` (bits/dim of images)."""
        return "nll" if self.n_bits is None else "bpd"

    def objective(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """The per-sample training loss ``[B]``: ``-log_prob(x)`` for continuous data, `bits_per_dim`
        for discrete images (``x`` as the data module gives it)."""
        return -self.log_prob(x, labels) if self.n_bits is None else self.bits_per_dim(x, labels)

    def sample(self, n: int, temperature: float = 1.0, labels: Tensor | None = None) -> Tensor:
        """Draw ``n`` samples ``[n, *shape]``; ``temperature`` scales the prior's standard deviation.

        Temperature 0 gives ``n`` copies of the decoded prior mode, ``decode(0)``. Image models
        return images in ``[0, 1]`` (clamped: dequantisation noise may carry values a hair outside).
        Sampling runs in ``torch.inference_mode`` (no autograd bookkeeping; in eval mode the 1x1
        convolutions reuse their cached inverses) and returns an ordinary tensor without a graph;
        for gradients through sampling, ``decode`` prior samples instead.
        """
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(f"the number of samples must be a positive integer, got {n!r}")
        if not (temperature >= 0 and math.isfinite(temperature)):
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
        self.check_labels(labels, n)
        with torch.inference_mode():
            x = self._as_data(self._draw(n, temperature, labels))
        return x.clone()  # outside inference mode: a normal tensor that later autograd code may use

    def _draw(self, n: int, temperature: float, labels: Tensor | None) -> Tensor:
        """``n`` samples in the model's data space, before clamping (labels are checked already)."""
        return self.decode(self.prior.sample(n, temperature=temperature))

    def _as_data(self, x: Tensor) -> Tensor:
        return x.clamp(0, 1) if self.n_bits is not None else x

    @torch.no_grad()
    def initialize(self, x: Tensor, labels: Tensor | None = None) -> None:
        """Initialise every data-dependent layer from the batch ``x`` (a no-op for layers already set)."""
        with data_initialization(self):
            self.log_prob(x, labels)


def _fmt(shape: tuple[int, ...]) -> str:
    return ", ".join(str(s) for s in shape)
