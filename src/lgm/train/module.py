"""The Lightning module that trains any `lgm.flow.Flow` by maximum likelihood."""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor

from lgm.flow.base import Flow
from lgm.flow.io import flow_spec


class FlowModule(L.LightningModule):
    """Maximum-likelihood training of a flow: the loss is the mean negative log-likelihood in nats.

    Logs ``train/nll``, ``val/nll`` and ``test/nll`` (nats per sample). Checkpoints carry the
    flow's class and arguments (``"lgm_flow"``) so that `lgm.flow.load` rebuilds the model alone.

    Args:
        flow: the model, e.g. ``lgm.flow.NiceFlow(...)``; in a YAML config a ``class_path`` /
            ``init_args`` pair.
        lr: Adam learning rate.
        weight_decay: Adam's L2 penalty (0 by default: it hurts scale parameters).
    """

    def __init__(self, flow: Flow, lr: float = 1e-3, weight_decay: float = 0.0) -> None:
        super().__init__()
        self.flow = flow
        self.save_hyperparameters(ignore=["flow"])

    def _nll(self, batch: Tensor) -> Tensor:
        return -self.flow.log_prob(batch)

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        loss = self._nll(batch).mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"the training loss became {loss.item()} at step {self.global_step}. Usual fixes: a smaller "
                "--model.lr, a bounded scale function (scale: softplus or sigmoid), or gradient clipping "
                "(--trainer.gradient_clip_val 1.0)"
            )
        self.log("train/nll", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        self.log("val/nll", self._nll(batch).mean(), prog_bar=True)

    def test_step(self, batch: Tensor, batch_idx: int) -> None:
        self.log("test/nll", self._nll(batch).mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["lgm_flow"] = flow_spec(self.flow)
