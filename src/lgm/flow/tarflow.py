"""TarFlow (Zhai et al. 2024, "Normalizing Flows are Capable Generative Models"): an exact flow of
autoregressive blocks, each a causal Transformer over image patches.

The image (after preprocessing) is cut into ``T`` patches of ``p x p`` pixels, tokens of ``d = C p^2``
values (`Patchify`). Each `AutoregressiveBlock` maps token ``i`` by an affine map whose shift and
log-scale come from the tokens before it::

    z_i = (x_i - mu_i(x_<i)) * exp(-a_i(x_<i)),    log|det dz/dx| = -sum_i sum_d a_i

so its Jacobian is triangular in the token order, with a diagonal block per token. The first token
has no predecessors: its shift and log-scale are learned constants. Blocks alternate the token order
(reversed in every second block), so each token is conditioned on both sides across the stack. The
Transformer's output layer starts at zero: a new block, and so a new model, is the identity.

The inverse is sequential: token ``i`` needs the tokens before it, so sampling runs the Transformer
one token at a time, keeping the keys and values of the tokens already decoded (`KeyValueCache`):
``T`` steps of one token instead of ``T`` full passes.

Guidance (`TarFlow.use_guidance`, `lgm.flow.guidance`) moves each token's shift and log-scale away
from a weaker model's: ``theta = theta_weak + s (theta - theta_weak)``, ``s = 1`` none (the paper's
``w = s - 1``). For a class-conditional model trained with label dropout the weaker model is the
unconditional one (classifier-free guidance); otherwise it is the same model with its attention
softened by a temperature (the paper's attention guidance). Guided samples have no tractable density:
``log_prob`` is always the unguided model's.

References:
    Zhai, Zhang, Gu, et al. "Normalizing Flows are Capable Generative Models", 2024 (arXiv:2412.06329).
    Kingma et al. "Improved Variational Inference with Inverse Autoregressive Flow", 2016.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lgm.flow.base import Compose, Flow, NetworkTransform, Transform
from lgm.flow.guidance import NO_GUIDANCE, check_guidance_scale, check_label_dropout, guide
from lgm.flow.latent import Capabilities, Latent
from lgm.flow.precision import run_network
from lgm.flow.preprocess import Preprocessing
from lgm.flow.priors import StandardGaussian


def _check_patches(shape: tuple[int, ...], patch_size: int) -> None:
    if len(shape) != 3:
        raise ValueError(f"TarFlow models images of shape (C, H, W), got {shape}")
    if patch_size < 1 or shape[1] % patch_size or shape[2] % patch_size:
        raise ValueError(
            f"images of {shape[1]}x{shape[2]} pixels cannot be cut into {patch_size}x{patch_size} patches: choose "
            "a patch_size that divides both sides, or pad the images (preprocessing pad_to)"
        )


class Patchify(Transform):
    """Images ``[B, C, H, W]`` -> tokens ``[B, T, C p^2]``, ``T = (H/p)(W/p)`` patches in raster order,
    each patch's values channel-major (a permutation of the values: ``logdet = 0``)."""

    def __init__(self, shape: tuple[int, int, int], patch_size: int) -> None:
        super().__init__()
        _check_patches(shape, patch_size)
        self.shape = tuple(shape)
        self.patch_size = patch_size

    @property
    def token_shape(self) -> tuple[int, int]:
        c, h, w = self.shape
        p = self.patch_size
        return (h // p) * (w // p), c * p * p

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        c, h, w = self.shape
        p = self.patch_size
        tokens = x.reshape(-1, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
        return tokens.reshape(x.shape[0], *self.token_shape), x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor) -> Tensor:
        c, h, w = self.shape
        p = self.patch_size
        x = z.reshape(-1, h // p, w // p, c, p, p).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(z.shape[0], c, h, w)


class KeyValueCache:
    """The attention keys and values of the tokens decoded so far, one ``[B, heads, T, head_dim]``
    buffer pair per layer, filled one position at a time (`CausalTransformer.step`)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.keys: list[Tensor] = []
        self.values: list[Tensor] = []
        self.length = 0

    def extend(self, layer: int, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Store one position's ``keys, values`` ``[B, heads, 1, head_dim]`` of ``layer``; return all so far."""
        if layer == len(self.keys):
            self.keys.append(keys.new_empty(*keys.shape[:2], self.capacity, keys.shape[3]))
            self.values.append(values.new_empty(*values.shape[:2], self.capacity, values.shape[3]))
        self.keys[layer][:, :, self.length] = keys[:, :, 0]
        self.values[layer][:, :, self.length] = values[:, :, 0]
        return self.keys[layer][:, :, : self.length + 1], self.values[layer][:, :, : self.length + 1]


class TransformerLayer(nn.Module):
    """Pre-norm Transformer layer: ``h + attention(norm(h))``, then ``h + mlp(norm(h))`` on ``[B, T, width]``;
    attention is causal (position ``i`` sees positions ``<= i``)."""

    def __init__(self, width: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"the width ({width}) must be a multiple of the number of heads ({heads})")
        self.heads = heads
        self.attention_norm = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.attention_out = nn.Linear(width, width)
        self.mlp_norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width))

    def forward(
        self,
        h: Tensor,
        attention_temperature: float = 1.0,
        cache: KeyValueCache | None = None,
        layer: int = 0,
    ) -> Tensor:
        """``h`` ``[B, T, width]``; with ``cache``, ``h`` is the one position ``cache.length`` ``[B, 1, width]``
        and attends to the cached positions before it and itself."""
        b, t, width = h.shape
        head_dim = width // self.heads
        q, k, v = self.qkv(self.attention_norm(h)).reshape(b, t, 3, self.heads, head_dim).permute(2, 0, 3, 1, 4)
        scale = 1 / (math.sqrt(head_dim) * attention_temperature)
        if cache is None:
            attended = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
        else:
            k, v = cache.extend(layer, k, v)
            attended = F.scaled_dot_product_attention(q, k, v, scale=scale)
        h = h + self.attention_out(attended.transpose(1, 2).reshape(b, t, width))
        return h + self.mlp(self.mlp_norm(h))


class CausalTransformer(nn.Module):
    """Tokens ``[B, T, d]`` -> outputs ``[B, T, out]``, output ``i`` a function of tokens ``0..i`` only.

    Input projection plus learned position embeddings (and a class embedding added to every token for
    class-conditional models; class ``n_classes`` is "no class", the unconditional model), ``layers``
    `TransformerLayer` s, a final LayerNorm and a linear output that starts at zero.
    """

    def __init__(
        self,
        tokens: int,
        token_dim: int,
        out_dim: int,
        width: int,
        layers: int,
        heads: int,
        mlp_ratio: int,
        n_classes: int | None,
    ) -> None:
        super().__init__()
        self.tokens = tokens
        self.input = nn.Linear(token_dim, width)
        self.position = nn.Parameter(0.02 * torch.randn(tokens, width))
        self.class_embedding = nn.Embedding(n_classes + 1, width) if n_classes else None
        if self.class_embedding is not None:
            nn.init.normal_(self.class_embedding.weight, std=0.02)
        self.layers = nn.ModuleList(TransformerLayer(width, heads, mlp_ratio) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.output = nn.Linear(width, out_dim)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def _embed(self, x: Tensor, positions: slice, classes: Tensor | None) -> Tensor:
        h = self.input(x) + self.position[positions]
        if self.class_embedding is not None:
            h = h + self.class_embedding(classes)[:, None]
        return h

    def forward(self, x: Tensor, classes: Tensor | None = None, attention_temperature: float = 1.0) -> Tensor:
        """All positions at once (training, density), ``[B, T, d] -> [B, T, out]``."""
        h = self._embed(x, slice(0, x.shape[1]), classes)
        for layer in self.layers:
            h = layer(h, attention_temperature)
        return self.output(self.norm(h))

    def step(
        self, x: Tensor, cache: KeyValueCache, classes: Tensor | None = None, attention_temperature: float = 1.0
    ) -> Tensor:
        """The next position ``cache.length``: token ``[B, 1, d]`` -> its output ``[B, 1, out]``, attending to
        the positions already in ``cache`` (which then holds this one too)."""
        i = cache.length
        h = self._embed(x, slice(i, i + 1), classes)
        for index, layer in enumerate(self.layers):
            h = layer(h, attention_temperature, cache, index)
        cache.length += 1
        return self.output(self.norm(h))


class AutoregressiveBlock(NetworkTransform):
    """One TarFlow block on tokens ``[B, T, d]``: ``z_i = (x_i - mu_i) exp(-a_i)`` with ``(mu_i, a_i)``
    from a causal Transformer of ``x_<i`` (learned constants for the first token), in the natural
    token order or, with ``reverse``, the reversed one. ``logdet = -sum a``.

    ``forward`` and `inverse` take ``classes`` ``[B]`` (class indices, ``n_classes`` meaning none) for
    class-conditional blocks. `inverse` decodes token by token with a `KeyValueCache`; with a
    ``guidance`` scale ``s != 1`` each token's ``(mu, a)`` becomes ``theta_weak + s (theta - theta_weak)``,
    ``theta_weak`` from ``weak_classes`` and ``weak_attention_temperature`` (see the module docstring).
    """

    def __init__(self, net: CausalTransformer, token_dim: int, reverse: bool) -> None:
        super().__init__()
        self.net = net
        self.reverse = reverse
        self.first = nn.Parameter(torch.zeros(2 * token_dim))  # (mu_0, a_0): token 0 has no predecessors

    def _ordered(self, x: Tensor) -> Tensor:
        return x.flip(1) if self.reverse else x

    def forward(self, x: Tensor, classes: Tensor | None = None) -> tuple[Tensor, Tensor]:
        h = self._ordered(x)
        out = self.run_net(h, classes)
        params = torch.cat((self.first.expand(h.shape[0], 1, -1), out[:, :-1]), dim=1)  # token i from tokens < i
        shift, log_scale = params.chunk(2, dim=-1)
        z = (h - shift) * torch.exp(-log_scale)
        return self._ordered(z), -log_scale.flatten(1).sum(1)

    def inverse(
        self,
        z: Tensor,
        classes: Tensor | None = None,
        guidance: float = NO_GUIDANCE,
        weak_classes: Tensor | None = None,
        weak_attention_temperature: float = 1.0,
    ) -> Tensor:
        z = self._ordered(z)
        b, t, _ = z.shape
        x = torch.empty_like(z)
        first = self.first.to(z.dtype).expand(b, 1, -1)
        params = first
        caches = (KeyValueCache(t), KeyValueCache(t))
        for i in range(t):
            shift, log_scale = params.chunk(2, dim=-1)
            x[:, i : i + 1] = z[:, i : i + 1] * torch.exp(log_scale) + shift
            if i == t - 1:
                break
            token = x[:, i : i + 1]
            params = run_network(self.net.step, self.network_dtype, token, caches[0], classes)
            if guidance != NO_GUIDANCE:
                weak = run_network(
                    self.net.step, self.network_dtype, token, caches[1], weak_classes, weak_attention_temperature
                )
                params = guide(params, weak, guidance)
        return self._ordered(x)


class TarFlow(Flow):
    """TarFlow for images of ``shape = (C, H, W)`` (see the module docstring).

    Args:
        patch_size: ``p``; the (padded) image sides must be multiples of it. Tokens hold ``C p^2`` values.
        blocks: autoregressive blocks, the token order reversed in every second one.
        layers: Transformer layers per block.
        width: the Transformers' width; ``heads`` attention heads, MLPs of ``mlp_ratio * width``.
        n_classes: class-conditional blocks (a class embedding added to every token); ``None`` unconditional.
        label_dropout: in training, the probability of dropping a sample's label (class "none"), so that one
            model is also the unconditional one that classifier-free guidance needs (class-conditional only).
        preprocessing: bit depth, data range, padding, dequantisation or Gaussian noise augmentation
            (`lgm.flow.Preprocessing`); ``None`` is ``Preprocessing()``. The paper trains with noise.

    Example:
        >>> flow = TarFlow((1, 8, 8), patch_size=2, blocks=2, layers=1, width=16, heads=2)
        >>> x = torch.rand(3, 1, 8, 8)
        >>> torch.equal(flow.encode(x).levels[0], x - 0.5)  # new: the identity after centring
        True
    """

    def __init__(
        self,
        shape: Sequence[int] = (1, 28, 28),
        patch_size: int = 4,
        blocks: int = 4,
        layers: int = 2,
        width: int = 128,
        heads: int = 4,
        mlp_ratio: int = 4,
        n_classes: int | None = None,
        label_dropout: float = 0.1,
        preprocessing: Preprocessing | None = Preprocessing(),
    ) -> None:
        shape = tuple(shape)
        preprocessing = Preprocessing.of(preprocessing) or Preprocessing()
        if blocks < 1 or layers < 1:
            raise ValueError(f"blocks and layers must be at least 1, got {blocks} and {layers}")
        if n_classes is not None and n_classes < 1:
            raise ValueError(f"n_classes must be at least 1 (or None), got {n_classes}")
        check_label_dropout(label_dropout)
        preprocess, model_shape = preprocessing.transforms(shape)
        patchify = Patchify(model_shape, patch_size)
        tokens, token_dim = patchify.token_shape
        prior = StandardGaussian(model_shape)
        super().__init__(Compose(*preprocess), prior, shape, **preprocessing.flow_arguments(shape))
        self.preprocessing = preprocessing
        self.patchify = patchify
        self.blocks = nn.ModuleList(
            AutoregressiveBlock(
                CausalTransformer(tokens, token_dim, 2 * token_dim, width, layers, heads, mlp_ratio, n_classes),
                token_dim,
                reverse=k % 2 == 1,
            )
            for k in range(blocks)
        )
        self.n_classes = n_classes
        self.label_dropout = label_dropout if n_classes else 0.0
        self.attention_temperature: float | None = None  # of the weak model of guidance, see use_guidance

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(objective=self._likelihood_objective(), guidance=True)

    # -- guidance ------------------------------------------------------------------------------------

    def use_guidance(self, scale: float = NO_GUIDANCE, attention_temperature: float | None = None) -> None:
        """Guide sampling with ``scale = s >= 0`` (1: none; `lgm.flow.guidance`). The weak model is the
        unconditional one for a class-conditional model trained with label dropout, else the model itself;
        either with its attention softened by ``attention_temperature`` (> 1) if given, which a model
        without an unconditional one needs. A switch of the run: it is not saved."""
        scale = check_guidance_scale(scale)
        softened = attention_temperature
        if softened is not None and not (softened > 0 and math.isfinite(softened)):
            raise ValueError(f"the attention temperature must be a finite number > 0, got {attention_temperature}")
        if scale != NO_GUIDANCE and self.label_dropout == 0 and softened is None:
            raise ValueError(
                "guiding a TarFlow that has no unconditional model (trained without label dropout) needs an "
                "attention temperature for its weak model (e.g. attention_temperature=1.5, "
                "--guidance-attention-temperature)"
            )
        self.guidance = scale
        self.attention_temperature = attention_temperature

    def _weak_classes(self, classes: Tensor | None, batch: int, device: torch.device) -> Tensor | None:
        """The weak model's classes: "no class" if the model was trained with label dropout, else its own."""
        return self.class_indices(None, batch, device) if self.label_dropout > 0 else classes

    # -- the bijection -------------------------------------------------------------------------------

    def bijection(self, x: Tensor, labels: Tensor | None = None) -> tuple[Latent, Tensor]:
        y, logdet = self.transform(x)
        tokens, _ = self.patchify(y)
        classes = self.class_indices(labels, x.shape[0], x.device)
        for block in self.blocks:
            tokens, block_logdet = block(tokens, classes)
            logdet = logdet + block_logdet
        return Latent(self.patchify.inverse(tokens)), logdet

    def log_prob(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        self.check_input(x)
        self.check_labels(labels, x.shape[0])
        latent, logdet = self.bijection(x, labels)
        return self.prior.log_prob(latent.levels[0]) + logdet

    def encode(self, x: Tensor, labels: Tensor | None = None) -> Latent:
        self.check_input(x)
        self.check_labels(labels, x.shape[0])
        return self.bijection(x, labels)[0]

    def decode(self, latent: Latent, labels: Tensor | None = None) -> Tensor:
        """Latent -> data, token by token through each block (guided if `use_guidance` set a scale)."""
        self.check_latent(latent)
        z = latent.levels[0]
        self.check_labels(labels, z.shape[0])
        tokens, _ = self.patchify(z)
        classes = self.class_indices(labels, z.shape[0], z.device)
        weak_classes = self._weak_classes(classes, z.shape[0], z.device)
        weak_temperature = self.attention_temperature or 1.0
        for block in reversed(self.blocks):
            tokens = block.inverse(tokens, classes, self.guidance, weak_classes, weak_temperature)
        return self.transform.inverse(self.patchify.inverse(tokens))
