"""Evaluation of trained flows: 2-D density diagnostics, sample quality (FID, KID, IS, precision/recall
in a classifier's or Inception's feature space), likelihood diagnostics, and the `evaluate` report."""

from lgm.evaluate.baselines import PixelGaussian
from lgm.evaluate.classifier import Classifier, classifier_for, load_classifier
from lgm.evaluate.density import grid_log_prob, integrate_density, kl_to_truth
from lgm.evaluate.diagnostics import (
    chi_log_pdf,
    chi_mean,
    corrupted_likelihoods,
    mean_bits_per_dim,
    standardized_latents,
)
from lgm.evaluate.features import classifier_protocol, extract_features, inception_protocol
from lgm.evaluate.metrics import fid, inception_score, kid, precision_recall
from lgm.evaluate.quality import generate, quality_metrics, reference_features
from lgm.evaluate.report import EvalSettings, evaluate

__all__ = [
    "Classifier",
    "EvalSettings",
    "PixelGaussian",
    "chi_log_pdf",
    "chi_mean",
    "classifier_for",
    "classifier_protocol",
    "corrupted_likelihoods",
    "evaluate",
    "extract_features",
    "fid",
    "generate",
    "grid_log_prob",
    "inception_protocol",
    "inception_score",
    "integrate_density",
    "kid",
    "kl_to_truth",
    "load_classifier",
    "mean_bits_per_dim",
    "precision_recall",
    "quality_metrics",
    "reference_features",
    "standardized_latents",
]
