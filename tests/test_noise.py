"""Gaussian noise augmentation and Tweedie denoising: closed forms, a trained 2-D toy, the honest names."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers import fake_data
from torch import Tensor

from lgm.cli import main
from lgm.data.images import load_images
from lgm.evaluate.classifier import classifier_for, save_classifier
from lgm.flow import (
    Compose,
    Flow,
    FlowMatching,
    Glow,
    NiceFlow,
    Preprocessing,
    StandardGaussian,
    Transform,
    VectorGlow,
    load,
    save,
)
from lgm.flow.discrete import dequantize, noisy_images
from lgm.train import FlowModule


class Affine(Transform):
    """``z = (x - mean) / std``: a flow with this transform and a N(0, I) prior is N(mean, std^2)."""

    def __init__(self, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return (x - self.mean) / self.std, (-self.std.log().sum()).expand(x.shape[0])

    def inverse(self, z: Tensor) -> Tensor:
        return z * self.std + self.mean


def gaussian_flow(mean: Tensor, std: Tensor, noise_std: float) -> Flow:
    return Flow(Affine(mean, std), StandardGaussian((len(mean),)), (len(mean),), noise_std=noise_std)


def test_denoising_a_standard_gaussian_shrinks_by_one_minus_sigma_squared():
    sigma = 0.3
    flow = Flow(Compose(), StandardGaussian((3,)), (3,), noise_std=sigma)
    y = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(flow.denoise(y), (1 - sigma**2) * y)
    torch.testing.assert_close(flow.denoise(y, step=0.5), (1 - 0.5 * sigma**2) * y)


def test_denoising_is_the_posterior_mean_of_gaussian_data():
    # Clean data x ~ N(m, s^2 - sigma^2), so y = x + sigma eps ~ N(m, s^2): the flow's density, exactly.
    # The posterior mean is E[x | y] = m + (s^2 - sigma^2) / s^2 (y - m).
    sigma, mean, std = 0.2, torch.tensor([1.0, -2.0]), torch.tensor([0.5, 1.5])
    flow = gaussian_flow(mean, std, sigma)
    y = mean + std * torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    posterior_mean = mean + (std**2 - sigma**2) / std**2 * (y - mean)
    torch.testing.assert_close(flow.denoise(y), posterior_mean)
    # And empirically: the posterior mean is the least-squares estimate of x from y.
    g = torch.Generator().manual_seed(2)
    x = mean + (std**2 - sigma**2).sqrt() * torch.randn(20_000, 2, generator=g)
    y = x + sigma * torch.randn(x.shape, generator=g)
    denoised_error = (flow.denoise(y) - x).square().mean()
    posterior_variance = (sigma**2 * (std**2 - sigma**2) / std**2).mean()
    assert denoised_error == pytest.approx(posterior_variance.item(), rel=0.03)
    assert (y - x).square().mean() == pytest.approx(sigma**2, rel=0.03)
    for step in (0.5, 1.5):  # any other step is worse
        assert denoised_error < (flow.denoise(y, step=step) - x).square().mean()


def test_sampling_denoises_by_default_only_flows_trained_with_noise():
    flow = gaussian_flow(torch.zeros(2), torch.ones(2), noise_std=0.5)
    torch.manual_seed(3)
    raw = flow.sample(8, denoise=False)
    torch.manual_seed(3)
    torch.testing.assert_close(flow.sample(8), 0.75 * raw)
    torch.manual_seed(3)
    torch.testing.assert_close(flow.sample(8, denoise_step=2.0), 0.5 * raw)
    assert not flow.sample(8).requires_grad
    clean = Flow(Compose(), StandardGaussian((2,)), (2,))
    torch.manual_seed(3)
    torch.testing.assert_close(clean.sample(8), raw)  # no noise: no denoising, the same draw
    with pytest.raises(ValueError, match=r"denoising needs a flow trained with Gaussian noise .* \(--no-denoise\)"):
        clean.sample(8, denoise=True)
    with pytest.raises(ValueError, match="was not trained with noise"):
        clean.denoise(raw)


def test_denoising_a_trained_2d_flow_moves_samples_onto_the_data():
    # Clean data on the unit circle; the flow learns the circle blurred by sigma = 0.15.
    sigma = 0.15
    g = torch.Generator().manual_seed(0)
    angle = 2 * math.pi * torch.rand(2048, generator=g)
    circle = torch.stack([angle.cos(), angle.sin()], dim=1)
    torch.manual_seed(0)  # the initial weights: the test must not depend on the tests run before it
    flow = VectorGlow(2, flow_steps=6, width=64, noise_std=sigma)
    flow.initialize(circle[:512])
    optimizer = torch.optim.Adam(flow.parameters(), lr=3e-3)
    for _ in range(400):
        batch = circle[torch.randint(0, len(circle), (256,), generator=g)]
        loss = flow.objective(batch).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    flow.eval()
    torch.manual_seed(1)
    raw = flow.sample(2000, denoise=False)
    torch.manual_seed(1)
    denoised = flow.sample(2000)

    def distance_to_circle(x: Tensor) -> float:
        return (x.norm(dim=1) - 1).abs().mean().item()

    # Noisy data sit at a mean distance of about sigma * sqrt(2 / pi) = 0.12 from the circle.
    assert 0.08 < distance_to_circle(raw) < 0.2
    # Denoising by the learned score moves them towards it (a ratio of 0.56 to 0.67 over initial seeds
    # 0 to 3 and 400 or 800 steps; without denoising it is 1).
    assert distance_to_circle(denoised) < 0.8 * distance_to_circle(raw)


def test_an_image_flow_trained_with_noise_names_its_loss_and_keeps_the_discrete_bound():
    sigma = 0.05
    flow = NiceFlow((1, 4, 4), couplings=2, width=16, depth=1, preprocessing=Preprocessing(noise_std=sigma))
    assert flow.noise_std == sigma and flow.capabilities.objective == "noisy_bpd"
    assert FlowModule(flow).objective_name == "noisy_bpd"
    x = torch.randint(0, 256, (6, 1, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    # The training loss is the noisy data's density in bits/dim, offset by n_bits like bits/dim.
    torch.manual_seed(5)
    loss = flow.objective(x)
    torch.manual_seed(5)
    y = noisy_images(x, 8, sigma)
    torch.testing.assert_close(loss, -flow.log_prob(y) / (16 * math.log(2)) + 8)
    assert (y < 0).any() or (y > 1).any() or sigma * 3 < 0.5 / 256  # noisy values may leave [0, 1]
    # bits/dim is still the uniform-dequantisation bound of the discrete images.
    torch.manual_seed(6)
    bpd = flow.bits_per_dim(x)
    torch.manual_seed(6)
    torch.testing.assert_close(bpd, -flow.log_prob(dequantize(x, 8)) / (16 * math.log(2)) + 8)
    # Samples are denoised, then clamped to [0, 1] like every image model's.
    flow.eval()
    samples = flow.sample(4)
    assert samples.shape == (4, 1, 4, 4) and samples.min() >= 0 and samples.max() <= 1


def test_noisy_images_are_pixel_centres_plus_gaussian_noise():
    x = torch.tensor([[0, 255, 128, 7]], dtype=torch.uint8)
    torch.manual_seed(0)
    y = noisy_images(x, 8, 0.1)
    torch.manual_seed(0)
    torch.testing.assert_close(y, (x.float() + 0.5) / 256 + 0.1 * torch.randn(x.shape))
    torch.testing.assert_close(noisy_images(x, 5, 1e-9), (x.float() // 8 + 0.5) / 32, atol=1e-6, rtol=0)


def test_training_input_is_what_the_objective_scores():
    """Uniformly dequantised images stay in their bins; noisy images spread sigma around the bin centres;
    a noisy 2-D flow's training loss is -log p of its training input under the same random draw."""
    x = torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8)
    uniform = Glow((1, 8, 8), levels=1, flow_steps=1, width=8).training_input(x)
    assert ((uniform * 256).floor() == x.float()).all()
    noisy = Glow((1, 8, 8), levels=1, flow_steps=1, width=8, preprocessing=Preprocessing(noise_std=0.05))
    deviation = noisy.training_input(x) - (x.float() + 0.5) / 256
    assert abs(deviation.std().item() - 0.05) < 0.003 and abs(deviation.mean().item()) < 0.003
    points = torch.randn(16, 2)
    flow = VectorGlow(2, flow_steps=2, width=8, noise_std=0.1)
    flow.initialize(flow.training_input(points))
    torch.manual_seed(1)
    loss = flow.objective(points)
    torch.manual_seed(1)
    torch.testing.assert_close(loss, -flow.log_prob(flow.training_input(points)))
    assert not torch.equal(flow.training_input(points), points)


def test_noise_std_is_saved_and_checked(tmp_path):
    flow = Glow((1, 8, 8), levels=1, flow_steps=1, width=8, preprocessing=Preprocessing(noise_std=0.05))
    flow.initialize(noisy_images(torch.randint(0, 256, (8, 1, 8, 8), dtype=torch.uint8), 8, 0.05))
    save(flow, tmp_path / "glow.pt")
    loaded = load(tmp_path / "glow.pt")
    assert loaded.noise_std == 0.05 and loaded.capabilities.objective == "noisy_bpd"
    assert Glow((1, 8, 8), levels=1, flow_steps=1, width=8).capabilities.objective == "likelihood"
    with pytest.raises(ValueError, match="noise_std must be a number > 0"):
        Preprocessing(noise_std=0.0)
    with pytest.raises(ValueError, match="logit is undefined: use noise_std without logit_alpha"):
        Preprocessing(data_range="unit", logit_alpha=0.05, noise_std=0.05)
    with pytest.raises(ValueError, match="flow matching takes neither"):
        FlowMatching((1, 8, 8), preprocessing=Preprocessing(noise_std=0.05))
    with pytest.raises(ValueError, match="noise_std must be a number > 0"):
        VectorGlow(2, noise_std=-1.0)


def noisy_glow_file(tmp_path, data_dir) -> Path:
    x = load_images("fashion_mnist", data_dir).x_train
    flow = Glow((1, 28, 28), levels=2, flow_steps=1, width=8, preprocessing=Preprocessing(noise_std=0.05))
    flow.initialize(noisy_images(x[:64], 8, 0.05))
    save(flow, tmp_path / "noisy_glow.pt")
    return tmp_path / "noisy_glow.pt"


def test_evaluate_denoises_and_reports_the_noisy_data_likelihood_under_its_own_name(tmp_path):
    data = fake_data(tmp_path)
    weights = tmp_path / "classifier.pt"
    save_classifier(classifier_for("fashion_mnist"), weights)
    ckpt = noisy_glow_file(tmp_path, data)
    common = ["evaluate", "--ckpt", str(ckpt), "--data", "fashion_mnist", "--data-dir", str(data)]
    common += ["--metrics", "bpd,fid", "--n-samples", "20", "--classifier-weights", str(weights), "--no-figures"]
    reports = {}
    for switch in ("--denoise", "--no-denoise"):
        out = tmp_path / f"{switch}.json"
        main([*common, switch, "--out", str(out)])
        reports[switch] = json.loads(out.read_text())
    denoised, raw = reports["--denoise"], reports["--no-denoise"]
    assert denoised["settings"]["denoise"] is True and raw["settings"]["denoise"] is False
    assert denoised["metrics"]["classifier"]["fid"] != raw["metrics"]["classifier"]["fid"]
    bpd, noisy = denoised["metrics"]["bpd"], denoised["metrics"]["noisy_data_bpd"]
    assert bpd["bound"] == "uniform dequantisation, 1 sample" and "noise" not in bpd
    assert noisy["noise_std"] == 0.05 and "no bound" in noisy["meaning"]
    assert math.isfinite(noisy["value"]) and noisy["value"] != bpd["value"]
    # The default is the model's: denoised, for a flow trained with noise.
    out = tmp_path / "default.json"
    main([*common, "--out", str(out)])
    assert json.loads(out.read_text())["settings"]["denoise"] is True


def test_the_denoise_switch_is_refused_for_flows_without_noise(tmp_path, capsys):
    flow = NiceFlow((1, 28, 28), couplings=2, width=8, depth=1, preprocessing=Preprocessing(data_range="unit"))
    save(flow, tmp_path / "nice.pt")
    with pytest.raises(SystemExit):
        main(["sample", "--ckpt", str(tmp_path / "nice.pt"), "--denoise", "--out", str(tmp_path / "s.png")])
    assert "denoising needs a flow trained with Gaussian noise" in capsys.readouterr().err
    assert not (tmp_path / "s.png").exists()
    data = fake_data(tmp_path)
    with pytest.raises(SystemExit):
        main(
            ["evaluate", "--ckpt", str(tmp_path / "nice.pt"), "--data", "fashion_mnist", "--data-dir", str(data)]
            + ["--metrics", "bpd", "--denoise", "--out", str(tmp_path / "r.json")]
        )
    assert "denoising needs a flow trained with Gaussian noise" in capsys.readouterr().err


def test_lgm_flow_sample_draws_raw_and_denoised_samples(tmp_path):
    ckpt = noisy_glow_file(tmp_path, fake_data(tmp_path))
    for switch in ("--denoise", "--no-denoise"):
        out = tmp_path / f"{switch}.png"
        main(["sample", "--ckpt", str(ckpt), "--n", "4", switch, "--denoise-step", "0.5", "--out", str(out)])
        assert out.is_file()


@pytest.mark.parametrize("dequantization", ["noise", "variational"])
def test_lgm_flow_fit_trains_with_noise_or_a_learned_dequantizer(tmp_path, monkeypatch, capsys, dequantization):
    monkeypatch.chdir(tmp_path)
    option = (
        ["--model.flow.init_args.preprocessing.noise_std", "0.05"]
        if dequantization == "noise"
        else ["--model.flow.init_args.preprocessing.dequantization", "variational"]
    )
    main(
        ["fit", "--data", "lgm.data.ImageDataModule", "--data.init_args.name", "digits"]
        + ["--data.init_args.batch_size", "100", "--model.flow", "lgm.flow.Glow"]
        + ["--model.flow.init_args.shape", "[1, 8, 8]", "--model.flow.init_args.levels", "1"]
        + ["--model.flow.init_args.flow_steps", "2", "--model.flow.init_args.width", "8", *option]
        + ["--sample_grid.temperatures", "[1.0]", "--sample_grid.n", "4", "--trainer.max_epochs", "1"]
        + ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
        + ["--trainer.log_every_n_steps", "1"]
    )
    (run,) = list((tmp_path / "runs" / "lgm").iterdir())
    metrics = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    figures = {p.name for p in (run / "figures").iterdir()}
    flow = load(run / "checkpoints" / "last.ckpt")
    if dequantization == "noise":
        assert "train/noisy_bpd" in metrics and "val/bpd" in metrics
        assert figures == {"samples_t1.0.png", "samples_t1.0_raw.png"} and flow.noise_std == 0.05
    else:
        assert "train/bpd" in metrics and figures == {"samples_t1.0.png"}
        assert flow.dequantization == "variational"
        assert any(p.abs().sum() > 0 for p in flow.dequantizer.nets[0][-1].parameters())  # q was trained
