"""Bad input, as users give it: every case ends in one line that names the problem and the fix,
on the command line with exit status 2 and no traceback (unless ``--debug`` or ``LGM_DEBUG=1`` asks
for one), in the library as an exception with that line; and nothing is left half-written."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

import lgm.utils.files
from lgm.cli import main
from lgm.data import ImageDataModule, ToyDataModule
from lgm.evaluate.classifier import classifier_for, save_classifier
from lgm.flow import Glow, NiceFlow, load, save
from lgm.train import FlowModule
from lgm.utils.files import atomic_write_text
from lgm.viz.figures import finish
from lgm.viz.images import save_grid

TINY_GLOW = [
    "--data",
    "lgm.data.ImageDataModule",
    "--data.init_args.name",
    "digits",
    "--model.flow",
    "lgm.flow.Glow",
    "--model.flow.init_args.shape",
    "[1, 8, 8]",
    "--model.flow.init_args.levels",
    "2",
    "--model.flow.init_args.flow_steps",
    "1",
    "--model.flow.init_args.width",
    "8",
    "--trainer.max_steps",
    "1",
]


@pytest.fixture
def files(tmp_path, monkeypatch):
    """A folder (the working directory) with a model file, damaged and foreign files, a file where a
    folder should be, and a data folder whose MNIST images have the wrong shape."""
    monkeypatch.chdir(tmp_path)
    save(NiceFlow.toy(), "toy.pt")
    whole = (tmp_path / "toy.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint " * 20)
    (tmp_path / "afile").write_text("a file, not a folder")
    (tmp_path / "baddata").mkdir()
    np.savez(
        tmp_path / "baddata" / "mnist.npz",
        x_train=np.zeros((50, 27, 28), np.uint8),
        y_train=np.zeros(50, np.uint8),
        x_test=np.zeros((20, 28, 28), np.uint8),
        y_test=np.zeros(20, np.uint8),
    )
    return tmp_path


CLI_CASES = [
    # bad values in the config or on the command line
    (["fit", "--model.lr", "-1"], "need lr > 0"),
    (["fit", "--model.lr", "abc"], 'Parser key "model.lr"'),
    (["fit", "--model.warmup_steps", "-1"], "warmup_steps and warmup_epochs must be >= 0"),
    (["fit", "--model.schedule", "sometimes"], "unknown schedule 'sometimes'; choose one of"),
    (["fit", "--model.optimizer", "sgdx"], "unknown optimizer 'sgdx'; choose one of"),
    (["fit", "--ema.decay", "1.5"], "the EMA decay must be in [0, 1)"),
    (["fit", "--model.flow", "lgm.flow.NoSuchFlow"], "has no attribute 'NoSuchFlow'"),
    (["fit", "--model.flow.init_args.coupling", "7"], "Option 'coupling' is not accepted"),
    (["fit", "--model.nosuch", "1"], "unrecognized arguments: --model.nosuch"),
    (["fit", "--config", "missing.yaml"], "File does not exist"),
    (["fit", "--trainer.max_epochs", "-5"], "`max_epochs` must be a non-negative integer"),
    (["fit", "--data.init_args.batch_size", "0"], "batch_size must be at least 1"),
    (["fit", "--data.init_args.name", "bananas"], "unknown toy density 'bananas'; choose one of"),
    (["fit", *TINY_GLOW, "--data.init_args.name", "svhn"], "unknown image data set 'svhn'; choose one of"),
    (["train"], "unknown command 'train'; choose one of fit"),
    # data that does not fit the model, or files of the wrong shape
    (
        [
            "fit",
            *TINY_GLOW,
            "--model.flow.init_args.shape",
            "[1, 28, 28]",
            "--data.init_args.name",
            "mnist",
            "--data.init_args.data_dir",
            "baddata",
        ],
        "x_train: expected images of shape [N, 1, 28, 28]",
    ),
    (["fit", *TINY_GLOW, "--model.flow.init_args.shape", "[1, 28, 28]"], "--model.flow.init_args.shape '[1, 8, 8]'"),
    (
        ["fit", "--model.flow", "lgm.flow.Glow", "--model.flow.init_args.shape", "[1, 8, 8]"],
        "the model takes data of shape [1, 8, 8], but the data module gives [2]",
    ),
    (
        ["fit", *TINY_GLOW, "--model.flow.init_args.n_classes", "3"],
        "class-conditional with 3 classes, but the data has 10",
    ),
    # missing, damaged and foreign files
    (["fit", "--ckpt_path", "missing.ckpt"], "no checkpoint or model file at 'missing.ckpt'"),
    (["fit", "--ckpt_path", "cut.pt"], "'cut.pt' is not a complete PyTorch file"),
    (["fit", "--ckpt_path", "junk.ckpt"], "is not a complete PyTorch file"),
    (["fit", "--ckpt_path", "toy.pt"], "is a model file (lgm.flow.save): --ckpt_path takes a checkpoint written by"),
    (["test", "--ckpt_path", "toy.pt"], "is a model file (lgm.flow.save)"),
    (["sample", "--ckpt", "missing.pt"], "no checkpoint or model file at 'missing.pt'"),
    (["sample", "--ckpt", "cut.pt"], "is not a complete PyTorch file"),
    (["evaluate", "--ckpt", "junk.ckpt", "--data", "mnist"], "is not a complete PyTorch file"),
    # sampling options and output paths
    (["sample", "--ckpt", "toy.pt", "--n", "0"], "--n must be at least 1, got 0"),
    (["sample", "--pretrained", "mnist/nothing"], "no pretrained model 'mnist/nothing'; choose one of"),
    (["evaluate", "--pretrained", "mnist/nothing"], "no pretrained model 'mnist/nothing'; choose one of"),
    (["pretrained", "mnist/nothing"], "no pretrained model 'mnist/nothing'; choose one of"),
    (["evaluate", "--ckpt", "toy.pt"], "--data is required"),
    (["sample", "--ckpt", "toy.pt", "--temperature", "-1"], "temperature must be a finite number >= 0"),
    (["sample", "--ckpt", "toy.pt", "--temperature", "nan"], "temperature must be a finite number >= 0"),
    (["sample", "--ckpt", "toy.pt", "--labels", "3"], "--labels needs a class-conditional model"),
    (["sample", "--ckpt", "toy.pt", "--steps", "4"], "--solver, --steps and --time-shift apply to continuous flows"),
    (["sample", "--ckpt", "toy.pt", "--out", "afile/points.png"], "'afile' is a file, not a folder"),
    (["sample", "--ckpt", "toy.pt", "--out", "points.txt"], "name a picture file ending in one of .png"),
    (["sample", "--ckpt", "toy.pt", "--out", "baddata"], "name a picture file"),
    (["sample", "--ckpt", "toy.pt", "--out", "baddata.png/"], "it is a folder"),
    # evaluation
    (["evaluate", "--ckpt", "toy.pt", "--data", "mnist", "--metrics", "fidd"], "unknown metrics ['fidd']"),
    (
        ["evaluate", "--ckpt", "toy.pt", "--data", "mnist", "--metrics", "bpd"],
        "the model takes data of shape [2], but mnist",
    ),
    (["evaluate", "--ckpt", "toy.pt", "--data", "svhn"], "unknown image data set 'svhn'"),
    (
        ["evaluate", "--ckpt", "toy.pt", "--data", "mnist", "--out", "afile/report.json"],
        "'afile' is a file, not a folder",
    ),
    (["classifier", "fit", "--data", "mnist", "--out", "baddata"], "it is a folder; name a file in it"),
]


@pytest.mark.parametrize("argv, message", CLI_CASES, ids=[f"{i:02d}-{a[0]}" for i, (a, _) in enumerate(CLI_CASES)])
def test_a_usage_error_ends_in_one_line_with_status_2(files, capsys, argv, message):
    if argv[-1] == "baddata.png/":
        (files / "baddata.png").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error: " in line]
    assert len(errors) == 1 and errors[0] == err.strip().splitlines()[-1]  # one line, and the last
    assert errors[0].startswith("lgm-flow") and message in errors[0], errors[0]
    assert not (files / "runs").exists() and not (files / "samples.png").exists()  # nothing written


def test_the_program_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    assert listed == ["fit", "validate", "test", "predict", "sample", "evaluate", "classifier", "pretrained"]
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2 and "usage: lgm-flow SUBCOMMAND" in capsys.readouterr().err


@pytest.mark.parametrize("ask", ["--debug", "LGM_DEBUG"])
def test_debug_shows_the_traceback(files, monkeypatch, ask):
    argv = ["fit", "--model.lr", "-1"]
    if ask == "--debug":
        argv.append("--debug")
    else:
        monkeypatch.setenv("LGM_DEBUG", "1")
    with pytest.raises(ValueError, match="need lr > 0"):
        main(argv)


def tiny_glow(n_classes: int | None = None) -> Glow:
    flow = Glow(shape=(1, 8, 8), levels=2, flow_steps=1, width=8, n_classes=n_classes)
    flow.initialize(torch.rand(16, 1, 8, 8), torch.randint(0, n_classes, (16,)) if n_classes else None)
    return flow


API_CASES = [
    (lambda: tiny_glow().sample(-3), "the number of samples must be a positive integer, got -3"),
    (lambda: NiceFlow.toy().sample(0), "positive integer, got 0"),
    (lambda: NiceFlow.toy().sample(True), "positive integer, got True"),
    (lambda: NiceFlow.toy().sample(2.5), "positive integer, got 2.5"),
    (lambda: NiceFlow.toy().sample(4, temperature=float("inf")), "temperature must be a finite number >= 0"),
    (lambda: tiny_glow(3).sample(2), "class-conditional (3 classes): pass labels"),
    (lambda: tiny_glow(3).sample(2, labels=torch.tensor([0, 7])), "labels must lie in 0..2"),
    (lambda: tiny_glow(3).sample(2, labels=torch.tensor([0.0, 1.0])), "labels must be an integer tensor of shape [2]"),
    (lambda: NiceFlow.toy().sample(2, labels=torch.tensor([0, 1])), "not class-conditional: do not pass labels"),
    (lambda: NiceFlow.toy().log_prob(torch.tensor([[float("nan"), 0.0]])), "input contains NaN or Inf values"),
    (lambda: NiceFlow.toy().log_prob(torch.zeros(4, 3)), "expected input of shape [B, 2]"),
    (lambda: tiny_glow().log_prob([[0.5]]), "expected a torch.Tensor of shape [B, 1, 8, 8], got list"),
    (lambda: tiny_glow().bits_per_dim(torch.rand(2, 1, 8, 8)), "expected discrete images as integers 0..255"),
    (lambda: tiny_glow().bits_per_dim(torch.full((2, 1, 8, 8), 300)), "0..255"),
    (
        lambda: tiny_glow().bits_per_dim(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), dequant_samples=0),
        "dequant_samples must be at least 1",
    ),
    (lambda: FlowModule(NiceFlow.toy(), lr=0), "need lr > 0"),
    (lambda: ImageDataModule(name="svhn"), "unknown image data set 'svhn'"),
    (lambda: ToyDataModule(name="donut"), "unknown toy density 'donut'"),
    (lambda: load("missing.pt"), "no checkpoint or model file at 'missing.pt'"),
    (lambda: load("junk.ckpt"), "is not a complete PyTorch file"),
    (lambda: save(NiceFlow.toy(), "afile/model.pt"), "'afile' is a file, not a folder"),
    (lambda: save(NiceFlow.toy(), "baddata"), "cannot write 'baddata': it is a folder"),
]


@pytest.mark.parametrize("call, message", API_CASES, ids=[f"{i:02d}" for i in range(len(API_CASES))])
def test_the_library_refuses_bad_input_in_one_line(files, call, message):
    with pytest.raises((ValueError, TypeError, OSError)) as info:
        call()
    text = str(info.value)
    assert message in text and "\n" not in text, text


# -- interrupted writes ---------------------------------------------------------------------------------

WRITERS = {
    "model file": lambda path: save(NiceFlow.toy(), path),
    "report": lambda path: atomic_write_text('{"fid": 1.0}\n', path),
    "sample grid": lambda path: save_grid(torch.rand(4, 1, 8, 8), path),
    "figure": lambda path: finish(Figure(), path),
    "classifier weights": lambda path: save_classifier(classifier_for("mnist"), path),
}


@pytest.mark.parametrize("writer", WRITERS)
def test_an_interrupted_write_leaves_the_old_file_or_none(tmp_path, monkeypatch, writer):
    """The process dies after the bytes are written but before the file is complete on disk: the
    path then holds what it held before (here: nothing, then an older file), and no temporary file."""

    def killed(fd: int) -> None:
        raise KeyboardInterrupt

    path = tmp_path / ("out.png" if writer in ("sample grid", "figure") else "out.bin")
    monkeypatch.setattr(lgm.utils.files.os, "fsync", killed)
    with pytest.raises(KeyboardInterrupt):
        WRITERS[writer](path)
    assert list(tmp_path.iterdir()) == []
    path.write_bytes(b"older")
    with pytest.raises(KeyboardInterrupt):
        WRITERS[writer](path)
    assert list(tmp_path.iterdir()) == [path] and path.read_bytes() == b"older"
    monkeypatch.undo()
    WRITERS[writer](path)
    assert path.read_bytes() != b"older" and list(tmp_path.iterdir()) == [path]
