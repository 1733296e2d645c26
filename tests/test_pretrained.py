"""Shipped models: loaded only when their SHA-256 matches their card, set up as the card says, usable
from Python and the CLI; and every shipped file still scores its card's number."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch
from helpers import SHARED_DATA, needs_shared_data, randomise

import lgm.flow.zoo as shipped
from lgm.cli import main
from lgm.data.images import load_images
from lgm.evaluate.cards import card_check
from lgm.flow import FlowMatching, Preprocessing, model_card, pretrained, pretrained_models, pretrained_or_file, save
from lgm.flow.io import CheckpointError

SHIPPED = shipped.pretrained_models()  # the real ones, before any test swaps the folder
NAME = "digits/flow_matching"


def tiny_flow_matching() -> FlowMatching:
    flow = FlowMatching(
        shape=(1, 8, 8),
        level_widths=(8, 8),
        embedding_width=8,
        n_classes=10,
        label_dropout=0.1,
        preprocessing=Preprocessing(n_bits=8),
    )
    return randomise(flow, std=0.05).eval()


@pytest.fixture
def weights(tmp_path, monkeypatch):
    """A folder of shipped models holding one tiny class-conditional flow matching model and its card."""
    folder = tmp_path / "weights"
    (folder / "digits").mkdir(parents=True)
    flow = tiny_flow_matching()
    save(flow, folder / f"{NAME}.pt")
    card = {
        "name": NAME,
        "summary": "a tiny test model",
        "sha256": shipped.file_sha256(folder / f"{NAME}.pt"),
        "sampling": {"solver": "euler", "steps": 2, "guidance": 1.5, "temperature": 0.9},
        "metrics": {"inception_fid": {"value": 99.0}},
    }
    (folder / f"{NAME}.json").write_text(json.dumps(card))
    monkeypatch.setattr(shipped, "WEIGHTS", folder)
    return folder, flow


def test_a_shipped_model_loads_with_its_weights_and_its_cards_sampling(weights):
    folder, original = weights
    assert pretrained_models() == [NAME]
    flow = pretrained(NAME)
    assert (flow.solver, flow.steps, flow.guidance) == ("euler", 2, 1.5)
    assert not flow.training
    for key, value in original.state_dict().items():
        assert torch.equal(flow.state_dict()[key], value), key
    assert model_card(NAME)["metrics"]["inception_fid"]["value"] == 99.0


def test_a_changed_file_or_an_unknown_name_is_refused_clearly(weights):
    folder, _ = weights
    with pytest.raises(ValueError, match="no pretrained model 'digits/glow'; choose one of digits/flow_matching"):
        pretrained("digits/glow")
    data = bytearray((folder / f"{NAME}.pt").read_bytes())
    data[-100] ^= 1
    (folder / f"{NAME}.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="not their card's .*changed or damaged; reinstall"):
        pretrained(NAME)


def test_a_name_loads_the_shipped_model_and_a_path_its_file(weights, tmp_path):
    by_name = pretrained_or_file(NAME)
    assert by_name.guidance == 1.5  # set up by the card, as `pretrained` does
    other = tiny_flow_matching()
    save(other, tmp_path / "mine.pt")
    by_path = pretrained_or_file(tmp_path / "mine.pt")
    assert by_path.guidance != 1.5 and not by_path.training
    for key, value in other.state_dict().items():
        assert torch.equal(by_path.state_dict()[key], value), key
    with pytest.raises(ValueError, match="'digits/glow' is neither a pretrained model \\(digits/flow_matching\\) nor"):
        pretrained_or_file("digits/glow")


def test_the_cli_lists_samples_and_evaluates_a_shipped_model(weights, tmp_path, capsys):
    main(["pretrained"])
    assert NAME in capsys.readouterr().out
    out = tmp_path / "s.png"
    main(["sample", "--pretrained", NAME, "--n", "4", "--out", str(out)])
    printed = capsys.readouterr().out
    assert out.is_file() and "at temperature 0.9" in printed and "euler x 2" in printed
    assert "2 velocity evaluations, 4 network evaluations" in printed  # guided by the card: two per step
    main(["sample", "--pretrained", NAME, "--n", "4", "--guidance", "1", "--temperature", "1", "--out", str(out)])
    assert "at temperature 1.0" in (printed := capsys.readouterr().out) and "2 network evaluations" in printed
    report = tmp_path / "report.json"
    main(
        ["evaluate", "--pretrained", NAME, "--metrics", "bpd", "--bpd-images", "20", "--no-figures"]
        + ["--likelihood-solver", "euler", "--likelihood-steps", "2", "--out", str(report)]
    )
    result = json.loads(report.read_text())
    settings = result["settings"]
    assert result["data"]["name"] == "digits" and settings["temperature"] == 0.9
    assert (settings["solver"], settings["steps"], settings["guidance"]) == ("euler", 2, 1.5)


def test_models_load_from_a_folder_laid_out_like_the_zoo_and_from_a_hub_repositorys_snapshot(
    weights, tmp_path, monkeypatch, capsys
):
    """A local folder (a copy or a Hub snapshot) and a Hub repository id, offline: the snapshot fetch is
    huggingface_hub's, here answering from a folder as its cache does."""
    import huggingface_hub

    folder, original = weights
    snapshot = tmp_path / "snapshot"
    shutil.copytree(folder, snapshot)
    monkeypatch.setattr(shipped, "WEIGHTS", tmp_path / "nothing shipped")
    fetched = []

    def snapshot_download(repo_id, allow_patterns):
        fetched.append((repo_id, allow_patterns))
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    for hub in (snapshot, "someone/lgm-flow-models"):
        assert pretrained_models(hub) == [NAME] and pretrained_models() == []
        flow = pretrained(NAME, hub=hub)
        assert flow.guidance == 1.5
        assert all(torch.equal(flow.state_dict()[k], v) for k, v in original.state_dict().items())
    assert ("someone/lgm-flow-models", [f"{NAME}.json", f"{NAME}.pt"]) in fetched
    main(["pretrained", "--hub", str(snapshot)])
    assert NAME in capsys.readouterr().out
    main(
        [
            "sample",
            "--pretrained",
            NAME,
            "--hub",
            "someone/lgm-flow-models",
            "--n",
            "2",
            "--out",
            str(tmp_path / "s.png"),
        ]
    )
    assert "at temperature 0.9" in capsys.readouterr().out


def test_a_hub_repository_that_cannot_be_fetched_or_no_huggingface_hub_get_one_clear_line(monkeypatch, capsys):
    import huggingface_hub

    def offline_without_cache(repo_id, allow_patterns):
        raise huggingface_hub.errors.LocalEntryNotFoundError("cannot find the requested files in the local cache")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline_without_cache)
    with pytest.raises(ValueError, match="cannot get the models of the Hub repository 'someone/models'.*local cache"):
        pretrained_models("someone/models")
    with pytest.raises(SystemExit):
        main(["pretrained", "--hub", "someone/models"])
    assert capsys.readouterr().err.count("\n") == 1
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # not installed
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'lgm-flow\[hub\]'"):
        pretrained("fashion_mnist/flow_matching", hub="someone/models")


def test_the_card_check_is_reproducible(weights):
    arrays = load_images("digits")
    first = card_check(pretrained(NAME), arrays, images=50, likelihood_solver="euler", likelihood_steps=2)
    again = card_check(pretrained(NAME), arrays, images=50, likelihood_solver="euler", likelihood_steps=2)
    assert first == again and first["likelihood"]["solver"] == "euler" and first["stderr"] > 0


def test_the_shipped_files_fit_the_size_budget():
    total = sum((shipped.WEIGHTS / f"{name}.pt").stat().st_size for name in SHIPPED)
    assert total <= 15e6


@pytest.mark.slow
@needs_shared_data
@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_model_still_scores_its_cards_check(name):
    """Re-score the card's check (bits/dim of the first test images, seeded): a file that drifted from
    its card fails here."""
    card = model_card(name)
    check = card["check"]
    likelihood = check.get("likelihood", {})
    result = card_check(
        pretrained(name),
        load_images(name.split("/")[0], SHARED_DATA),
        images=check["images"],
        seed=check["seed"],
        likelihood_solver=likelihood.get("solver"),
        likelihood_steps=likelihood.get("steps"),
    )
    assert abs(result["value"] - check["value"]) <= check["stderr"], (result, check)


def test_shipping_a_model_writes_a_card_whose_check_the_shipped_file_reproduces(tmp_path, monkeypatch):
    from experiments.ship_pretrained import main as ship

    model = tmp_path / "model.pt"
    save(tiny_flow_matching(), model)
    draft = tmp_path / "draft.json"
    sampling = {"solver": "midpoint", "steps": 2, "guidance": 1.5, "temperature": 1.0}
    fields = {"summary": "tiny", "recipe": "none", "training": {}, "sampling": sampling, "metrics": {}}
    draft.write_text(json.dumps(fields))
    folder = tmp_path / "zoo"
    argv = [str(model), "--name", NAME, "--card", str(draft), "--check-images", "40", "--weights", str(folder)]
    card = ship(argv + ["--likelihood-solver", "euler", "--likelihood-steps", "2"])
    assert card["sha256"] == shipped.file_sha256(folder / f"{NAME}.pt") and card["class"] == "FlowMatching"
    monkeypatch.setattr(shipped, "WEIGHTS", folder)
    assert model_card(NAME) == card
    again = card_check(pretrained(NAME), load_images("digits"), 40, likelihood_solver="euler", likelihood_steps=2)
    assert again == card["check"]
