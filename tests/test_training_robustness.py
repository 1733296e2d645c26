"""Training that holds: optimiser switches, the NaN guard, EMA, mixed precision, gradient
checkpointing, compile, checkpoint checks, exact resume after SIGKILL, and DDP on CPU."""

from __future__ import annotations

import json
import math
import re

import lightning as L
import pytest
import torch
from helpers import IMAGE_RUN, SteppingClock, run_cli
from lightning.pytorch.callbacks import ModelCheckpoint

from lgm.cli import main
from lgm.data import ImageDataModule, ToyDataModule, toy
from lgm.flow import Glow, NiceFlow, load
from lgm.flow.coupling import ImageCoupling
from lgm.flow.layers import ActNorm, InvConv1x1
from lgm.train import FlowEMA, FlowModule, TrainingDiverged
from lgm.train.checkpoint_io import AtomicCheckpointIO
from lgm.train.ema import ema_with_warmup
from lgm.train.optim import OPTIMIZERS, lr_factor, make_optimizer, parameter_groups


def quiet_trainer(tmp_path, **kwargs) -> L.Trainer:
    args = dict(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        use_distributed_sampler=False,
    )
    return L.Trainer(**{**args, **kwargs})


def tiny_glow(**overrides) -> Glow:
    return Glow(**{"shape": (1, 8, 8), "levels": 2, "flow_steps": 2, "width": 16, **overrides})


# -- optimisation switches --------------------------------------------------------------------------


def test_warmup_then_cosine_schedule():
    assert lr_factor(0, 4, "cosine", 14) == pytest.approx(0.25)
    assert lr_factor(3, 4, "cosine", 14) == pytest.approx(1.0)
    assert lr_factor(9, 4, "cosine", 14) == pytest.approx(0.5)  # half way through the decay
    assert lr_factor(14, 4, "cosine", 14, final_fraction=0.1) == pytest.approx(0.1)
    assert lr_factor(100, 4, "constant", math.inf) == 1.0


def test_cosine_decay_over_the_last_steps_only():
    assert lr_factor(0, 2, "cosine", 20, decay=6) == pytest.approx(0.5)  # warmup as before
    assert lr_factor(14, 2, "cosine", 20, decay=6) == 1.0  # stable until the decay starts
    assert lr_factor(17, 2, "cosine", 20, decay=6) == pytest.approx(0.5)  # half way through the decay
    assert lr_factor(20, 2, "cosine", 20, final_fraction=0.1, decay=6) == pytest.approx(0.1)
    assert lr_factor(9, 4, "cosine", 14, decay=100) == lr_factor(9, 4, "cosine", 14)  # longer than the run


def test_weight_decay_spares_the_flow_s_own_parameters():
    nice = NiceFlow.toy()
    decayed, spared = parameter_groups(nice, 1e-4)
    assert decayed["weight_decay"] == 1e-4 and spared["weight_decay"] == 0.0
    assert any(p is nice.scaling.h for p in spared["params"]) and not any(
        p is nice.scaling.h for p in decayed["params"]
    )
    assert len(decayed["params"]) == 4 * 4 * 2  # 4 couplings x 4 linear layers x (weight, bias)

    glow = tiny_glow()
    decayed, spared = parameter_groups(glow, 1e-4)
    own = [p for m in glow.modules() if isinstance(m, (ActNorm, InvConv1x1)) for p in m.parameters(recurse=False)]
    assert own and all(any(p is q for q in spared["params"]) for p in own)
    assert len(decayed["params"]) + len(spared["params"]) == len(list(glow.parameters()))
    (everything,) = parameter_groups(glow, 1e-4, decay_scales=True)
    assert len(everything["params"]) == len(list(glow.parameters()))


@pytest.mark.parametrize("name", ["adam", "adamw", "adamax"])
def test_optimizer_and_schedule_switches(tmp_path, name):
    module = FlowModule(
        NiceFlow.toy(width=8),
        lr=1e-2,
        optimizer=name,
        weight_decay=1e-3,
        warmup_steps=3,
        schedule="cosine",
        min_lr=1e-3,
    )
    data = ToyDataModule(n_train=512, n_val=64, n_test=64, batch_size=64)
    trainer = quiet_trainer(tmp_path, max_steps=10, limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    optimizer = trainer.optimizers[0]
    assert type(optimizer).__name__.lower() == name
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-2 * lr_factor(10, 3, "cosine", 10, 0.1))
    assert optimizer.defaults["fused" if name != "adamax" else "foreach"]  # the one-pass implementation


@pytest.mark.parametrize("name", ["adam", "adamw", "adamax"])
def test_fast_optimizers_make_the_plain_update(name):
    torch.manual_seed(0)
    fast_w = torch.nn.Parameter(torch.randn(40, 30))
    plain_w = torch.nn.Parameter(fast_w.detach().clone())
    start = fast_w.detach().clone()
    fast = make_optimizer(name, [{"params": [fast_w], "weight_decay": 1e-2}], lr=1e-2)
    plain = OPTIMIZERS[name]([{"params": [plain_w], "weight_decay": 1e-2}], lr=1e-2, foreach=False)
    for _ in range(20):
        for w, optimizer in ((fast_w, fast), (plain_w, plain)):
            optimizer.zero_grad()
            (w**3).sum().backward()
            optimizer.step()
    torch.testing.assert_close(fast_w, plain_w, rtol=1e-5, atol=1e-5)
    assert (fast_w - start).abs().max() > 0.1  # the weights did move


def test_bad_switches_are_refused():
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'"):
        FlowModule(NiceFlow.toy(), optimizer="sgd")
    with pytest.raises(ValueError, match="warmup_steps or warmup_epochs, not both"):
        FlowModule(NiceFlow.toy(), warmup_steps=10, warmup_epochs=1)
    with pytest.raises(ValueError, match="unknown schedule"):
        FlowModule(NiceFlow.toy(), schedule="linear")
    with pytest.raises(ValueError, match="decay_steps needs the cosine schedule"):
        FlowModule(NiceFlow.toy(), decay_steps=100)
    with pytest.raises(ValueError, match="decay_steps >= 1"):
        FlowModule(NiceFlow.toy(), schedule="cosine", decay_steps=0)


# -- the NaN guard ----------------------------------------------------------------------------------


class PoisonedToy(ToyDataModule):
    """The banana with one outlier at 1e30, whose log-density overflows: one bad batch per epoch.
    (NaN in the data is refused outright by the flow's input check, with its own message.)"""

    def setup(self, stage=None):
        super().setup(stage)
        self.train_data[17] = 1e30


class StepRecorder(L.Callback):
    """Records, per step, whether the loss was finite and whether weights/optimiser state changed."""

    def __init__(self):
        self.steps = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.before = [p.detach().clone() for p in module.parameters()]
        state = trainer.optimizers[0].state
        self.moments = [state[p]["exp_avg"].clone() if p in state else None for p in module.parameters()]

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        same_weights = all(torch.equal(a, p) for a, p in zip(self.before, module.parameters()))
        state = trainer.optimizers[0].state
        same_moments = all(
            m is None or torch.equal(m, state[p]["exp_avg"]) for m, p in zip(self.moments, module.parameters())
        )
        self.steps.append((bool(torch.isfinite(module._last_loss)), same_weights, same_moments))


def test_a_non_finite_batch_is_skipped_and_leaves_weights_and_optimiser_alone(tmp_path):
    recorder = StepRecorder()
    module = FlowModule(NiceFlow.toy(width=8), lr=1e-3)
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_val_batches=0, callbacks=[recorder])
    trainer.fit(module, datamodule=PoisonedToy(n_train=1024, n_val=64, n_test=64, batch_size=128))
    bad = [s for s in recorder.steps if not s[0]]
    assert len(recorder.steps) == 8 and len(bad) == 1
    assert bad[0][1:] == (True, True)  # weights and Adam's moments untouched by the bad step
    assert all(not same for finite, same, _ in recorder.steps if finite)  # every good step trained
    assert module.skipped_steps == 1 and module.bad_in_a_row == 0
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_steps_that_keep_failing_stop_training_with_a_clear_message(tmp_path):
    flow = NiceFlow.toy(width=8)
    with torch.no_grad():
        flow.scaling.h.fill_(1e5)  # exp(1e5) = inf: every forward pass overflows in the scaling layer
    start = {k: v.clone() for k, v in flow.state_dict().items()}
    module = FlowModule(flow, max_bad_steps=3)
    trainer = quiet_trainer(tmp_path, max_steps=20, limit_val_batches=0)
    with pytest.raises(TrainingDiverged) as error:
        trainer.fit(module, datamodule=ToyDataModule(n_train=1024, n_val=64, n_test=64, batch_size=128))
    message = str(error.value)
    assert "3 steps in a row" in message and "step 2" in message and error.value.step == 2
    assert (
        "DiagonalScaling" in message
        and "--model.lr" in message
        and "sigmoid" in message
        and "gradient_clip_val" in message
    )
    assert all(torch.equal(start[k], v) for k, v in flow.state_dict().items())


def test_a_checkpoint_with_non_finite_weights_is_refused():
    module = FlowModule(NiceFlow.toy(width=8))
    state = {"state_dict": {k: v.clone() for k, v in module.state_dict().items()}}
    state["state_dict"]["flow.transform.transforms.5.h"][0] = float("nan")
    with pytest.raises(
        TrainingDiverged, match="refusing to write a checkpoint with non-finite weights.*transforms.5.h"
    ):
        module.on_save_checkpoint(state)


# -- EMA ----------------------------------------------------------------------------------------------


def test_ema_decay_warms_up_so_the_start_is_forgotten():
    avg_fn = ema_with_warmup(0.999)
    averaged, current = torch.zeros(3), torch.ones(3)
    for n in range(1, 200):
        averaged = avg_fn(averaged, current, torch.tensor(n))
    assert averaged.min() > 0.99  # a plain 0.999 decay would still hold 0.999**199 = 82% of the start
    assert torch.allclose(avg_fn(torch.zeros(1), torch.ones(1), torch.tensor(10**6)), torch.tensor([0.001]))
    assert avg_fn(torch.tensor(True), torch.tensor(True), torch.tensor(3)).item() == 1  # flags survive


def test_ema_is_on_for_images_and_is_what_checkpoints_and_validation_see(tmp_path):
    ema = FlowEMA(decay=0.9)
    saver = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=6, save_top_k=0, save_last=True)
    module = FlowModule(tiny_glow(), lr=1e-2, init_samples=256)
    trainer = L.Trainer(
        max_steps=6,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[ema, saver],
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=ImageDataModule("digits", batch_size=100))
    assert ema.active and int(ema._average_model.n_averaged) == 7  # the initialised model + 6 steps
    average = ema.average_flow.state_dict()
    assert all(
        torch.equal(average[k], v) for k, v in module.flow.state_dict().items()
    )  # the module ends as the average
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=True)  # written at step 6, during training
    assert all(torch.equal(average[k], v) for k, v in load(tmp_path / "last.ckpt").state_dict().items())
    raw = checkpoint["current_model_state"]
    assert any(not torch.equal(raw[k], v) for k, v in checkpoint["state_dict"].items())

    toy_ema = FlowEMA()
    toy_trainer = quiet_trainer(tmp_path, max_steps=2, limit_val_batches=0, callbacks=[toy_ema])
    toy_trainer.fit(FlowModule(NiceFlow.toy(width=8)), datamodule=ToyDataModule(n_train=512, n_val=64, n_test=64))
    assert not toy_ema.active and toy_ema.average_flow is None


# -- precision, memory, speed switches ----------------------------------------------------------------


def test_an_enclosing_autocast_changes_nothing_in_a_flow():
    """The flow's maps and priors switch autocast off, and its networks run at the flow's own precision."""
    torch.manual_seed(0)
    flow = tiny_glow(learned_prior=True)
    x = torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8)
    flow.initialize(torch.rand(64, 1, 8, 8))
    torch.manual_seed(1)
    full = flow.bits_per_dim(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(1)
        assert torch.equal(flow.bits_per_dim(x), full)


def test_bf16_network_training_on_cpu(tmp_path):
    module = FlowModule(tiny_glow(), lr=1e-3, init_samples=256, network_precision="bf16-mixed")
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=4, limit_val_batches=2)
    trainer.fit(module, datamodule=ImageDataModule("digits", batch_size=100))
    assert module.flow.network_precision == "bf16-mixed"
    assert math.isfinite(trainer.callback_metrics["val/bpd"].item()) and module.skipped_steps == 0


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        module = FlowModule(tiny_glow(seed=3), gradient_checkpointing=checkpointing)
        module.flow.initialize(torch.rand(64, 1, 8, 8))
        module.setup("fit")
        net_calls = []
        next(m for m in module.flow.modules() if isinstance(m, ImageCoupling)).net.register_forward_pre_hook(
            lambda *_: net_calls.append(1)
        )
        torch.manual_seed(1)
        module._loss(torch.randint(0, 256, (8, 1, 8, 8), dtype=torch.uint8)).mean().backward()
        grads.append([p.grad.clone() for p in module.parameters()])
        assert len(net_calls) == (2 if checkpointing else 1)  # recomputed in the backward pass
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))


def test_compiled_networks_give_the_same_loss():
    losses = []
    x = toy.banana(64, seed=0)
    for compiled in (False, True):
        torch.manual_seed(0)
        module = FlowModule(NiceFlow.toy(width=8), compile=compiled)
        module.setup("fit")
        losses.append(module._loss(x))
    assert torch.allclose(*losses, atol=1e-5)


# -- checkpoints on the command line --------------------------------------------------------------------


def test_a_truncated_or_incompatible_checkpoint_is_refused_clearly(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main(["fit", *IMAGE_RUN, "--trainer.max_epochs", "1"])
    (run,) = (tmp_path / "runs" / "lgm").iterdir()
    last = run / "checkpoints" / "last.ckpt"
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(last.read_bytes()[:5000])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *IMAGE_RUN, "--ckpt_path", str(cut)])
    assert exit_info.value.code == 2 and "not a complete PyTorch file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *IMAGE_RUN, "--model.flow.init_args.width", "8", "--ckpt_path", str(last)])
    assert exit_info.value.code == 2
    assert re.search(r"differs .* in \['width'\]", capsys.readouterr().err.splitlines()[-1])


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    writer, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    writer.save_checkpoint({"step": torch.tensor(1)}, path)

    def interrupted_save(payload, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # the process dies mid-write

    monkeypatch.setattr(torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        writer.save_checkpoint({"step": torch.tensor(2)}, path)
    monkeypatch.undo()
    assert int(torch.load(path, weights_only=True)["step"]) == 1 and list(tmp_path.iterdir()) == [path]


# -- data parallelism on CPU (2 processes, gloo) -----------------------------------------------------


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_keeps_ranks_identical_and_reduces_bits_per_dim_exactly(tmp_path):
    probe = json.dumps({"class_path": "training_probes.SaveRankState", "init_args": {"folder": str(tmp_path)}})
    ddp = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]
    run_cli(["fit", *IMAGE_RUN, "--trainer.max_epochs", "1", *ddp, f"--trainer.callbacks+={probe}"], tmp_path)
    for when in ("start", "end"):
        rank0, rank1 = (torch.load(tmp_path / f"rank{r}_{when}.pt", weights_only=True) for r in (0, 1))
        assert all(torch.equal(rank0[k], rank1[k]) for k in rank0), when
    start = torch.load(tmp_path / "rank0_start.pt", weights_only=True)
    assert all(bool(v) for k, v in start.items() if k.endswith("initialized"))
    (run,) = (tmp_path / "runs" / "lgm").iterdir()
    last = str(run / "checkpoints" / "last.ckpt")
    reports = {}
    for name, extra in (("one", []), ("two", ddp)):
        out = tmp_path / f"{name}.json"
        report = json.dumps({"class_path": "training_probes.SaveMetrics", "init_args": {"path": str(out)}})
        run_cli(["validate", *IMAGE_RUN, *extra, "--ckpt_path", last, f"--trainer.callbacks+={report}"], tmp_path)
        reports[name] = json.loads(out.read_text())["val/bpd"]
    assert reports["one"] == pytest.approx(reports["two"], abs=1e-5)


def test_snapshots_keep_checkpoints_at_training_time_marks_and_resume_their_clock(tmp_path, monkeypatch):
    from lgm.flow import load
    from lgm.train import callbacks

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(callbacks, "time", SteppingClock())
    main(["fit", *IMAGE_RUN, "--trainer.max_epochs", "1", "--snapshots.minutes", "[3, 1, 1000]"])
    (run,) = (tmp_path / "runs" / "lgm").iterdir()
    folder = run / "checkpoints"
    assert not (folder / "snapshot-1000min.ckpt").exists()
    first, second = (torch.load(folder / f"snapshot-{m}min.ckpt", weights_only=False) for m in (1, 3))
    assert 0 < first["global_step"] < second["global_step"]
    assert first["callbacks"]["TrainingTimeSnapshots"]["saved"] == [1]
    assert 180 - 1 <= second["callbacks"]["TrainingTimeSnapshots"]["elapsed_s"] < 180 + 3 * 20
    assert load(folder / "snapshot-3min.ckpt").shape == (1, 8, 8)

    # Resumed from the 3-minute snapshot (in the same run folder), the clock goes on from there: no
    # mark is taken twice.
    written = {m: (folder / f"snapshot-{m}min.ckpt").stat().st_mtime_ns for m in (1, 3)}
    main(
        [
            "fit",
            *IMAGE_RUN,
            "--trainer.max_epochs",
            "2",
            "--snapshots.minutes",
            "[1, 3, 6, 1000]",
            "--ckpt_path",
            str(folder / "snapshot-3min.ckpt"),
        ]
    )
    assert list((tmp_path / "runs" / "lgm").iterdir()) == [run]
    assert (folder / "snapshot-6min.ckpt").is_file()
    assert {m: (folder / f"snapshot-{m}min.ckpt").stat().st_mtime_ns for m in (1, 3)} == written
    state = torch.load(folder / "last.ckpt", weights_only=False)["callbacks"]["TrainingTimeSnapshots"]
    assert state["saved"] == [1, 3, 6] and state["elapsed_s"] > 360 - 1


def test_snapshots_follow_the_trainers_timer_and_refuse_bad_marks():
    from types import SimpleNamespace

    from lightning.pytorch.callbacks import Timer

    from lgm.train.callbacks import TrainingTimeSnapshots

    timer = Timer(duration="00:01:00:00")
    timer.time_elapsed = lambda stage: 1234.0
    assert TrainingTimeSnapshots([30])._elapsed(SimpleNamespace(callbacks=[timer])) == 1234.0
    with pytest.raises(ValueError, match="positive minutes"):
        TrainingTimeSnapshots([60, 0])
