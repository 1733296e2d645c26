"""save/load round trips and clear errors for files that are not what they should be."""

from __future__ import annotations

import pytest
import torch

from lgm.flow import Compose, Flow, NiceFlow, StandardGaussian, load, save
from test_transforms import randomise


def test_save_load_round_trip(tmp_path):
    model = randomise(NiceFlow.toy(prior="logistic", scale="softplus", hidden=16, depth=2), seed=2)
    save(model, tmp_path / "model.pt")
    loaded = load(tmp_path / "model.pt")
    assert isinstance(loaded, NiceFlow) and not loaded.training
    assert loaded.init_args == model.init_args
    x = torch.randn(8, 2)
    torch.testing.assert_close(loaded.log_prob(x), model.log_prob(x), rtol=0, atol=0)


def test_save_leaves_no_temporary_files(tmp_path):
    save(NiceFlow.toy(), tmp_path / "model.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint or model file"):
        load(tmp_path / "nope.ckpt")


def test_truncated_file(tmp_path):
    save(NiceFlow.toy(), tmp_path / "model.pt")
    data = (tmp_path / "model.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="could not read .* truncated"):
        load(tmp_path / "cut.pt")


def test_file_without_lgm_entry(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="not an lgm-flow file"):
        load(tmp_path / "other.ckpt")


def test_incompatible_weights(tmp_path):
    save(NiceFlow.toy(hidden=16), tmp_path / "model.pt")
    payload = torch.load(tmp_path / "model.pt", weights_only=True)
    payload["lgm_flow"]["init_args"]["hidden"] = 32
    torch.save(payload, tmp_path / "edited.pt")
    with pytest.raises(ValueError, match="do not fit lgm.flow.nice.NiceFlow.*incompatible"):
        load(tmp_path / "edited.pt")


def test_flow_without_init_args_cannot_be_saved(tmp_path):
    flow = Flow(Compose(), StandardGaussian((2,)), shape=(2,))
    with pytest.raises(TypeError, match="records no init_args"):
        save(flow, tmp_path / "model.pt")
