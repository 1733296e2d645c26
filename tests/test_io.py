"""save/load round trips and clear errors for files that are not what they should be."""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from helpers import randomise

from lgm.flow import Compose, Flow, Glow, NiceFlow, StandardGaussian, load, save
from lgm.flow.io import CheckpointError, build_flow, check_compatible, flow_spec, upgrade_spec


def test_save_load_round_trip(tmp_path):
    model = randomise(NiceFlow.toy(prior="logistic", scale="softplus", width=16, depth=2), seed=2)
    save(model, tmp_path / "model.pt")
    loaded = load(tmp_path / "model.pt")
    assert type(loaded) is NiceFlow and not loaded.training  # the class the file names
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
    with pytest.raises(CheckpointError, match="not a complete PyTorch file.*truncated"):
        load(tmp_path / "cut.pt")


def test_flipped_byte_fails_the_checksum(tmp_path):
    save(NiceFlow.toy(), tmp_path / "model.pt")
    data = bytearray((tmp_path / "model.pt").read_bytes())
    with zipfile.ZipFile(tmp_path / "model.pt") as archive:
        weights = max(archive.infolist(), key=lambda member: member.file_size)
    name_length, extra_length = struct.unpack("<HH", data[weights.header_offset + 26 : weights.header_offset + 30])
    data[weights.header_offset + 30 + name_length + extra_length + 10] ^= 0xFF  # a byte of the largest tensor
    (tmp_path / "bad.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted"):
        load(tmp_path / "bad.pt")


def test_incompatible_model_is_named():
    flow = NiceFlow.toy()
    spec = flow_spec(NiceFlow.toy(width=32))
    with pytest.raises(CheckpointError, match=r"differs .* in \['width'\].*config.yaml"):
        check_compatible(spec, flow, "the checkpoint")
    check_compatible(flow_spec(NiceFlow.toy()), flow, "the checkpoint")


def test_file_without_lgm_entry(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="not an lgm-flow file"):
        load(tmp_path / "other.ckpt")


def test_incompatible_weights(tmp_path):
    save(NiceFlow.toy(width=16), tmp_path / "model.pt")
    payload = torch.load(tmp_path / "model.pt", weights_only=True)
    payload["lgm_flow"]["init_args"]["width"] = 32
    torch.save(payload, tmp_path / "edited.pt")
    with pytest.raises(ValueError, match="do not fit lgm.flow.nice.NiceFlow.*incompatible"):
        load(tmp_path / "edited.pt")


def test_flow_without_init_args_cannot_be_saved(tmp_path):
    flow = Flow(Compose(), StandardGaussian((2,)), shape=(2,))
    with pytest.raises(TypeError, match="records no init_args"):
        save(flow, tmp_path / "model.pt")


FORMAT_1 = Path(__file__).parent / "fixtures" / "format1"
FORMAT_1_FILES = [
    "nice_toy.pt",
    "realnvp_images.pt",
    "glow_classes.pt",
    "vector_glow.pt",
    "matching_vector.pt",
    "matching_images.pt",
    "nice_toy_fit.ckpt",
]


@pytest.mark.parametrize("name", FORMAT_1_FILES)
def test_files_written_by_earlier_versions_load_and_give_the_same_log_densities(name):
    """Model files and checkpoints of file format 1 (see fixtures/format1/make.py), as they were written."""
    expected = json.loads((FORMAT_1 / "expected.json").read_text())
    flow = load(FORMAT_1 / name)
    if flow.n_bits is not None:
        x = (torch.tensor(expected["images"], dtype=torch.float32) + 0.5) / 256
    else:
        x = torch.tensor(expected["points"])
    labels = torch.tensor(expected["labels"]) if flow.n_classes else None
    with torch.no_grad():
        log_p = flow.log_prob(x, labels)
    torch.testing.assert_close(log_p, torch.tensor(expected["log_prob"][Path(name).stem]), rtol=1e-5, atol=1e-4)


def test_format_1_arguments_renamed_since_are_converted_and_unknown_formats_refused(tmp_path):
    payload = torch.load(FORMAT_1 / "matching_vector.pt", weights_only=True)
    assert payload["lgm_flow"]["format"] == 1 and "coupling" in payload["lgm_flow"]["init_args"]
    flow = load(FORMAT_1 / "matching_vector.pt")
    assert flow.pairing == payload["lgm_flow"]["init_args"]["coupling"] and flow_spec(flow)["format"] == 4
    payload["lgm_flow"]["format"] = 7
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="format 7; this version reads formats 1 to 4"):
        load(tmp_path / "future.pt")


def test_format_2_flat_preprocessing_becomes_one_value():
    flat = {"n_bits": 5, "data_range": "unit", "logit_alpha": 0.05, "normalize": None, "pad_to": None}
    spec = {"format": 2, "class_path": "lgm.flow.glow.Glow", "init_args": {"shape": [1, 8, 8], "levels": 2, **flat}}
    upgraded = upgrade_spec(spec, "test")
    # The fields added since (noise augmentation, variational dequantisation) take their defaults.
    complete = {**flat, "noise_std": None, "dequantization": "uniform"}
    assert upgraded["format"] == 4
    assert upgraded["init_args"] == {"shape": [1, 8, 8], "levels": 2, "preprocessing": complete}
    continuous = {"format": 2, "class_path": "lgm.flow.nice.NiceFlow", "init_args": {"shape": [2], "n_bits": None}}
    assert upgrade_spec(continuous, "test")["init_args"] == {"shape": [2], "preprocessing": None}
    glow = Glow(shape=(1, 8, 8), levels=2, flow_steps=1, width=4, preprocessing=upgraded["init_args"]["preprocessing"])
    assert glow.n_bits == 5 and glow.init_args["preprocessing"] == complete


def test_a_file_written_before_a_preprocessing_field_existed_resumes_under_todays_config():
    """A format-4 checkpoint whose preprocessing lacks ``dequantization`` (added later) describes the
    uniform default: the resume check accepts today's equivalent config and still refuses a different one."""
    preprocessing = {"n_bits": 8, "data_range": "centered", "pad_to": None, "noise_std": 0.05}
    glow = Glow(shape=(1, 8, 8), levels=2, flow_steps=1, width=4, preprocessing=preprocessing)
    spec = flow_spec(glow)
    del spec["init_args"]["preprocessing"]["dequantization"]
    check_compatible(spec, glow, "old.ckpt")
    other = Glow(shape=(1, 8, 8), levels=2, flow_steps=1, width=4, preprocessing={**preprocessing, "noise_std": 0.1})
    with pytest.raises(CheckpointError, match=r"differs from the configured .* in \['preprocessing'\]"):
        check_compatible(spec, other, "old.ckpt")


@pytest.mark.parametrize(
    ("class_path", "old", "new"),
    [
        ("lgm.flow.nice.NiceFlow", {"hidden": 8}, {"width": 8}),
        ("lgm.flow.realnvp.RealNVP", {"hidden": 8, "blocks": 1}, {"width": 8, "depth": 1}),
        ("lgm.flow.glow.Glow", {"hidden": 4, "steps": 1}, {"width": 4, "flow_steps": 1}),
        ("lgm.flow.glow.VectorGlow", {"hidden": 8, "steps": 2}, {"width": 8, "flow_steps": 2}),
        (
            "lgm.flow.matching.FlowMatching",
            {"hidden": 8, "widths": [8, 8], "embed": 8, "steps": 4},
            {"width": 8, "level_widths": [8, 8], "embedding_width": 8, "steps": 4},
        ),
    ],
)
def test_format_3_sizes_take_the_width_depth_vocabulary(class_path, old, new):
    """``hidden``/``blocks``/``widths``/``embed`` and Glow's ``steps`` became ``width``/``depth``/... in format 4;
    the solver steps of flow matching keep their name."""
    upgraded = upgrade_spec({"format": 3, "class_path": class_path, "init_args": dict(old)}, "test")
    assert upgraded == {"format": 4, "class_path": class_path, "init_args": new}
    assert build_flow(upgraded).init_args.items() >= new.items()
