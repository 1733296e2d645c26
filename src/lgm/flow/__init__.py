"""Normalising flows: transforms with exact inverses and log-determinants, priors, and models
(NICE, RealNVP, Glow, TarFlow), and continuous flows trained by flow matching (`FlowMatching`) and
by MeanFlow's average velocities for sampling in few steps (`MeanFlow`).

Direction convention: ``forward`` maps data -> latent and returns ``(z, log|det dz/dx|)``;
``inverse`` maps latent -> data. ``Flow.log_prob`` is in nats per sample.
"""

from lgm.flow.base import Compose, DataInitialized, Flow, Reshape, Transform
from lgm.flow.checks import InvertibilityReport, check_invertible, jacobian_logdet
from lgm.flow.coupling import AdditiveVectorCoupling, AffineVectorCoupling, ImageCoupling
from lgm.flow.dequantization import VariationalDequantizer
from lgm.flow.discrete import dequantize, dequantize_images, noisy_images, quantize, reduce_bits
from lgm.flow.glow import Glow, VectorGlow
from lgm.flow.io import load, save
from lgm.flow.latent import Capabilities, Latent
from lgm.flow.layers import (
    ActNorm,
    ChannelPermutation,
    DiagonalScaling,
    InvConv1x1,
    Squeeze,
)
from lgm.flow.matching import FlowMatching
from lgm.flow.meanflow import MeanFlow
from lgm.flow.multiscale import MultiScaleFlow
from lgm.flow.nets import mlp
from lgm.flow.nice import NiceFlow
from lgm.flow.preprocess import (
    Center,
    Logit,
    Normalize,
    PadWithNoise,
    Preprocessing,
)
from lgm.flow.priors import (
    Prior,
    SplitPrior,
    StandardGaussian,
    StandardLogistic,
    TopPrior,
    make_prior,
)
from lgm.flow.realnvp import RealNVP, VectorRealNVP
from lgm.flow.scales import SCALE_MAPS, get_scale_map
from lgm.flow.tarflow import TarFlow
from lgm.flow.zoo import model_card, pretrained, pretrained_models, pretrained_or_file

__all__ = [
    "ActNorm",
    "AdditiveVectorCoupling",
    "ImageCoupling",
    "AffineVectorCoupling",
    "Capabilities",
    "Center",
    "ChannelPermutation",
    "Compose",
    "DataInitialized",
    "DiagonalScaling",
    "Flow",
    "FlowMatching",
    "Glow",
    "InvertibilityReport",
    "InvConv1x1",
    "Latent",
    "Logit",
    "MeanFlow",
    "MultiScaleFlow",
    "Normalize",
    "PadWithNoise",
    "Preprocessing",
    "model_card",
    "pretrained",
    "pretrained_models",
    "pretrained_or_file",
    "Prior",
    "NiceFlow",
    "RealNVP",
    "Reshape",
    "SCALE_MAPS",
    "SplitPrior",
    "Squeeze",
    "StandardGaussian",
    "StandardLogistic",
    "TopPrior",
    "Transform",
    "TarFlow",
    "VectorGlow",
    "VectorRealNVP",
    "VariationalDequantizer",
    "check_invertible",
    "dequantize",
    "noisy_images",
    "dequantize_images",
    "get_scale_map",
    "jacobian_logdet",
    "load",
    "make_prior",
    "mlp",
    "quantize",
    "reduce_bits",
    "save",
]
