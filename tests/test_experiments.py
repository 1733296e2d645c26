"""`experiments.curve`: every snapshot of a run scored at the temperature chosen on validation, resumably."""

from __future__ import annotations

import json

import pytest
from helpers import SteppingClock, fake_data

from experiments import curve
from lgm.cli import main
from lgm.train import callbacks


@pytest.mark.slow
def test_curve_evaluates_each_snapshot_once_and_tabulates_them(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LGM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(callbacks, "time", SteppingClock())
    data = fake_data(tmp_path, n_train=400)
    main(
        [
            "fit",
            "--data",
            "lgm.data.ImageDataModule",
            "--data.init_args.name",
            "fashion_mnist",
            "--data.init_args.data_dir",
            str(data),
            "--data.init_args.batch_size",
            "60",
            "--model.flow",
            "lgm.flow.Glow",
            "--model.flow.init_args.shape",
            "[1, 28, 28]",
            "--model.flow.init_args.levels",
            "1",
            "--model.flow.init_args.flow_steps",
            "1",
            "--model.flow.init_args.width",
            "4",
            "--model.init_samples",
            "60",
            "--trainer.max_epochs",
            "1",
            "--snapshots.minutes",
            "[1, 2]",
            "--sample_grid.n",
            "4",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.enable_model_summary",
            "false",
        ]
    )
    (run,) = (tmp_path / "runs" / "lgm").iterdir()
    args = [
        str(run),
        "--data",
        "fashion_mnist",
        "--data-dir",
        str(data),
        "--out",
        str(tmp_path / "curves"),
        "--n-samples",
        "20",
        "--inception-n",
        "12",
        "--select-n",
        "20",
        "--select-protocol",
        "classifier",
        "--bpd-images",
        "10",
        "--inception-runtime",
        "torch",
        "--no-denoise",
    ]
    capsys.readouterr()
    curve.main(args)
    printed = capsys.readouterr().out
    reports = [json.loads((tmp_path / "curves" / run.name / f"{m}min.json").read_text()) for m in (1, 2)]
    for report in reports:
        selection = report["temperature_selection"]
        assert set(selection["fid"]) == {str(t) for t in curve.TEMPERATURES} and selection["split"] == "val"
        assert report["settings"]["temperature"] == selection["chosen"] and report["settings"]["reference"] == "test"
        assert report["metrics"]["inception"]["n_generated"] == 12 and report["metrics"]["bpd"]["images"] == 10
        assert report["metrics"]["inception"]["runtime"] == "torch" and report["settings"]["denoise"] is False
    assert f"| {run.name} | 1 min |" in printed and f"| {run.name} | 2 min |" in printed

    # A second call reads the reports back instead of evaluating again.
    monkeypatch.setattr(curve, "evaluate", lambda *a, **k: pytest.fail("evaluated twice"))
    curve.main(args)
    assert f"| {run.name} | 2 min |" in capsys.readouterr().out


def test_curve_refuses_runs_without_snapshots(tmp_path, capsys):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(SystemExit):
        curve.main([str(tmp_path / "run"), "--data", "fashion_mnist", "--out", str(tmp_path / "c")])
    assert "train with --snapshots.minutes" in capsys.readouterr().err
