"""A model family defined here, outside the package, goes through training, sampling, evaluation and
the invertibility check with no edit in `lgm.train`, `lgm.evaluate` or `lgm.viz`: callers use only
the `lgm.flow.Flow` protocol and its capabilities."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import fake_data
from torch import Tensor, nn

from lgm.cli import main
from lgm.evaluate.classifier import classifier_for, save_classifier
from lgm.flow import (
    Compose,
    Flow,
    Preprocessing,
    StandardGaussian,
    Transform,
    check_invertible,
    load,
)


class PixelAffine(Transform):
    """``z = (x - shift) * exp(-log_scale)``, one shift and scale per value: ``logdet = -sum log_scale``."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(shape))
        self.log_scale = nn.Parameter(torch.zeros(shape))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return (x - self.shift) * (-self.log_scale).exp(), -self.log_scale.sum().expand(x.shape[0])

    def inverse(self, z: Tensor) -> Tensor:
        return z * self.log_scale.exp() + self.shift


class PixelGaussianFlow(Flow):
    """An independent Gaussian per pixel of preprocessed images: the smallest image family."""

    def __init__(self, shape: tuple[int, ...] = (1, 28, 28), n_bits: int = 8) -> None:
        shape = tuple(shape)
        preprocess, model_shape = Preprocessing(n_bits=n_bits).transforms(shape)
        super().__init__(
            Compose(*preprocess, PixelAffine(model_shape)), StandardGaussian(model_shape), shape, n_bits=n_bits
        )


@pytest.mark.slow
def test_a_family_defined_outside_the_package_trains_samples_evaluates_and_checks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = fake_data(tmp_path, n_train=300)
    main(
        [
            "fit",
            "--model.flow",
            f"{__name__}.PixelGaussianFlow",
            "--model.flow.init_args.shape",
            "[1, 28, 28]",
            "--model.lr",
            "1e-2",
            "--data",
            "lgm.data.ImageDataModule",
            "--data.init_args.name",
            "fashion_mnist",
            "--data.init_args.data_dir",
            str(data),
            "--data.init_args.val_size",
            "50",
            "--data.init_args.batch_size",
            "50",
            "--trainer.max_epochs",
            "2",
            "--sample_grid.n",
            "4",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.enable_model_summary",
            "false",
        ]
    )
    (run,) = (tmp_path / "runs" / "lgm").iterdir()
    with open(run / "metrics.csv") as f:
        header, *rows = [line.strip().split(",") for line in f]
    bpd = [float(r[header.index("val/bpd")]) for r in rows if r[header.index("val/bpd")]]
    assert len(bpd) == 2 and bpd[1] < bpd[0]  # it learns
    last = run / "checkpoints" / "last.ckpt"

    main(["sample", "--ckpt", str(last), "--n", "9", "--out", "grid.png"])
    assert (tmp_path / "grid.png").stat().st_size > 0

    weights = tmp_path / "classifier.pt"
    save_classifier(classifier_for("fashion_mnist"), weights)
    main(
        [
            "evaluate",
            "--ckpt",
            str(last),
            "--data",
            "fashion_mnist",
            "--data-dir",
            str(data),
            "--metrics",
            "bpd,fid",
            "--n-samples",
            "40",
            "--classifier-weights",
            str(weights),
            "--out",
            "report.json",
        ]
    )
    report = json.loads((tmp_path / "report.json").read_text())
    assert math.isfinite(report["metrics"]["bpd"]["value"]) and math.isfinite(report["metrics"]["classifier"]["fid"])
    assert report["diagnostics"]["reconstruction_max_abs_error"] < 1e-4
    assert {"interpolation", "latent_norms", "reconstructions"} <= set(report["figures"])

    flow = load(last)
    assert type(flow) is PixelGaussianFlow and flow.capabilities.exact_inverse
    x = torch.rand(3, 1, 28, 28)
    check = check_invertible(flow.double(), x.double(), n_jacobian=1)
    assert check.ok(roundtrip_tol=1e-10, logdet_tol=1e-8), check
