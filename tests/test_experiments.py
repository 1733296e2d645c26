"""`experiments.curve`: every snapshot of a run scored at the temperature chosen on validation, resumably;
`experiments.nfe_curve`: one model scored under several samplers."""

from __future__ import annotations

import json

import pytest
from helpers import SteppingClock, fake_data

from experiments import curve, nfe_curve
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


def test_nfe_curve_scores_each_sampler_once_and_tabulates_them_by_network_evaluations(tmp_path, monkeypatch, capsys):
    from lgm.flow import MeanFlow, Preprocessing, save

    monkeypatch.setenv("LGM_CACHE_DIR", str(tmp_path / "cache"))
    data = fake_data(tmp_path, n_train=100)
    model = MeanFlow((1, 28, 28), level_widths=(8, 8), embedding_width=8, preprocessing=Preprocessing(), n_classes=10)
    save(model, tmp_path / "mf.pt")
    args = [str(tmp_path / "mf.pt"), "--data", "fashion_mnist", "--data-dir", str(data), "--out", str(tmp_path / "n")]
    args += ["--samplers", "flow_map:2", "euler:1", "--inception-n", "12", "--inception-runtime", "torch"]
    nfe_curve.main([*args, "--time-shift", "2"])
    printed = capsys.readouterr().out
    reports = sorted((tmp_path / "n").glob("*.json"))
    assert [p.name for p in reports] == ["euler-1-shift2.json", "flow_map-2-shift2.json"]
    report = json.loads(reports[1].read_text())
    assert report["settings"]["reference"] == "test" and report["metrics"]["inception"]["n_generated"] == 12
    rows = [line for line in printed.splitlines() if line.startswith("| euler") or line.startswith("| flow_map")]
    assert [row.split("|")[1].strip() for row in rows] == ["euler x 1", "flow_map x 2"]  # by evaluations
    assert [row.split("|")[3].strip() for row in rows] == ["1", "2"]
    monkeypatch.setattr(nfe_curve, "evaluate", lambda *a, **k: pytest.fail("evaluated twice"))
    nfe_curve.main([*args, "--time-shift", "2"])
    with pytest.raises(SystemExit):
        nfe_curve.main([*args[:7], "--samplers", "midpoint"])
    assert "a sampler is SOLVER:STEPS" in capsys.readouterr().err
