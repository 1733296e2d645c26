"""Training: NICE learns the banana; the CLI writes logs, checkpoints, figures; runs resume."""

from __future__ import annotations

import csv
import importlib
import json
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from helpers import SHARED_DATA, needs_shared_data

from lgm.cli import main
from lgm.data import ToyDataModule, toy
from lgm.flow import Glow, NiceFlow, Preprocessing, load, save
from lgm.train import FlowModule
from lgm.train.module import check_trainer_precision


@pytest.mark.slow
def test_short_training_reaches_the_banana_entropy(tmp_path):
    """Test NLL = H(true) + KL(true || model) >= H; the banana's entropy is log(2 pi e * 0.1 * 0.5)."""
    L.seed_everything(0)
    data = ToyDataModule("banana", n_train=20_000, n_val=2_000, n_test=20_000, batch_size=256)
    module = FlowModule(NiceFlow.toy(), lr=2e-3)
    trainer = L.Trainer(
        max_steps=1500,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=data)
    test_nll = trainer.test(module, datamodule=data, verbose=False)[0]["test/nll"]
    entropy = toy.Banana().entropy()
    assert test_nll - entropy < 0.05, (test_nll, entropy)


def test_a_flow_that_cannot_be_saved_is_refused_before_training():
    from lgm.flow import Compose, Flow, StandardGaussian

    with pytest.raises(TypeError, match="records no init_args"):
        FlowModule(Flow(Compose(), StandardGaussian((2,)), shape=(2,)))


TINY = [
    "--trainer.max_epochs",
    "1",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
    "--data.init_args.n_train",
    "2048",
    "--data.init_args.n_val",
    "512",
    "--data.init_args.n_test",
    "512",
    "--data.init_args.batch_size",
    "256",
    "--model.flow.init_args.width",
    "16",
    "--toy_diagnostics.n_kl",
    "2000",
    "--toy_diagnostics.n_samples",
    "500",
]


def run_dir(root):
    (version,) = list((root / "runs" / "lgm").iterdir())
    return version


def test_cli_fit_writes_logs_checkpoints_figures_and_resumes(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main(["fit", *TINY])
    run = run_dir(tmp_path)
    assert (run / "metrics.csv").is_file()
    assert list(run.glob("events.out.tfevents.*")), "no TensorBoard log"
    assert (run / "config.yaml").is_file()
    assert {p.name for p in (run / "figures").iterdir()} == {"density.png", "samples.png"}
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert list((run / "checkpoints").glob("best-*.ckpt"))
    report = json.loads((run / "toy_report.json").read_text())
    assert report["density"] == "banana" and report["kl_true_model"] > 0
    assert "kl_true_model" in capsys.readouterr().out

    last = run / "checkpoints" / "last.ckpt"
    steps_one_epoch = torch.load(last, weights_only=True)["global_step"]
    assert steps_one_epoch == 2048 // 256

    # Resume the same run (same folder via its saved config) for a second epoch.
    main(["fit", "--config", str(run / "config.yaml"), "--trainer.max_epochs", "2", "--ckpt_path", str(last)])
    assert torch.load(last, weights_only=True)["global_step"] == 2 * steps_one_epoch
    with open(run / "metrics.csv") as f:
        epochs = {row["epoch"] for row in csv.DictReader(f) if row["val/nll"]}
    assert epochs == {"0", "1"}, "metrics of the first epoch were lost on resume"

    flow = load(last)
    assert type(flow) is NiceFlow and flow.init_args["width"] == 16
    assert torch.isfinite(flow.log_prob(toy.banana(100))).all()


def test_resuming_from_a_runs_checkpoint_continues_in_its_folder(tmp_path, monkeypatch):
    """``fit --ckpt_path runs/lgm/<v>/checkpoints/last.ckpt`` with the recipe's own flags (not the run's
    saved config) keeps logs, checkpoints and the best-model record in ``<v>``; a checkpoint from
    elsewhere starts a new run folder."""
    monkeypatch.chdir(tmp_path)
    main(["fit", *TINY])
    run = run_dir(tmp_path)
    last = run / "checkpoints" / "last.ckpt"
    steps_one_epoch = torch.load(last, weights_only=True)["global_step"]
    monkeypatch.setattr("lgm.train.setup.datetime", _LaterClock)  # a resume in another second than the first run
    main(["fit", *TINY, "--trainer.max_epochs", "2", "--ckpt_path", str(last.relative_to(tmp_path))])
    assert run_dir(tmp_path) == run, "the resume opened a second run folder"
    assert torch.load(last, weights_only=True)["global_step"] == 2 * steps_one_epoch
    with open(run / "metrics.csv") as f:
        assert {row["epoch"] for row in csv.DictReader(f) if row["val/nll"]} == {"0", "1"}

    elsewhere = tmp_path / "saved" / "model.ckpt"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(last.read_bytes())
    main(["fit", *TINY, "--trainer.max_epochs", "3", "--ckpt_path", str(elsewhere)])
    assert len(list((tmp_path / "runs" / "lgm").iterdir())) == 2


def test_default_root_dir_holds_the_run_and_its_resume(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = ["--trainer.default_root_dir", "elsewhere"]
    main(["fit", *TINY, *root])
    (run,) = (tmp_path / "elsewhere" / "lgm").iterdir()
    for name in ("config.yaml", "metrics.csv", "toy_report.json", "figures/density.png", "checkpoints/last.ckpt"):
        assert (run / name).is_file(), name
    assert [p.name for p in tmp_path.iterdir()] == ["elsewhere"]  # no runs/ or lightning_logs/ beside it
    monkeypatch.setattr("lgm.train.setup.datetime", _LaterClock)
    main(["fit", *TINY, *root, "--trainer.max_epochs", "2", "--ckpt_path", str(run / "checkpoints" / "last.ckpt")])
    assert list((tmp_path / "elsewhere" / "lgm").iterdir()) == [run]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2 * 2048 // 256
    assert {p.name.split("-")[0] for p in (run / "checkpoints").iterdir()} == {"last.ckpt", "best"}


def test_training_on_from_a_run_that_ended_mid_epoch_warns(tmp_path, monkeypatch, capsys):
    """Lightning records a run stopped by max_steps inside an epoch as having finished the epoch: a longer
    run resumed from it starts the next epoch, which the CLI says rather than diverging silently."""
    monkeypatch.chdir(tmp_path)
    main(["fit", *TINY, "--trainer.max_steps", "5"])  # 8 steps per epoch
    last = run_dir(tmp_path) / "checkpoints" / "last.ckpt"
    capsys.readouterr()
    main(["fit", *TINY, "--trainer.max_steps", "5", "--ckpt_path", str(last)])  # finished: trains nothing
    assert "ended mid-epoch" not in capsys.readouterr().err
    main(["fit", *TINY, "--trainer.max_steps", "7", "--ckpt_path", str(last)])
    assert "lgm-flow: warning: " in capsys.readouterr().err


def test_runs_started_in_the_same_second_get_folders_of_their_own(tmp_path, monkeypatch):
    """Run folders are named by the second a run starts; a second run in that second gets ``-2``."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("lgm.train.setup.datetime", _FrozenClock)
    main(["fit", *TINY, "--model.lr", "2e-3"])
    main(["fit", *TINY, "--model.lr", "1e-4"])
    runs = tmp_path / "runs" / "lgm"
    assert sorted(p.name for p in runs.iterdir()) == ["20260101-120000", "20260101-120000-2"]
    for run, lr in (("20260101-120000", 2e-3), ("20260101-120000-2", 1e-4)):
        assert (runs / run / "checkpoints" / "last.ckpt").is_file()
        assert yaml.safe_load((runs / run / "config.yaml").read_text())["model"]["lr"] == lr


class _FrozenClock:
    """``datetime`` whose ``now()`` is always the same second."""

    @staticmethod
    def now():
        from datetime import datetime

        return datetime(2026, 1, 1, 12, 0, 0)


class _LaterClock:
    """``datetime`` whose ``now()`` is a day later, so a new run folder would get a new name."""

    @staticmethod
    def now():
        from datetime import datetime, timedelta

        return datetime.now() + timedelta(days=1)


def test_cli_test_subcommand_reports_test_nll(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main(["fit", *TINY])
    last = run_dir(tmp_path) / "checkpoints" / "last.ckpt"
    main(["test", *TINY, "--ckpt_path", str(last)])
    assert "test/nll" in capsys.readouterr().out


@pytest.mark.slow
def test_console_script_is_installed():
    result = subprocess.run(
        [sys.executable, "-c", "from lgm.cli import main; main()", "fit", "--print_config"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "class_path: lgm.flow.NiceFlow" in result.stdout
    assert "name: banana" in result.stdout


DIGITS = [
    "--data",
    "lgm.data.ImageDataModule",
    "--data.init_args.name",
    "digits",
    "--data.init_args.batch_size",
    "100",
    "--model.flow",
    "lgm.flow.NiceFlow",
    "--model.flow.init_args.shape",
    "[1, 8, 8]",
    "--model.flow.init_args.preprocessing.n_bits",
    "8",
    "--model.flow.init_args.prior",
    "logistic",
    "--model.flow.init_args.preprocessing.data_range",
    "unit",
    "--model.flow.init_args.preprocessing.logit_alpha",
    "0.05",
    "--model.flow.init_args.preprocessing.normalize",
    "global",
    "--model.flow.init_args.width",
    "32",
    "--model.dequant_samples",
    "3",
    "--sample_grid.temperatures",
    "[0.5, 1.0]",
    "--sample_grid.n",
    "16",
    "--trainer.max_epochs",
    "2",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
]


def test_cli_trains_an_image_flow_and_tests_it_in_bits_per_dim(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main(["fit", *DIGITS])
    run = run_dir(tmp_path)
    assert {p.name for p in (run / "figures").iterdir()} == {"samples_t0.5.png", "samples_t1.0.png"}
    with open(run / "metrics.csv") as f:
        val = [float(row["val/bpd"]) for row in csv.DictReader(f) if row.get("val/bpd")]
    assert len(val) == 2 and val[1] < val[0] < 8, val  # learning, and already better than uniform noise

    flow = load(run / "checkpoints" / "last.ckpt")
    assert bool(flow.transform.transforms[1].initialized), "the normalisation statistics were not saved"
    main(["test", *DIGITS, "--ckpt_path", str(run / "checkpoints" / "last.ckpt")])
    assert "test/bpd" in capsys.readouterr().out
    main(["validate", *DIGITS, "--ckpt_path", str(run / "checkpoints" / "last.ckpt")])
    assert "val/bpd" in capsys.readouterr().out


def test_command_line_options_win_over_those_saved_in_the_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["fit", *DIGITS, "--trainer.max_epochs", "1"])  # trained with --model.dequant_samples 3
    seen = []
    original = FlowModule._loss

    def spy(self, batch, dequant_samples=1):
        seen.append(dequant_samples)
        return original(self, batch, dequant_samples)

    monkeypatch.setattr(FlowModule, "_loss", spy)
    last = run_dir(tmp_path) / "checkpoints" / "last.ckpt"
    main(["test", *DIGITS, "--model.dequant_samples", "5", "--ckpt_path", str(last)])
    assert seen and set(seen) == {5}


@pytest.mark.parametrize("config", sorted(p.name for p in (Path(__file__).parents[1] / "configs").glob("*.yaml")))
def test_every_recipe_parses_and_builds_its_model(config, capsys):
    path = Path(__file__).parents[1] / "configs" / config
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(path), "--print_config"])
    assert exit_info.value.code == 0
    assert "class_path: lgm.flow" in capsys.readouterr().out
    recipe = yaml.safe_load(path.read_text())
    check_trainer_precision(str(recipe.get("trainer", {}).get("precision", "32-true")))
    spec = recipe["model"]["flow"]
    module_name, _, class_name = spec["class_path"].rpartition(".")
    flow = getattr(importlib.import_module(module_name), class_name)(**spec["init_args"])
    assert sum(p.numel() for p in flow.parameters()) > 0


@needs_shared_data
def test_nice_mnist_recipe_runs_on_the_shared_data(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LGM_DATA_DIR", str(SHARED_DATA))
    config = Path(__file__).parents[1] / "configs" / "nice_mnist.yaml"
    main(
        [
            "fit",
            "--config",
            str(config),
            "--model.flow.init_args.width",
            "16",
            "--trainer.max_steps",
            "3",
            "--trainer.limit_val_batches",
            "2",
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    last = run_dir(tmp_path) / "checkpoints" / "last.ckpt"
    main(
        [
            "test",
            "--config",
            str(config),
            "--model.flow.init_args.width",
            "16",
            "--trainer.limit_test_batches",
            "2",
            "--trainer.enable_progress_bar",
            "false",
            "--ckpt_path",
            str(last),
        ]
    )
    assert "test/bpd" in capsys.readouterr().out


def test_sample_command_draws_images_and_points(tmp_path, capsys):
    image_model = NiceFlow(
        shape=(1, 8, 8), width=8, depth=1, preprocessing=Preprocessing(n_bits=5, data_range="unit", logit_alpha=0.05)
    )
    save(image_model, tmp_path / "images.pt")
    main(
        [
            "sample",
            "--ckpt",
            str(tmp_path / "images.pt"),
            "--n",
            "9",
            "--temperature",
            "0.7",
            "--out",
            str(tmp_path / "grid.png"),
        ]
    )
    assert "wrote 9 samples at temperature 0.7" in capsys.readouterr().out
    from PIL import Image

    assert Image.open(tmp_path / "grid.png").size == (3 * 9 + 1, 3 * 9 + 1)  # 3 x 3 tiles of 8 + 1 padding

    conditional = Glow(shape=(1, 4, 4), levels=1, flow_steps=1, width=4, n_classes=3)
    conditional.initialize(torch.rand(8, 1, 4, 4), torch.arange(8) % 3)
    save(conditional, tmp_path / "conditional.pt")
    main(
        [
            "sample",
            "--ckpt",
            str(tmp_path / "conditional.pt"),
            "--n",
            "4",
            "--labels",
            "2",
            "--out",
            str(tmp_path / "c.png"),
        ]
    )
    assert (tmp_path / "c.png").is_file()

    save(NiceFlow.toy(), tmp_path / "toy.pt")
    main(["sample", "--ckpt", str(tmp_path / "toy.pt"), "--out", str(tmp_path / "points.png")])
    assert (tmp_path / "points.png").stat().st_size > 0


def test_sample_command_reports_a_bad_checkpoint(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", "--ckpt", str(tmp_path / "missing.ckpt")])
    assert exit_info.value.code == 2
    assert "no checkpoint or model file" in capsys.readouterr().err


def test_cli_trains_a_class_conditional_glow(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = [
        "--data",
        "lgm.data.ImageDataModule",
        "--data.init_args.name",
        "digits",
        "--data.init_args.batch_size",
        "100",
        "--model.flow",
        "lgm.flow.Glow",
        "--model.flow.init_args.shape",
        "[1, 8, 8]",
        "--model.flow.init_args.levels",
        "2",
        "--model.flow.init_args.flow_steps",
        "2",
        "--model.flow.init_args.width",
        "16",
        "--model.flow.init_args.n_classes",
        "10",
        "--model.init_samples",
        "256",
        "--sample_grid.temperatures",
        "[0.7]",
        "--sample_grid.n",
        "20",
        "--trainer.max_epochs",
        "2",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
    ]
    main(["fit", *args])
    run = run_dir(tmp_path)
    assert (run / "figures" / "samples_t0.7.png").is_file()
    flow = load(run / "checkpoints" / "last.ckpt")
    assert flow.n_classes == 10
    assert flow.sample(3, 0.7, labels=torch.tensor([1, 2, 3])).shape == (3, 1, 8, 8)
    main(["test", *args, "--ckpt_path", str(run / "checkpoints" / "last.ckpt")])
    assert "test/bpd" in capsys.readouterr().out
