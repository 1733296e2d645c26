"""Exact resume: a run killed (SIGKILL) or stopped (SIGTERM) at any of the points where `lgm-flow fit`
writes a checkpoint, then resumed, ends with the uninterrupted run's weights (raw and EMA), optimiser
moments, learning-rate schedule and logged metrics.

Each case runs the family's recipe in a subprocess with `training_probes.SignalAtStep`, which sends the
signal right after an optimiser step (before the checkpoint callbacks of that step run), then resumes
it with the same command line plus ``--ckpt_path``, as docs/how-to/training.md says.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import IMAGE_RUN, run_cli

from lgm.train.fit import read_history

pytestmark = pytest.mark.slow

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]

# The toy recipe (configs/nice_banana.yaml), shrunk: 9 steps per epoch, validation (and `last.ckpt`,
# `best-*.ckpt`) after each, a periodic checkpoint every 5 steps, a warmup and cosine schedule, stopped
# by max_steps (the stopping rule under which Lightning resumes end-of-epoch checkpoints one epoch off).
TOY_RUN = [
    "--config",
    str(Path(__file__).parents[1] / "configs" / "nice_banana.yaml"),
    "--seed_everything",
    "7",
    "--data.init_args.n_train",
    "4608",
    "--data.init_args.n_val",
    "1024",
    "--data.init_args.n_test",
    "1024",
    "--toy_diagnostics.n_kl",
    "1000",
    "--periodic_checkpoint.every_n_train_steps",
    "5",
    "--model.warmup_steps",
    "7",
    "--model.schedule",
    "cosine",
    "--trainer.max_steps",
    "40",
    "--trainer.log_every_n_steps",
    "1",
    *QUIET,
]

# Flow matching (EMA on, as for every image model) on the 8x8 digits: 13 steps per epoch, max_steps 20.
MATCHING_RUN = [
    "--data",
    "lgm.data.ImageDataModule",
    "--data.init_args.name",
    "digits",
    "--data.init_args.batch_size",
    "100",
    "--model.flow",
    "lgm.flow.FlowMatching",
    "--model.flow.init_args.shape",
    "[1, 8, 8]",
    "--model.flow.init_args.preprocessing.n_bits",
    "5",
    "--model.flow.init_args.level_widths",
    "[8, 16]",
    "--model.flow.init_args.embedding_width",
    "16",
    "--model.flow.init_args.steps",
    "2",
    "--model.lr",
    "3e-3",
    "--model.warmup_steps",
    "4",
    "--ema.decay",
    "0.9",
    "--periodic_checkpoint.every_n_train_steps",
    "5",
    "--sample_grid.n",
    "4",
    "--sample_grid.temperatures",
    "[1.0]",
    "--trainer.max_steps",
    "20",
    "--trainer.log_every_n_steps",
    "1",
    *QUIET,
]

RUNS = {"toy": (TOY_RUN, 40), "glow": (IMAGE_RUN, 26), "matching": (MATCHING_RUN, 20)}

# (family, signal, step it arrives after, checkpoint to resume from, step that checkpoint holds)
CASES = [
    pytest.param("toy", "SIGKILL", 10, "last.ckpt", 9, id="toy-killed-after-epoch-end-validation"),
    pytest.param("toy", "SIGKILL", 13, "last.ckpt", 10, id="toy-killed-mid-epoch-after-periodic"),
    pytest.param("toy", "SIGTERM", 12, "last.ckpt", 12, id="toy-sigterm-mid-epoch"),
    pytest.param("toy", "SIGKILL", 30, "best-*.ckpt", None, id="toy-resumed-from-best"),
    pytest.param("glow", "SIGKILL", 14, "last.ckpt", 13, id="glow-ema-killed-after-epoch-end-validation"),
    pytest.param("glow", "SIGKILL", 18, "last.ckpt", 15, id="glow-ema-killed-mid-epoch-after-periodic"),
    pytest.param("glow", "SIGTERM", 18, "last.ckpt", 18, id="glow-ema-sigterm-mid-epoch"),
    pytest.param("matching", "SIGKILL", 14, "last.ckpt", 13, id="matching-ema-killed-after-epoch-end-validation"),
]


def the_run(cwd: Path) -> Path:
    (run,) = (cwd / "runs" / "lgm").iterdir()
    return run


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The run folder of each family's recipe trained without interruption (made on first use)."""
    runs: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in runs:
            cwd = tmp_path_factory.mktemp(f"{family}-full")
            run_cli(["fit", *RUNS[family][0]], cwd)
            runs[family] = the_run(cwd)
        return runs[family]

    return get


@pytest.mark.parametrize("family, signal, step, resume_from, saved_step", CASES)
def test_an_interrupted_run_resumes_exactly(tmp_path, uninterrupted, family, signal, step, resume_from, saved_step):
    args, final_step = RUNS[family]
    stopper = json.dumps({"class_path": "training_probes.SignalAtStep", "init_args": {"step": step, "signal": signal}})
    stopped = run_cli(
        ["fit", *args, f"--trainer.callbacks+={stopper}"], tmp_path, returncode=-9 if signal == "SIGKILL" else 143
    )
    run = the_run(tmp_path)
    (checkpoint,) = sorted((run / "checkpoints").glob(resume_from))
    held = torch.load(checkpoint, weights_only=True)["global_step"]
    assert held == saved_step if saved_step is not None else held < step  # the checkpoint kind this case is about
    if signal == "SIGTERM":
        assert f"stopped by SIGTERM after step {step}" in stopped.stderr
    run_cli(["fit", *args, "--ckpt_path", str(checkpoint)], tmp_path)
    assert list((tmp_path / "runs" / "lgm").iterdir()) == [run]  # resumed into its own folder

    full = uninterrupted(family)
    a = torch.load(full / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == final_step
    for key in ("state_dict", "current_model_state"):  # the model (the EMA, where on) and the raw weights
        assert (key in a) == (key in b) and (key == "state_dict" or (key in a) == (family != "toy"))
        for name in a.get(key, {}):
            assert torch.allclose(a[key][name].double(), b[key][name].double(), rtol=0, atol=1e-6), (key, name)
    states_a, states_b = (list(c["optimizer_states"][0]["state"].values()) for c in (a, b))
    for s, t in zip(states_a, states_b, strict=True):
        assert s["step"] == t["step"]
        for moment in ("exp_avg", "exp_avg_sq"):
            assert torch.allclose(s[moment], t[moment], rtol=0, atol=1e-6)
    assert a["lr_schedulers"] == b["lr_schedulers"]

    logged_a, logged_b = read_history(full / "metrics.csv"), read_history(run / "metrics.csv")
    assert logged_a.keys() == logged_b.keys()
    for name in logged_a:
        steps_a, values_a = zip(*logged_a[name])
        steps_b, values_b = zip(*logged_b[name])
        assert steps_a == steps_b, name
        assert torch.allclose(torch.tensor(values_a), torch.tensor(values_b), rtol=0, atol=1e-6), name
