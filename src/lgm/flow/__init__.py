"""Normalising flows: transforms with exact inverses and log-determinants, priors, and models.

Direction convention: ``forward`` maps data -> latent and returns ``(z, log|det dz/dx|)``;
``inverse`` maps latent -> data. ``Flow.log_prob`` is in nats per sample.
"""

from lgm.flow.base import Compose, DataInitialized, Flow, Reshape, Transform
from lgm.flow.discrete import dequantize, quantize, reduce_bits
from lgm.flow.coupling import AdditiveCoupling
from lgm.flow.io import load, save
from lgm.flow.layers import DiagonalScaling
from lgm.flow.nets import mlp
from lgm.flow.nice import NiceFlow
from lgm.flow.preprocess import Center, Logit, Normalize, PadWithNoise, make_preprocessing
from lgm.flow.priors import StandardGaussian, StandardLogistic, make_prior
from lgm.flow.scales import SCALE_MAPS, get_scale_map

__all__ = [
    "AdditiveCoupling",
    "Center",
    "Compose",
    "DataInitialized",
    "DiagonalScaling",
    "Flow",
    "Logit",
    "Normalize",
    "PadWithNoise",
    "NiceFlow",
    "Reshape",
    "SCALE_MAPS",
    "StandardGaussian",
    "StandardLogistic",
    "Transform",
    "dequantize",
    "get_scale_map",
    "load",
    "make_preprocessing",
    "make_prior",
    "mlp",
    "quantize",
    "reduce_bits",
    "save",
]
