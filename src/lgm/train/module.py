"""The Lightning module that trains any `lgm.flow.Flow` by maximum likelihood."""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor

from lgm.flow.base import DataInitialized, Flow
from lgm.flow.discrete import dequantize, reduce_bits
from lgm.flow.io import flow_spec


class FlowModule(L.LightningModule):
    """Maximum-likelihood training of a flow.

    For continuous data (2-D toys) the loss is the negative log-likelihood in nats, logged as
    ``{train,val,test}/nll``. For images (flows with ``n_bits``) it is bits/dim of the discrete
    images (`lgm.flow.Flow.bits_per_dim`), logged as ``{train,val,test}/bpd``. Either is also
    logged as ``val/loss``, which checkpointing monitors.

    Checkpoints carry the flow's class and arguments (``"lgm_flow"``) so that `lgm.flow.load`
    rebuilds the model alone.

    Args:
        flow: the model, e.g. ``lgm.flow.NiceFlow(...)``; in a YAML config a ``class_path`` /
            ``init_args`` pair.
        lr: Adam learning rate.
        weight_decay: Adam's L2 penalty (0 by default: it hurts scale parameters).
        dequant_samples: dequantisation samples per image for validation and test bits/dim
            (K > 1 gives the importance-weighted bound papers report; training always uses 1).
        init_samples: training samples used to initialise data-dependent layers (normalisation,
            actnorm) before the first step.
    """

    def __init__(
        self, flow: Flow, lr: float = 1e-3, weight_decay: float = 0.0, dequant_samples: int = 1, init_samples: int = 1024
    ) -> None:
        super().__init__()
        flow_spec(flow)  # fail now, not at the first checkpoint, if the flow cannot be saved
        self.flow = flow
        # Plain attributes, not save_hyperparameters(): Lightning's CLI would let hyperparameters saved in
        # a checkpoint override the command line (e.g. --model.dequant_samples for a test). The run's
        # config.yaml records them instead.
        self.lr, self.weight_decay = lr, weight_decay
        self.dequant_samples, self.init_samples = dequant_samples, init_samples

    @property
    def metric(self) -> str:
        return "nll" if self.flow.n_bits is None else "bpd"

    def _loss(self, batch: Tensor | tuple[Tensor, Tensor], dequant_samples: int = 1) -> Tensor:
        """Per-sample loss ``[B]``: nats for continuous data, bits/dim for images."""
        x, labels = self._split(batch)
        if self.flow.n_bits is None:
            return -self.flow.log_prob(x, labels)
        return self.flow.bits_per_dim(x, labels, dequant_samples=dequant_samples)

    def _split(self, batch: Tensor | tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor | None]:
        """``(data, labels)``; labels only for class-conditional flows."""
        x, labels = (batch[0], batch[1]) if isinstance(batch, (tuple, list)) else (batch, None)
        return x, labels if self.flow.n_classes else None

    def training_step(self, batch: Tensor | tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = self._loss(batch).mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"the training loss became {loss.item()} at step {self.global_step}. Usual fixes: a smaller "
                "--model.lr, a bounded scale function (scale: softplus or sigmoid), or gradient clipping "
                "(--trainer.gradient_clip_val 1.0)"
            )
        self.log(f"train/{self.metric}", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Tensor | tuple[Tensor, Tensor], batch_idx: int) -> None:
        loss = self._loss(batch, self.dequant_samples).mean()
        self.log(f"val/{self.metric}", loss, prog_bar=True, sync_dist=True)
        self.log("val/loss", loss, sync_dist=True)

    def test_step(self, batch: Tensor | tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.log(f"test/{self.metric}", self._loss(batch, self.dequant_samples).mean(), sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    def on_fit_start(self) -> None:
        layers = [m for m in self.flow.modules() if isinstance(m, DataInitialized)]
        if layers and not all(bool(m.initialized) for m in layers):
            self.flow.initialize(*self._initialization_batch())

    def _initialization_batch(self) -> tuple[Tensor, Tensor | None]:
        """``init_samples`` training samples (dequantised for image flows) and their labels, on the model's device."""
        if self.trainer.datamodule is None:
            raise RuntimeError(
                "this flow has data-dependent layers: train it with a data module (trainer.fit(module, datamodule=...)) "
                "or call flow.initialize(batch) before trainer.fit"
            )
        xs, ys, count = [], [], 0
        for batch in self.trainer.datamodule.train_dataloader():
            x, labels = self._split(batch)
            xs.append(x)
            ys.append(labels)
            count += len(x)
            if count >= self.init_samples:
                break
        n = self.init_samples
        x = torch.cat(xs)[:n].to(self.device)
        labels = torch.cat(ys)[:n].to(self.device) if self.flow.n_classes else None
        if self.flow.n_bits is not None:
            x = dequantize(reduce_bits(x, self.flow.n_bits), self.flow.n_bits)
        return x, labels

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["lgm_flow"] = flow_spec(self.flow)
