"""The Lightning module that trains any `lgm.flow.Flow` by maximum likelihood."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import lightning as L
import torch
from torch import Tensor
from torchmetrics import MeanMetric

from lgm.flow.base import DataInitialized, Flow
from lgm.flow.io import check_compatible, check_readable, flow_spec, load
from lgm.flow.precision import resolve_precision
from lgm.train.guard import TrainingDiverged, describe_nonfinite
from lgm.train.optim import OPTIMIZERS, SCHEDULES, lr_factor, make_optimizer, parameter_groups
from lgm.utils.hardware import machine_summary

Batch = Tensor | tuple[Tensor, Tensor]


# Trainer precisions that act on the whole model (autocast, or half-precision weights).
WHOLE_MODEL_PRECISIONS = ("16-mixed", "bf16-mixed", "16-true", "bf16-true")  # as Trainer.precision names them


def check_trainer_precision(precision: str) -> None:
    """Refuse a trainer precision for the whole model, naming the flow's own switch."""
    if precision in WHOLE_MODEL_PRECISIONS:
        raise ValueError(
            f"trainer precision {precision!r} is not for flows: a flow keeps its own maps, log-determinants and "
            "priors in float32 and runs its networks at --model.network_precision; keep the trainer at 32 and "
            "use --model.network_precision bf16-mixed (or auto)"
        )


class FlowModule(L.LightningModule):
    """Maximum-likelihood training of a flow, with the switches that keep it stable.

    For continuous data (2-D toys) the loss is the negative log-likelihood in nats, logged as
    ``{train,val,test}/nll``; for images (flows with ``n_bits``) it is bits/dim of the discrete
    images (`lgm.flow.Flow.bits_per_dim`), logged as ``{train,val,test}/bpd``. Validation and test
    values are exact means over every sample, also across data-parallel ranks. The validation value
    is also logged as ``val/loss``, which checkpointing monitors.

    **Non-finite steps are skipped.** When the loss or any gradient is NaN/Inf, the gradients are
    dropped before the optimiser sees them (the weights and the optimiser state stay as they were),
    and ``train/skipped_steps`` counts it. After ``max_bad_steps`` such steps in a row, training stops
    with `lgm.train.guard.TrainingDiverged`, naming the step, the first layer whose output went
    non-finite and the usual fixes. Under DDP every rank takes the same decision.

    **Randomness is a function of the step.** Each training step seeds its own random stream from
    ``(seed, epoch, batch index, rank)`` (dequantisation, padding noise), and each validation/test
    batch from its position in the data set, so a run resumed from a mid-epoch checkpoint repeats
    exactly what the uninterrupted run would have done, and validation numbers of different epochs
    see the same noise.

    Checkpoints carry the flow's class and arguments (``"lgm_flow"``) so that `lgm.flow.load`
    rebuilds the model alone; a checkpoint with non-finite weights is refused.

    Args:
        flow: the model, e.g. ``lgm.flow.NiceFlow(...)``; in a YAML config a ``class_path`` /
            ``init_args`` pair.
        lr: peak learning rate.
        optimizer: ``"adam"``, ``"adamw"`` (decoupled weight decay) or ``"adamax"`` (openai/glow's choice).
        betas: the optimiser's moment decays.
        weight_decay: weight decay (an L2 penalty for Adam/Adamax, decoupled for AdamW). It applies to
            the linear and convolution layers of the coupling networks only, unless ``decay_scales``.
        decay_scales: also decay the flow's own parameters (scales, actnorm, 1x1 convolutions, priors).
            Off by default: decay pulls NICE's scales to 1 and hurts the likelihood.
        warmup_steps: linear learning-rate warmup from 0, in optimiser steps.
        warmup_epochs: the same in epochs (openai/glow warms up over 10); exclusive with ``warmup_steps``.
        schedule: after warmup, ``"constant"`` or ``"cosine"`` decay to ``min_lr`` at the last step
            (needs ``schedule_steps``, or the trainer's ``max_epochs`` or ``max_steps``).
        min_lr: the learning rate the cosine schedule ends at.
        schedule_steps: the schedule's length in optimiser steps (default: from the trainer's
            ``max_steps`` / ``max_epochs``).
        decay_steps: with the cosine schedule, decay over the last ``decay_steps`` optimiser steps only,
            at the peak rate before them (warmup, stable, decay); default: decay over every step after
            warmup.
        max_bad_steps: non-finite steps in a row before training stops.
        seed: seed of the per-step random streams.
        dequant_samples: dequantisation samples per image for validation and test bits/dim
            (K > 1 gives the importance-weighted bound papers report; training always uses 1).
        init_samples: training samples used to initialise data-dependent layers (normalisation,
            actnorm) before the first step.
        gradient_checkpointing: recompute the coupling networks' activations in the backward pass
            instead of storing them (less memory for deep Glows, about a third more compute).
        compile: compile the coupling networks with ``torch.compile`` (slow first steps, faster after).
        network_precision: ``"32"``, ``"bf16-mixed"`` (the networks in bfloat16, the flow's maps,
            log-dets, priors and losses in float32; see `lgm.flow.precision`) or ``"auto"`` (bf16-mixed
            where the device has bf16 matrix units), in place of the trainer's ``precision`` (refused: it
            acts on the whole model). The precision used and the machine (CPU model and flags) are
            logged with the run's hyperparameters.
        start_from: a model file or checkpoint of a trained flow whose weights a new run starts from
            (`lgm.flow.Flow.start_from`: fine-tuning, or distilling a `lgm.flow.FlowMatching` into a
            `lgm.flow.MeanFlow`); a resumed run keeps its own.
    """

    def __init__(
        self,
        flow: Flow,
        lr: float = 1e-3,
        optimizer: str = "adam",
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        decay_scales: bool = False,
        warmup_steps: int = 0,
        warmup_epochs: float = 0.0,
        schedule: str = "constant",
        min_lr: float = 0.0,
        schedule_steps: int | None = None,
        decay_steps: int | None = None,
        max_bad_steps: int = 10,
        seed: int = 0,
        dequant_samples: int = 1,
        init_samples: int = 1024,
        gradient_checkpointing: bool = False,
        compile: bool = False,
        network_precision: str = "32",
        start_from: str | None = None,
    ) -> None:
        super().__init__()
        flow_spec(flow)  # fail now, not at the first checkpoint, if the flow cannot be saved
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {sorted(OPTIMIZERS)}")
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; choose one of {list(SCHEDULES)}")
        if warmup_steps and warmup_epochs:
            raise ValueError("give warmup_steps or warmup_epochs, not both")
        resolve_precision(network_precision)  # refuse an unknown name now, not at the first step
        if lr <= 0 or not 0 <= min_lr <= lr:
            raise ValueError(
                f"need lr > 0 and 0 <= min_lr <= lr, got lr={lr}, min_lr={min_lr}; e.g. lr=1e-3 (--model.lr 1e-3)"
            )
        if (
            warmup_steps < 0
            or warmup_epochs < 0
            or max_bad_steps < 1
            or (schedule_steps is not None and schedule_steps < 1)
            or (decay_steps is not None and decay_steps < 1)
        ):
            raise ValueError(
                "warmup_steps and warmup_epochs must be >= 0, max_bad_steps, schedule_steps and decay_steps >= 1"
            )
        if decay_steps is not None and schedule != "cosine":
            raise ValueError(f"decay_steps needs the cosine schedule (--model.schedule cosine), got {schedule!r}")
        self.flow = flow
        # Plain attributes, not save_hyperparameters(): Lightning's CLI would let hyperparameters saved in
        # a checkpoint override the command line (e.g. --model.dequant_samples for a test). The run's
        # config.yaml records them instead.
        self.lr, self.optimizer_name, self.betas = lr, optimizer, tuple(betas)
        self.weight_decay, self.decay_scales = weight_decay, decay_scales
        self.warmup_steps, self.warmup_epochs, self.schedule, self.min_lr = (
            warmup_steps,
            warmup_epochs,
            schedule,
            min_lr,
        )
        self.schedule_steps, self.decay_steps = schedule_steps, decay_steps
        self.max_bad_steps, self.seed = max_bad_steps, seed
        self.dequant_samples, self.init_samples = dequant_samples, init_samples
        self.gradient_checkpointing, self.compile_nets = gradient_checkpointing, compile
        self.network_precision = network_precision
        if start_from is not None:
            check_readable(start_from)  # fail now, not after the data are loaded
        self.start_from = start_from
        self._started_from = False
        self.val_mean, self.test_mean = MeanMetric(), MeanMetric()
        self.bad_in_a_row = self.skipped_steps = 0
        self._last_loss: Tensor | None = None
        self._last_batch: tuple[Batch, int] | None = None

    @property
    def metric(self) -> str:
        """The likelihood's name in logs: ``nll`` (nats, continuous data) or ``bpd`` (images)."""
        return "nll" if self.flow.n_bits is None else "bpd"

    @property
    def objective_name(self) -> str:
        """The training loss's name in logs: the likelihood's (``nll``, ``bpd``) or the family's own (``fm``)."""
        objective = self.flow.capabilities.objective
        return self.metric if objective == "likelihood" else objective

    @property
    def validates_likelihood(self) -> bool:
        """Validation measures the likelihood where it is exact (as cheap as a training step), else the objective."""
        return self.flow.capabilities.exact_likelihood

    # -- the loss ---------------------------------------------------------------------------------

    def _loss(self, batch: Batch, dequant_samples: int = 1) -> Tensor:
        """Per-sample negative likelihood ``[B]`` in float32: nats for continuous data, bits/dim for images."""
        x, labels = self._split(batch)
        if self.flow.n_bits is None:
            return -self.flow.log_prob(x, labels).float()
        return self.flow.bits_per_dim(x, labels, dequant_samples=dequant_samples).float()

    def _objective(self, batch: Batch) -> Tensor:
        """Per-sample training loss ``[B]`` in float32 (the likelihood's, unless the flow trains on another)."""
        x, labels = self._split(batch)
        return self.flow.objective(x, labels).float()

    def _split(self, batch: Batch) -> tuple[Tensor, Tensor | None]:
        """``(data, labels)``; labels only for class-conditional flows."""
        x, labels = (batch[0], batch[1]) if isinstance(batch, (tuple, list)) else (batch, None)
        return x, labels if self.flow.n_classes else None

    @contextmanager
    def _random_stream(self, *position: int) -> Iterator[None]:
        """Seed the global random state from ``(seed, *position)`` inside, restore it after."""
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            seed = self.seed
            for p in position:
                seed = (seed * 1_000_003 + p) % 2**61
            torch.manual_seed(seed)
            yield

    # -- steps ------------------------------------------------------------------------------------

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        with self._random_stream(0, self.current_epoch, batch_idx, self.global_rank):
            loss = self._objective(batch).mean()
        self._last_loss, self._last_batch = loss.detach(), (batch, batch_idx)
        if torch.isfinite(loss):
            self.log(f"train/{self.objective_name}", loss, prog_bar=True)
        # A non-finite loss is still returned: under DDP every rank must run backward, and its
        # non-finite gradients are caught in on_before_optimizer_step on every rank alike.
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Drop the gradients of a non-finite step (so the optimiser leaves weights and state alone)."""
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=self.device)
        bad = ~torch.isfinite(grad_norm)
        if self._last_loss is not None:
            bad |= ~torch.isfinite(self._last_loss)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            bad = bad.float()
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
        if not bool(bad):
            self.bad_in_a_row = 0
            self.log("train/grad_norm", grad_norm)
            return
        for p in self.parameters():
            p.grad = None
        self.bad_in_a_row += 1
        self.skipped_steps += 1
        self.log("train/skipped_steps", float(self.skipped_steps))
        if self.bad_in_a_row >= self.max_bad_steps:
            raise TrainingDiverged(self._divergence_report(), step=self.global_step)

    def _divergence_report(self) -> str:
        where = "unknown"
        if self._last_batch is not None:
            batch, batch_idx = self._last_batch
            with torch.no_grad(), self._random_stream(0, self.current_epoch, batch_idx, self.global_rank):
                where = describe_nonfinite(self.flow, lambda: self._objective(batch))
        return (
            f"training diverged: {self.bad_in_a_row} steps in a row had a non-finite loss or gradient "
            f"(the last at step {self.global_step}, epoch {self.current_epoch}, batch "
            f"{self._last_batch[1] if self._last_batch else '?'}); "
            f"{where}. The weights were left at the last finite step. Usual fixes: a smaller --model.lr, "
            "a learning-rate warmup (--model.warmup_steps 500), a bounded scale map "
            "(--model.flow.init_args.scale sigmoid), gradient clipping (--trainer.gradient_clip_val 50)"
        )

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self.val_mean.update(self._evaluation_loss(batch, batch_idx, likelihood=self.validates_likelihood))

    def on_validation_epoch_end(self) -> None:
        value = self.val_mean.compute()  # synced across ranks
        self.val_mean.reset()
        name = self.metric if self.validates_likelihood else self.objective_name
        self.log(f"val/{name}", value, prog_bar=True)
        self.log("val/loss", value)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self.test_mean.update(self._evaluation_loss(batch, batch_idx))

    def on_test_epoch_end(self) -> None:
        value = self.test_mean.compute()
        self.test_mean.reset()
        self.log(f"test/{self.metric}", value)

    def _evaluation_loss(self, batch: Batch, batch_idx: int, likelihood: bool = True) -> Tensor:
        # Data-parallel rank r evaluates batches r, r + W, ... (`lgm.data.InMemoryBatches`): seed by the
        # batch's position in the whole set, so the numbers do not depend on the number of ranks.
        position = batch_idx * self.trainer.world_size + self.global_rank
        with self._random_stream(1, position):
            return self._loss(batch, self.dequant_samples) if likelihood else self._objective(batch)

    # -- optimisation -----------------------------------------------------------------------------

    def configure_optimizers(self) -> dict:
        groups = parameter_groups(self.flow, self.weight_decay, self.decay_scales)
        optimizer = make_optimizer(self.optimizer_name, groups, self.lr, self.betas)
        warmup, total = self.warmup_steps, math.inf
        if self.warmup_epochs or self.schedule == "cosine":
            per_epoch, total = self._schedule_lengths()
            warmup = warmup or round(self.warmup_epochs * per_epoch)
            if self.schedule == "cosine" and not math.isfinite(total):
                raise ValueError(
                    "the cosine schedule needs a known length: set --model.schedule_steps, "
                    "--trainer.max_epochs or --trainer.max_steps"
                )

        def factor(step: int) -> float:
            return lr_factor(step, warmup, self.schedule, total, self.min_lr / self.lr, self.decay_steps)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _schedule_lengths(self) -> tuple[int, float]:
        """``(optimiser steps per epoch, total optimiser steps)``, counted on the data module's loader.

        Not ``Trainer.estimated_stepping_batches``: it builds the fit loop's training loader before a
        checkpoint is restored, and that loader then never gets its mid-epoch position back.
        """
        trainer = self.trainer
        if trainer.datamodule is None:
            raise ValueError(
                "warmup_epochs and the cosine schedule need a data module (trainer.fit(module, datamodule=...))"
            )
        batches = len(trainer.datamodule.train_dataloader())
        limit = trainer.limit_train_batches
        batches = min(batches, limit) if isinstance(limit, int) else int(batches * limit)
        per_epoch = max(1, math.ceil(batches / trainer.accumulate_grad_batches))
        total = math.inf if trainer.max_epochs in (None, -1) else per_epoch * trainer.max_epochs
        if trainer.max_steps != -1:
            total = min(total, trainer.max_steps)
        return per_epoch, self.schedule_steps or total

    # -- set-up, initialisation, checkpoints ------------------------------------------------------

    def setup(self, stage: str) -> None:
        self.check_data(self._trainer.datamodule if self._trainer is not None else None)
        self.flow.configure_networks(self.gradient_checkpointing, self.compile_nets)
        if self._trainer is None:
            self.flow.use_network_precision(self.network_precision)
            return
        check_trainer_precision(str(self._trainer.precision))
        device = self._trainer.strategy.root_device
        precision = resolve_precision(self.network_precision, device)
        self.flow.use_network_precision(precision)
        for logger in self._trainer.loggers:
            logger.log_hyperparams({"network_precision": precision, "machine": machine_summary(device)})

    def check_data(self, data: L.LightningDataModule | None) -> None:
        """Raise a `ValueError` naming the fix if ``data`` (when it tells its shape and classes) does
        not fit the flow."""
        shape = getattr(data, "shape", None)
        if shape is not None and tuple(shape) != tuple(self.flow.shape):
            raise ValueError(
                f"the model takes data of shape {list(self.flow.shape)}, but the data module gives {list(shape)}: "
                f"set the flow's shape to the data's (--model.flow.init_args.shape '{list(shape)}') or "
                "choose other data"
            )
        if self.flow.n_classes and data is not None:
            n_classes = getattr(data, "n_classes", None)
            if not n_classes or n_classes > self.flow.n_classes:
                has = f"{n_classes} classes" if n_classes else "no labels"
                raise ValueError(
                    f"the model is class-conditional with {self.flow.n_classes} classes, but the data has {has}: "
                    "set --model.flow.init_args.n_classes to the data's number of classes (or drop it for an "
                    "unconditional model)"
                )

    def on_fit_start(self) -> None:
        self.initialize_flow()

    def initialize_flow(self) -> None:
        """Before the first step of a new run, take the weights of ``start_from``; then initialise the
        data-dependent layers from ``init_samples`` training samples (once: a no-op when they are already
        set, e.g. after resuming). Under DDP the statistics are global."""
        if self.start_from is not None and not self._started_from and self.trainer.ckpt_path is None:
            self.flow.start_from(load(self.start_from, map_location=self.device))
        self._started_from = True
        layers = [m for m in self.flow.modules() if isinstance(m, DataInitialized)]
        if layers and not all(bool(m.initialized) for m in layers):
            with self._random_stream(2, self.global_rank):
                self.flow.initialize(*self._initialization_batch())

    def _initialization_batch(self) -> tuple[Tensor, Tensor | None]:
        """``init_samples`` training samples as training feeds the density (`Flow.training_input`) and their
        labels, on the model's device."""
        if self.trainer.datamodule is None:
            raise RuntimeError(
                "this flow has data-dependent layers: train it with a data module (trainer.fit(module, "
                "datamodule=...)) "
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
        return self.flow.training_input(x), labels

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        states = [checkpoint["state_dict"], checkpoint.get("current_model_state", {})]  # the latter with EMA
        bad = [
            name
            for state in states
            for name, t in state.items()
            if t.is_floating_point() and not torch.isfinite(t).all()
        ]
        if bad:
            raise TrainingDiverged(
                "refusing to write a checkpoint with non-finite weights "
                f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); "
                "the previous checkpoint is intact. Lower --model.lr or clip gradients (--trainer.gradient_clip_val)"
            )
        checkpoint["lgm_flow"] = flow_spec(self.flow)
        checkpoint["lgm_guard"] = {"bad_in_a_row": self.bad_in_a_row, "skipped_steps": self.skipped_steps}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        check_compatible(checkpoint.get("lgm_flow"), self.flow, "the checkpoint")
        guard = checkpoint.get("lgm_guard", {})
        self.bad_in_a_row, self.skipped_steps = guard.get("bad_in_a_row", 0), guard.get("skipped_steps", 0)
