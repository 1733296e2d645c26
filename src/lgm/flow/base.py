"""The transform protocol, composition, and `Flow` = transform + prior.

Conventions used by every transform in `lgm.flow`:

* ``forward`` goes data -> latent (the *normalising* direction) and returns ``(z, logdet)``,
  where ``logdet = log|det dz/dx|`` per sample, shape ``[B]``, summed over every dimension.
* ``inverse`` goes latent -> data and returns ``x`` only. Every transform is exactly invertible.
* ``Flow.log_prob(x) = prior.log_prob(z) + logdet``, in nats, per sample (change of variables).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import numbers
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from lgm.flow.discrete import check_images, dequantize, dequantize_images, noisy_images, reduce_bits
from lgm.flow.guidance import NO_GUIDANCE, check_guidance_scale
from lgm.flow.latent import Capabilities, Latent
from lgm.flow.precision import NETWORK_DTYPES, resolve_precision, run_network


class Transform(nn.Module):
    """A bijection between data space and latent space.

    Subclasses implement ``forward(x) -> (z, logdet)`` and ``inverse(z) -> x``. Inputs carry a
    leading batch dimension ``B``; ``logdet`` has shape ``[B]``.
    """

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def inverse(self, z: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class NetworkTransform(Transform):
    """A transform (a coupling, an autoregressive block) whose network ``net`` is run through `run_net`:
    in the precision the run chose for its networks (``network_dtype``, see `lgm.flow.precision`), its
    output returned in the input's dtype so that the transform's arithmetic and log-det stay in the
    data's dtype, and with its activations recomputed in the backward pass when ``checkpoint_net`` is on.

    ``checkpoint_net`` (default off) trades compute for memory in deep models: only the network's
    input is stored, its intermediate activations are recomputed during backward. Neither switch
    changes the saved weights, so both belong to the run, not to the model (`lgm.flow.Flow.configure_networks`,
    `lgm.flow.Flow.use_network_precision`).
    """

    net: nn.Module
    checkpoint_net: bool = False
    network_dtype: torch.dtype | None = None

    def run_net(self, *inputs: Tensor | None) -> Tensor:
        """``net(*inputs)`` in the run's network precision, in the first input's dtype."""
        if self.checkpoint_net and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(
                run_network, self.net, self.network_dtype, *inputs, use_reentrant=False
            )
        return run_network(self.net, self.network_dtype, *inputs)


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

    Every model family implements this protocol, and callers use only it and `capabilities`:

    * ``log_prob(x, labels)`` ``[B]`` nats; ``bits_per_dim(x_uint8, labels)`` ``[B]``;
      ``objective(x, labels)`` ``[B]``, the training loss;
    * ``sample(n, temperature, labels, denoise)`` ``[n, *shape]``; ``denoise(y, labels)`` for flows
      trained with noise;
    * ``encode(x, labels) -> Latent``, ``decode(latent, labels) -> x``, ``interpolate``, ``standardize``;
    * ``bijection(x, labels) -> (Latent, logdet)`` for flows with an exact inverse (what `check_invertible` checks);
    * ``initialize(x, labels)``: the data-dependent layers, once; ``start_from(flow)``: a trained model's
      weights, to train on from;
    * ``capabilities`` (see `lgm.flow.latent.Capabilities`), ``latent_shapes``, and the hooks
      ``use_solver``, ``solver_info``, ``likelihood_info``, ``use_guidance``,
      ``per_dimension_log_scale``, ``configure_networks``, which do nothing (or refuse) where a family
      has no such thing.

    Args:
        transform: the bijection, data -> latent (preprocessing included, see `lgm.flow.preprocess`).
        prior: a `lgm.flow.priors.Prior` over latents of shape ``prior.shape``.
        shape: the shape of one data sample, e.g. ``(2,)`` or ``(1, 28, 28)``; inputs are checked
            against it so that a wrong shape fails with a clear message.
        n_bits: ``None`` for continuous data; for images, the bit depth of the discrete data. Then
            ``log_prob`` is the density of dequantised images ``y = (x + u) / 2**n_bits`` in
            ``[0, 1]``, and `bits_per_dim` takes the discrete 8-bit images themselves.
        noise_std: ``None``, or the standard deviation ``sigma`` of Gaussian noise augmentation: the
            flow is trained on ``y = x + sigma * eps`` (for images, ``x`` the pixel centres in
            ``[0, 1]``, see `lgm.flow.discrete.noisy_images`), so it models the noisy density
            ``p_sigma``; its samples are denoised by default (`denoise`), its training loss is
            `noisy_bits_per_dim` (images) or the noisy data's negative log-likelihood, and
            `bits_per_dim` stays the uniform-dequantisation bound on the discrete images.
        dequantizer: ``None`` (uniform dequantisation), or a module ``(x, n_bits) -> (u, log q(u | x))``
            drawing each image's dequantisation noise from a learned ``q`` (variational dequantisation,
            `lgm.flow.dequantization`), trained with the flow through `bits_per_dim`.

    Every subclass records the arguments its constructor was called with (defaults filled in) in
    ``self.init_args``, so that `lgm.flow.save` / `lgm.flow.load` can rebuild it, provided they are
    plain values (numbers, strings, lists, dicts, None); a model built from modules records none.

    Class-conditional families set ``n_classes``; those trained with ``label_dropout > 0`` (each training
    label replaced by "no class", index ``n_classes``, with that probability, `class_indices`) are also the
    unconditional model (``labels=None``) and can be guided (`use_guidance`, `lgm.flow.guidance`).
    """

    init_args: dict[str, Any]
    n_classes: int | None = None
    label_dropout: float = 0.0
    guidance: float = NO_GUIDANCE  # the scale of guided sampling, see use_guidance

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _recording_init_args(cls, cls.__dict__["__init__"])

    def __init__(
        self,
        transform: Transform,
        prior: nn.Module,
        shape: tuple[int, ...],
        n_bits: int | None = None,
        noise_std: float | None = None,
        dequantizer: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if n_bits is not None and not 1 <= n_bits <= 8:
            raise ValueError(f"n_bits must be between 1 and 8 (or None for continuous data), got {n_bits}")
        check_noise_std(noise_std)
        if dequantizer is not None and (n_bits is None or noise_std is not None):
            raise ValueError("variational dequantisation needs discrete images (n_bits) without noise augmentation")
        self.transform = transform
        self.prior = prior
        self.shape = tuple(shape)
        self.n_bits = n_bits
        self.noise_std = noise_std
        self.dequantizer = dequantizer
        self.network_precision = "32"  # see use_network_precision

    @property
    def dequantization(self) -> str:
        """How `bits_per_dim` dequantises: ``"uniform"`` or ``"variational"`` (a learned ``dequantizer``)."""
        return "uniform" if self.dequantizer is None else "variational"

    @property
    def capabilities(self) -> Capabilities:
        """What this model can do (see `Capabilities`); families with other abilities override it."""
        return Capabilities(objective=self._likelihood_objective())

    def _likelihood_objective(self) -> str:
        """The name of a likelihood-trained flow's loss: ``"likelihood"``, or ``"noisy_bpd"`` /
        ``"noisy_nll"`` for flows trained on noise-augmented data."""
        if self.noise_std is None:
            return "likelihood"
        return "noisy_bpd" if self.n_bits is not None else "noisy_nll"

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
        if self.n_bits is not None and self.noise_std is None and (x.min() < 0 or x.max() > 1):
            raise ValueError(
                f"dequantised images must lie in [0, 1], got values in [{x.min().item():.3g}, {x.max().item():.3g}]; "
                "pass uint8 images to bits_per_dim, or dequantise them with lgm.flow.discrete.dequantize"
            )

    def check_labels(self, labels: Tensor | None, batch: int) -> None:
        """Class-conditional models need ``batch`` integer labels in ``0..n_classes-1`` (or none, for the
        unconditional model, if trained with label dropout); others none."""
        if self.n_classes is None:
            if labels is not None:
                raise ValueError("this model is not class-conditional: do not pass labels")
            return
        if labels is None:
            if self.label_dropout > 0:
                return
            raise ValueError(f"this model is class-conditional ({self.n_classes} classes): pass labels")
        if not isinstance(labels, Tensor) or labels.is_floating_point() or labels.shape != (batch,):
            raise ValueError(f"labels must be an integer tensor of shape [{batch}], one class index per sample")
        if labels.min() < 0 or labels.max() >= self.n_classes:
            raise ValueError(
                f"labels must lie in 0..{self.n_classes - 1}, got [{labels.min().item()}, {labels.max().item()}]"
            )

    def class_indices(self, labels: Tensor | None, batch: int, device: torch.device) -> Tensor | None:
        """The class indices ``[batch]`` a class-conditional network takes: the labels (in training, each
        replaced by "no class", index ``n_classes``, with probability ``label_dropout``), or "no class"
        throughout where there are none; ``None`` for a model that is not class-conditional."""
        if self.n_classes is None:
            return None
        if labels is None:
            return torch.full((batch,), self.n_classes, device=device, dtype=torch.long)
        if self.training and self.label_dropout > 0:
            dropped = torch.rand(batch, device=device) < self.label_dropout
            return labels.masked_fill(dropped, self.n_classes)
        return labels

    # -- the latent -------------------------------------------------------------------------------

    @property
    def latent_shapes(self) -> list[tuple[int, ...]]:
        """The shape of one sample's latent at each level (as `encode` returns them)."""
        return [tuple(self.prior.shape)]

    def check_latent(self, latent: Latent) -> None:
        """Raise a `ValueError` naming the shapes needed unless ``latent`` fits this model."""
        if not isinstance(latent, Latent) or latent.shapes != self.latent_shapes:
            given = latent.shapes if isinstance(latent, Latent) else type(latent).__name__
            raise ValueError(
                f"decode needs a Latent with one tensor [B, *s] per level for s in {self.latent_shapes} (as encode "
                f"returns it; wrap a tensor z as lgm.flow.Latent(z)), got {given}"
            )

    def bijection(self, x: Tensor, labels: Tensor | None = None) -> tuple[Latent, Tensor]:
        """The whole bijection without the prior: data ``x`` -> ``(latent, log|det d latent / dx|)``
        (``labels`` only for families whose bijection depends on the class)."""
        z, logdet = self.transform(x)
        return Latent(z), logdet

    def encode(self, x: Tensor, labels: Tensor | None = None) -> Latent:
        """Map data ``[B, *shape]`` to its latent (``labels`` are needed only by families whose
        bijection depends on the class)."""
        self.check_input(x)
        return self.bijection(x)[0]

    def decode(self, latent: Latent, labels: Tensor | None = None) -> Tensor:
        """Map a latent back to data ``[B, *shape]``; ``decode(encode(x)) == x`` to float precision."""
        self.check_latent(latent)
        return self.transform.inverse(latent.levels[0])

    def standardize(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """The latent of ``x`` mapped to N(0, I) noise by the prior, ``[B, D]``: if the model were the
        data's distribution, exactly standard normal, so its norm would follow the chi law."""
        self.check_labels(labels, x.shape[0])
        return self.prior.standardize(self.encode(x, labels).levels[0], labels).flatten(1)

    @torch.no_grad()
    def interpolate(
        self, x_a: Tensor, x_b: Tensor, steps: int = 8, levels: int | None = None, labels: Tensor | None = None
    ) -> Tensor:
        """Decode straight lines between the latents of ``x_a`` and ``x_b`` (both ``[B, *shape]``).

        ``levels=None`` interpolates every level; ``levels=k`` only the ``k`` finest (see `Latent`),
        keeping ``x_a``'s latents elsewhere. Returns ``[steps, B, *shape]``; the first entry decodes
        ``x_a`` itself.
        """
        za, zb = self.encode(x_a, labels), self.encode(x_b, labels)
        frames = [
            self._as_data(self.decode(za.lerp(zb, t, levels), labels)) for t in torch.linspace(0, 1, steps).tolist()
        ]
        return torch.stack(frames)

    # -- densities ----------------------------------------------------------------------------------

    def log_prob(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """Log-density of ``x`` (``[B, *shape]``) in nats, shape ``[B]`` (given ``labels`` if class-conditional)."""
        self.check_input(x)
        self.check_labels(labels, x.shape[0])
        z, logdet = self.transform(x)
        return self.prior.log_prob(z, labels) + logdet

    def bits_per_dim(self, x: Tensor, labels: Tensor | None = None, dequant_samples: int = 1) -> Tensor:
        """Bits per dimension of discrete 8-bit images ``x`` (integers in 0..255), shape ``[B]``.

        ``bpd = (-log p(y) + log q(u | x) + D n_bits ln 2) / (D ln 2)`` with ``y = (x + u) / 2**n_bits``,
        ``u ~ q`` (``U[0, 1)^D``, ``log q = 0``, unless the flow has a variational ``dequantizer``) and
        ``D`` the number of values of one image: an upper bound on the model's discrete negative
        log2-likelihood per dimension. With ``dequant_samples = K > 1`` the bound is the tighter
        importance-weighted one, ``log P(x) >= log mean_k [p(y_k) / q(u_k | x)] - D n_bits ln 2``.
        """
        if self.n_bits is None:
            raise ValueError("bits_per_dim needs a model of discrete images: build it with n_bits (e.g. 8)")
        if dequant_samples < 1:
            raise ValueError(f"dequant_samples must be at least 1, got {dequant_samples}")
        check_images(x, self.shape)
        x = reduce_bits(x, self.n_bits)
        log_px = torch.stack([self._dequantized_log_prob(x, labels) for _ in range(dequant_samples)])
        log_px = torch.logsumexp(log_px, dim=0) - math.log(dequant_samples)
        dims = math.prod(self.shape)
        return -log_px / (dims * math.log(2)) + self.n_bits

    def noisy_bits_per_dim(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """For a flow trained with noise (``noise_std``): ``-log2 p_sigma(y) / D + n_bits`` ``[B]`` of
        noise-augmented images ``y`` (`lgm.flow.discrete.noisy_images` of the 8-bit images ``x``).

        The negative log-density of the *noisy* data, in bits per dimension and offset by ``n_bits`` like
        `bits_per_dim`, so the two read on one scale; it is no bound on the discrete images' likelihood
        (that is `bits_per_dim`), and is reported under its own name.
        """
        if self.noise_std is None or self.n_bits is None:
            raise ValueError("noisy_bits_per_dim is for image models trained with noise: build them with noise_std")
        check_images(x, self.shape)
        y = noisy_images(x, self.n_bits, self.noise_std, self._float_dtype())
        return -self.log_prob(y, labels) / (math.prod(self.shape) * math.log(2)) + self.n_bits

    def objective(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """The per-sample training loss ``[B]``: ``-log_prob(x)`` for continuous data, `bits_per_dim`
        for discrete images (``x`` as the data module gives it); for flows trained with noise, the same of
        the noise-augmented data (`noisy_bits_per_dim`). A family that trains on another loss overrides
        this and names the loss in ``capabilities.objective``."""
        if self.noise_std is None:
            return -self.log_prob(x, labels) if self.n_bits is None else self.bits_per_dim(x, labels)
        if self.n_bits is not None:
            return self.noisy_bits_per_dim(x, labels)
        return -self.log_prob(self.training_input(x), labels)

    def training_input(self, x: Tensor) -> Tensor:
        """What the density sees in training for a data-module batch ``x``: uniformly dequantised images
        (8-bit ``x``, `lgm.flow.discrete.dequantize_images`), noise-augmented images or points (flows with
        ``noise_std``), else ``x`` itself. Data-dependent layers are initialised from it."""
        if self.n_bits is not None:
            if self.noise_std is None:
                return dequantize_images(x, self.n_bits, self._float_dtype())
            return noisy_images(x, self.n_bits, self.noise_std, self._float_dtype())
        return x if self.noise_std is None else x + self.noise_std * torch.randn_like(x)

    def _dequantized_log_prob(self, x: Tensor, labels: Tensor | None) -> Tensor:
        """``log p(y) - log q(u | x)`` ``[B]`` for one draw ``u ~ q`` of ``n_bits``-bit images ``x``."""
        dtype = self._float_dtype()
        if self.dequantizer is None:
            return self.log_prob(dequantize(x, self.n_bits, dtype), labels)
        x = x.to(dtype)
        u, log_q = self.dequantizer(x, self.n_bits)
        return self.log_prob((x + u) / 2**self.n_bits, labels) - log_q

    def _float_dtype(self) -> torch.dtype:
        # Dequantise in float32 at least: in bfloat16, 255 + u would round back onto the integer.
        return torch.float64 if any(p.dtype == torch.float64 for p in self.parameters()) else torch.float32

    # -- sampling ---------------------------------------------------------------------------------

    def sample(
        self,
        n: int,
        temperature: float = 1.0,
        labels: Tensor | None = None,
        denoise: bool | None = None,
        denoise_step: float = 1.0,
    ) -> Tensor:
        """Draw ``n`` samples ``[n, *shape]``; ``temperature`` scales the prior's standard deviation.

        Temperature 0 gives ``n`` copies of the decoded prior mode, ``decode(0)``. Image models
        return images in ``[0, 1]`` (clamped: dequantisation noise may carry values a hair outside).
        ``denoise`` (default: on for flows trained with noise, off otherwise) returns `denoise` of the
        drawn samples, with ``denoise_step``. Sampling runs in ``torch.inference_mode`` (no autograd
        bookkeeping; in eval mode the 1x1 convolutions reuse their cached inverses), denoising with one
        autograd pass after it, and returns an ordinary tensor without a graph; for gradients through
        sampling, ``decode`` prior samples instead.
        """
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(f"the number of samples must be a positive integer, got {n!r}")
        if not (temperature >= 0 and math.isfinite(temperature)):
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
        self.check_labels(labels, n)
        denoise = self.denoises(denoise)
        with torch.inference_mode():
            y = self._draw(n, temperature, labels)
        y = y.clone()  # outside inference mode: a normal tensor that autograd (denoising, callers) may use
        return self._as_data(self.denoise(y, labels, denoise_step) if denoise else y)

    def denoises(self, denoise: bool | None) -> bool:
        """Whether `sample` denoises when asked ``denoise``: ``None`` means yes exactly for flows trained
        with noise; ``True`` for a flow that was not is refused."""
        if denoise and self.noise_std is None:
            raise ValueError(
                f"denoising needs a flow trained with Gaussian noise (noise_std), and this {type(self).__name__} "
                "was not: sample with denoise=False (--no-denoise)"
            )
        return self.noise_std is not None if denoise is None else denoise

    def denoise(self, y: Tensor, labels: Tensor | None = None, step: float = 1.0) -> Tensor:
        """Tweedie's estimate of the clean data behind noisy ``y`` ``[B, *shape]`` (flows with ``noise_std``):

        ``x = y + step * sigma^2 * grad_y log p_sigma(y)``, with ``p_sigma`` this flow's density of the
        noise-augmented data and one autograd pass through it. At ``step = 1`` it is the posterior mean
        ``E[x | y]`` if the flow is the noisy data's density (Tweedie's formula); for ``p_sigma = N(m, S)``,
        ``x = y - sigma^2 S^-1 (y - m)``. Returns a tensor without a graph.
        """
        if self.noise_std is None:
            raise ValueError(f"this {type(self).__name__} was not trained with noise (noise_std): nothing to denoise")
        if not (step >= 0 and math.isfinite(step)):
            raise ValueError(f"the denoising step must be a finite number >= 0, got {step}")
        with torch.inference_mode(False), torch.enable_grad():
            y = y.detach().clone().requires_grad_(True)
            (score,) = torch.autograd.grad(self.log_prob(y, labels).sum(), y)
        return (y + step * self.noise_std**2 * score).detach()

    def _draw(self, n: int, temperature: float, labels: Tensor | None) -> Tensor:
        """``n`` samples in the model's data space, before clamping (labels are checked already)."""
        return self.decode(Latent(self.prior.sample(n, labels, temperature=temperature)), labels)

    def _as_data(self, x: Tensor) -> Tensor:
        return x.clamp(0, 1) if self.n_bits is not None else x

    # -- set-up -------------------------------------------------------------------------------------

    @torch.no_grad()
    def initialize(self, x: Tensor, labels: Tensor | None = None) -> None:
        """Initialise every data-dependent layer from the batch ``x`` (a no-op for layers already set)."""
        with data_initialization(self):
            self.log_prob(x, labels)

    def _network_transforms(self) -> list[nn.Module]:
        # Transforms that run a network declare it as ``net``, with the switch ``checkpoint_net``
        # (`NetworkTransform`).
        return [
            m for m in self.modules() if hasattr(m, "checkpoint_net") and isinstance(getattr(m, "net", None), nn.Module)
        ]

    def networks(self) -> list[nn.Module]:
        """The networks inside the flow's transforms (the unconstrained function approximators: what
        weight decay applies to, and what `configure_networks` compiles)."""
        return [m.net for m in self._network_transforms()]

    def configure_networks(self, gradient_checkpointing: bool = False, compile: bool = False) -> None:
        """Recompute the networks' activations in the backward pass (less memory, same gradients), and
        ``torch.compile`` them (state-dict keys unchanged). Switches of a training run, not of the model."""
        for transform in self._network_transforms():
            transform.checkpoint_net = gradient_checkpointing
            if compile:
                transform.net.compile()

    def use_network_precision(self, precision: str) -> None:
        """Run the networks in ``precision``: ``"32"``, ``"bf16-mixed"`` (networks under bf16 autocast,
        the flow's maps, log-dets and prior in float32) or ``"auto"`` (bf16-mixed where the flow's device
        has bf16 matrix units); see `lgm.flow.precision`. A switch of the run: it is not saved."""
        self.network_precision = resolve_precision(precision, self._device())
        for transform in self._network_transforms():
            transform.network_dtype = NETWORK_DTYPES[self.network_precision]

    def _device(self) -> torch.device:
        parameter = next(self.parameters(), None)
        return parameter.device if parameter is not None else torch.device("cpu")

    def start_from(self, flow: Flow) -> None:
        """Take the weights of a trained ``flow`` to train on from (fine-tuning): here, a model of the same
        class and architecture; a family that starts from another (`lgm.flow.MeanFlow` from a
        `lgm.flow.FlowMatching`) says so in its own."""
        if type(flow) is not type(self):
            raise ValueError(
                f"a {type(self).__name__} can start from a {type(self).__name__}, not a {type(flow).__name__}"
            )
        try:
            self.load_state_dict(flow.state_dict())
        except RuntimeError as e:
            raise ValueError(
                f"the {type(flow).__name__} to start from has another architecture than this one: "
                f"{str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else e}"
            ) from None

    # -- hooks of some families; here, what a family without the feature does ----------------------

    def use_solver(self, solver: str | None = None, steps: int | None = None, time_shift: float | None = None) -> None:
        """Set the solver, steps and time grid of sampling and encoding (flows with ``capabilities.solver``)."""
        raise ValueError(f"solver options apply to continuous flows only, not to {type(self).__name__}")

    def use_likelihood_solver(self, solver: str | None = None, steps: int | None = None) -> None:
        """Set the ODE solver of `log_prob` (flows with ``capabilities.solver``)."""
        raise ValueError(f"solver options apply to continuous flows only, not to {type(self).__name__}")

    def solver_info(self) -> dict[str, Any]:
        """How the latest sampling or encoding was integrated (solver, steps, velocity evaluations);
        ``{}`` without a solver."""
        return {}

    def use_guidance(self, scale: float = NO_GUIDANCE, attention_temperature: float | None = None) -> None:
        """Guide sampling with ``scale = s >= 0`` (`lgm.flow.guidance`): 1 is none, 0 the weak model.

        Here, classifier-free guidance (families with ``capabilities.guidance`` read ``self.guidance``);
        every family accepts ``s = 1``. ``attention_temperature`` is TarFlow's (`lgm.flow.TarFlow.use_guidance`).
        A switch of the run: it is not saved."""
        scale = check_guidance_scale(scale)
        if attention_temperature is not None:
            raise ValueError(f"{type(self).__name__} has no attention to soften: drop the attention temperature")
        if scale != NO_GUIDANCE and not self.capabilities.guidance:
            if self.n_classes is not None and self.label_dropout == 0:
                raise ValueError(
                    "classifier-free guidance needs a class-conditional model trained with label dropout "
                    f"(label_dropout > 0), and this {type(self).__name__} was trained without: sample it unguided"
                )
            raise ValueError(f"{type(self).__name__} has no guided sampling: drop the guidance options")
        self.guidance = scale

    def likelihood_info(self) -> dict[str, Any]:
        """How `log_prob` is computed, where there is a choice (solver, steps, divergence estimate); ``{}`` if exact."""
        return {}

    def per_dimension_log_scale(self) -> Tensor | None:
        """A learned log-scale per data dimension ``[D]`` where the family has one (NICE's final scaling), else None."""
        return None


def check_noise_std(noise_std: float | None) -> None:
    """Raise a `ValueError` unless ``noise_std`` is ``None`` or a finite number > 0."""
    if noise_std is not None and not (
        isinstance(noise_std, numbers.Real) and not isinstance(noise_std, bool) and 0 < noise_std < math.inf
    ):
        raise ValueError(f"noise_std must be a number > 0 (or None for no noise augmentation), got {noise_std!r}")


def _recording_init_args(cls: type, init):
    """``init`` that, when ``cls`` is the class being built (not a base it extends), records its
    arguments as ``self.init_args``."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def recording_init(self, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        if type(self) is cls:
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            # An argument the constructor resolved into a value object (a dict or None completed to a
            # `Preprocessing`, kept as ``self.<name>``) is recorded resolved, so equal models record equally.
            resolved = {name: self.__dict__.get(name) for name in bound.arguments}
            values = {
                name: plain_init_arg(resolved[name] if dataclasses.is_dataclass(resolved[name]) else v)
                for name, v in list(bound.arguments.items())[1:]
            }
            if isinstance(values.get("shape"), int):  # a shape given as D means (D,), as every family reads it
                values["shape"] = [values["shape"]]
            if all(v is not _NOT_PLAIN for v in values.values()):
                self.init_args = values

    return recording_init


_NOT_PLAIN = object()


def plain_init_arg(value: Any) -> Any:
    """``value`` as plain data (tuples become lists), or ``_NOT_PLAIN``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain_init_arg(dataclasses.asdict(value))
    if isinstance(value, (list, tuple)):
        items = [plain_init_arg(v) for v in value]
        return _NOT_PLAIN if any(v is _NOT_PLAIN for v in items) else items
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        items = {k: plain_init_arg(v) for k, v in value.items()}
        return _NOT_PLAIN if any(v is _NOT_PLAIN for v in items.values()) else items
    return _NOT_PLAIN


def _fmt(shape: tuple[int, ...]) -> str:
    return ", ".join(str(s) for s in shape)
