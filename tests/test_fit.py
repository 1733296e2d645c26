"""`lgm.train.fit_flow`: budgets, resume from its run folder, curves, clear errors."""

import pytest
import torch

from lgm.data import ToyDataModule
from lgm.flow import NiceFlow, load
from lgm.train import fit_flow
from lgm.train.fit import read_history


def small_data():
    return ToyDataModule("banana", n_train=1024, n_val=256, n_test=256, batch_size=128)


def test_fit_flow_trains_saves_and_logs(tmp_path):
    flow = NiceFlow(2, width=16, depth=2)
    before = -flow.log_prob(small_data().density.sample(512, seed=5)).mean().item()
    result = fit_flow(flow, small_data(), steps=40, lr=3e-3, run_dir=tmp_path, progress=False)
    assert result.steps == 40 and result.flow is flow and not flow.training
    after = -flow.log_prob(small_data().density.sample(512, seed=5)).mean().item()
    assert after < before - 0.2
    steps = [s for s, _ in result.history["train/nll"]]
    assert steps == sorted(steps) and steps[-1] == 39
    assert result.final("val/nll") == result.history["val/nll"][-1][1]
    reloaded = load(result.checkpoint)
    x = torch.randn(8, 2)
    assert torch.allclose(reloaded.log_prob(x), flow.log_prob(x))
    with pytest.raises(KeyError, match="never logged"):
        result.final("val/bpd")


def test_fit_flow_puts_its_run_under_default_root_dir(tmp_path):
    root = tmp_path / "root"
    result = fit_flow(
        NiceFlow(2, width=16, depth=2),
        small_data(),
        steps=5,
        progress=False,
        trainer_args={"default_root_dir": str(root)},
    )
    (run,) = (root / "lgm").iterdir()
    assert result.checkpoint == run / "checkpoints" / "last.ckpt"
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["last.ckpt"]  # and no epoch=*-step=*.ckpt
    assert (run / "metrics.csv").is_file() and [p.name for p in tmp_path.iterdir()] == ["root"]


def seeded_flow():
    torch.manual_seed(0)
    return NiceFlow(2, width=16, depth=2)


@pytest.mark.parametrize("first", [12, 16], ids=["mid-epoch", "epoch-end"])
def test_fit_flow_resumes_exactly_from_its_run_folder(tmp_path, first):
    """8 batches per epoch: stopping at step 12 and at step 16 (an epoch's end), then continuing to
    step 20, gives the weights of an uninterrupted run; a finished run resumed trains no further."""
    straight = fit_flow(seeded_flow(), small_data(), steps=20, run_dir=tmp_path / "a", progress=False)
    fit_flow(seeded_flow(), small_data(), steps=first, run_dir=tmp_path / "b", progress=False)
    resumed = fit_flow(NiceFlow(2, width=16, depth=2), small_data(), steps=20, run_dir=tmp_path / "b", progress=False)
    again = fit_flow(NiceFlow(2, width=16, depth=2), small_data(), steps=20, run_dir=tmp_path / "b", progress=False)
    assert resumed.steps == again.steps == 20
    for a, b, c in zip(
        straight.flow.state_dict().values(), resumed.flow.state_dict().values(), again.flow.state_dict().values()
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(a, c, rtol=0, atol=0)


def test_fit_flow_time_budget_counts_across_resumes(tmp_path):
    first = fit_flow(seeded_flow(), small_data(), minutes=0.02, run_dir=tmp_path, progress=False)
    assert first.steps > 0
    again = fit_flow(NiceFlow(2, width=16, depth=2), small_data(), minutes=0.02, run_dir=tmp_path, progress=False)
    assert again.steps == first.steps


def test_fit_flow_refuses_bad_budgets_and_other_models(tmp_path):
    with pytest.raises(ValueError, match="training budget"):
        fit_flow(NiceFlow(2), small_data())
    with pytest.raises(ValueError, match="minutes must be a positive number"):
        fit_flow(NiceFlow(2), small_data(), minutes=0)
    fit_flow(NiceFlow(2, width=16), small_data(), steps=2, run_dir=tmp_path, progress=False)
    with pytest.raises(Exception, match="width"):
        fit_flow(NiceFlow(2, width=32), small_data(), steps=4, run_dir=tmp_path, progress=False)


def test_read_history_keeps_the_later_row_of_a_repeated_step(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,train/bpd,val/bpd\n0,9,5.0,\n0,19,4.0,\n0,19,3.5,\n0,19,,3.9\n")
    assert read_history(path) == {"train/bpd": [(9, 5.0), (19, 3.5)], "val/bpd": [(19, 3.9)]}
    assert read_history(tmp_path / "missing.csv") == {}


def test_fit_flow_gives_a_cosine_schedule_its_step_budget(tmp_path):
    result = fit_flow(
        NiceFlow(2, width=16),
        small_data(),
        steps=12,
        run_dir=tmp_path,
        progress=False,
        lr=1e-3,
        schedule="cosine",
        min_lr=1e-5,
    )
    state = torch.load(result.checkpoint, weights_only=False)["lr_schedulers"][0]
    assert state["last_epoch"] == 12 and state["_last_lr"][0] == pytest.approx(1e-5)
