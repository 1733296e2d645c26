"""Callbacks that write what a person looks at after and during training: 2-D diagnostics and sample grids."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch

from lgm.evaluate.density import kl_from_log_probs
from lgm.train.callbacks import run_folder
from lgm.train.ema import FlowEMA
from lgm.utils.files import atomic_write_text
from lgm.viz.density import plot_density_comparison, plot_samples
from lgm.viz.images import save_grid


class ToyDiagnostics(L.Callback):
    """After fitting on a 2-D toy density, write figures and a report into the run's log folder.

    Writes ``figures/density.png`` (data | true density, where known | model density),
    ``figures/samples.png`` (model samples over data) and ``toy_report.json`` with the test NLL and,
    for densities known in closed form, ``KL(true || model)`` on ``n_kl`` fresh samples (drawn with
    a seed that the data module never uses). Does nothing for other data.

    Args:
        n_kl: fresh samples for the KL estimate.
        n_samples: model samples drawn for the scatter plot.
        seed: seed of the fresh samples.
    """

    def __init__(self, n_kl: int = 100_000, n_samples: int = 5_000, seed: int = 1_000_003) -> None:
        self.n_kl = n_kl
        self.n_samples = n_samples
        self.seed = seed

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        density = getattr(trainer.datamodule, "density", None)
        out = run_folder(trainer)  # on every rank: under DDP, trainer.log_dir is a collective call
        if density is None or not trainer.is_global_zero:
            return
        flow = pl_module.flow
        was_training = flow.training
        flow.eval()
        try:
            report = self._report(flow, density, trainer, out)
        finally:
            flow.train(was_training)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(json.dumps(report, indent=2) + "\n", out / "toy_report.json")
        for logger in trainer.loggers:
            logger.log_metrics({k: v for k, v in report.items() if isinstance(v, float)}, step=trainer.global_step)
        summary = ", ".join(f"{k} = {v:.4f}" for k, v in report.items() if isinstance(v, float))
        print(f"[toy diagnostics] {density.name}: {summary}; figures in {out / 'figures'}")

    @torch.no_grad()
    def _report(self, flow, density, trainer: L.Trainer, out: Path) -> dict:
        device = next(flow.parameters()).device

        def model_log_prob(x: torch.Tensor) -> torch.Tensor:
            return flow.log_prob(x.to(device)).cpu()

        fresh = density.sample(self.n_kl, seed=self.seed)
        report: dict = {"density": density.name, "n_fresh_samples": self.n_kl}
        fresh_log_probs = torch.cat([model_log_prob(x) for x in fresh.split(65_536)])
        report["nll_fresh"] = float(-fresh_log_probs.double().mean())
        if density.has_log_prob:
            report["kl_true_model"], report["kl_standard_error"] = kl_from_log_probs(
                density.log_prob(fresh), fresh_log_probs
            )
        if hasattr(density, "entropy"):
            report["true_entropy"] = density.entropy()
        figures = out / "figures"
        figures.mkdir(parents=True, exist_ok=True)
        data = trainer.datamodule.train_data[: self.n_kl]
        plot_density_comparison(
            model_log_prob,
            data,
            density.bounds,
            true_log_prob=density.log_prob if density.has_log_prob else None,
            path=figures / "density.png",
        )
        plot_samples(
            flow.sample(self.n_samples).cpu(), density.bounds, data[: self.n_samples], path=figures / "samples.png"
        )
        return report


class SampleGrid(L.Callback):
    """For image flows, save grids of samples at several temperatures after every training epoch
    (from the weight average when `lgm.train.FlowEMA` keeps one).

    Writes ``figures/samples_t{T}.png`` (one per temperature, overwritten each epoch, so the latest
    is always there); for flows trained with noise these are denoised, and ``samples_t{T}_raw.png``
    holds the same draws before denoising. Class-conditional models cycle through the classes. Does nothing for
    continuous data.

    Args:
        temperatures: prior temperatures to sample at.
        n: images per grid.
        seed: seed of the prior noise, the same every epoch so grids are comparable over training.
    """

    def __init__(self, temperatures: list[float] = [0.5, 0.7, 1.0], n: int = 64, seed: int = 0) -> None:  # noqa: B006
        self.temperatures = list(temperatures)
        self.n = n
        self.seed = seed

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        averages = [
            cb.average_flow for cb in trainer.callbacks if isinstance(cb, FlowEMA) and cb.average_flow is not None
        ]
        flow = averages[0] if averages else pl_module.flow
        figures = run_folder(trainer) / "figures"  # on every rank: a collective call under DDP
        if flow.n_bits is None or not trainer.is_global_zero:
            return
        figures.mkdir(parents=True, exist_ok=True)
        was_training = flow.training
        flow.eval()
        try:
            with (
                torch.no_grad(),
                torch.random.fork_rng(devices=[pl_module.device] if pl_module.device.type == "cuda" else []),
            ):
                for t in self.temperatures:
                    torch.manual_seed(self.seed)
                    labels = torch.arange(self.n, device=pl_module.device) % flow.n_classes if flow.n_classes else None
                    images = flow.sample(self.n, temperature=t, labels=labels)
                    save_grid(images, figures / f"samples_t{t}.png", nrow=int(self.n**0.5))
                    if flow.noise_std is not None:  # the same draw before denoising, beside it
                        torch.manual_seed(self.seed)
                        raw = flow.sample(self.n, temperature=t, labels=labels, denoise=False)
                        save_grid(raw, figures / f"samples_t{t}_raw.png", nrow=int(self.n**0.5))
        finally:
            flow.train(was_training)
