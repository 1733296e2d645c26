"""Callbacks that write what a person looks at after training."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch

from lgm.evaluate.density import kl_to_truth
from lgm.viz.density import plot_density_comparison, plot_samples


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
        if density is None or not trainer.is_global_zero:
            return
        flow = pl_module.flow
        was_training = flow.training
        flow.eval()
        try:
            report = self._report(flow, density, trainer)
        finally:
            flow.train(was_training)
        out = Path(trainer.log_dir or trainer.default_root_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "toy_report.json").write_text(json.dumps(report, indent=2) + "\n")
        for logger in trainer.loggers:
            logger.log_metrics({k: v for k, v in report.items() if isinstance(v, float)}, step=trainer.global_step)
        summary = ", ".join(f"{k} = {v:.4f}" for k, v in report.items() if isinstance(v, float))
        print(f"[toy diagnostics] {density.name}: {summary}; figures in {out / 'figures'}")

    @torch.no_grad()
    def _report(self, flow, density, trainer: L.Trainer) -> dict:
        device = next(flow.parameters()).device

        def model_log_prob(x: torch.Tensor) -> torch.Tensor:
            return flow.log_prob(x.to(device)).cpu()

        fresh = density.sample(self.n_kl, seed=self.seed)
        report: dict = {"density": density.name, "n_fresh_samples": self.n_kl}
        report["nll_fresh"] = float(-torch.cat([model_log_prob(x) for x in fresh.split(65_536)]).double().mean())
        if density.has_log_prob:
            report["kl_true_model"], report["kl_standard_error"] = kl_to_truth(model_log_prob, density.log_prob, fresh)
        if hasattr(density, "entropy"):
            report["true_entropy"] = density.entropy()
        figures = Path(trainer.log_dir or trainer.default_root_dir) / "figures"
        figures.mkdir(parents=True, exist_ok=True)
        data = trainer.datamodule.train_data[: self.n_kl]
        plot_density_comparison(
            figures / "density.png", model_log_prob, data, density.bounds,
            true_log_prob=density.log_prob if density.has_log_prob else None,
        )
        plot_samples(figures / "samples.png", flow.sample(self.n_samples).cpu(), data[: self.n_samples], density.bounds)
        return report
