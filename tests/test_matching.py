"""Flow matching: ODE solvers, the learned field against the closed form, likelihoods, and the surfaces."""

import itertools
import json
import math

import pytest
import torch

from lgm.cli import main
from lgm.data import ToyDataModule
from lgm.evaluate import integrate_density
from lgm.flow import FlowMatching, Preprocessing, load, save
from lgm.flow.io import CheckpointError
from lgm.flow.matching import _ot_assignment
from lgm.flow.ode import odeint
from lgm.train import fit_flow

MEAN, STD = torch.tensor([1.0, -0.5]), 0.5


# --- solvers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("solver, order", [("euler", 1), ("midpoint", 2), ("heun", 2), ("rk4", 4)])
def test_fixed_step_solvers_converge_at_their_order(solver, order):
    """dy/dt = y from t = 0 to 1: the error at t = 1 falls by 2**order when the steps double."""

    def error(steps):
        (y,), nfe = odeint(lambda t, s: (s[0],), (torch.ones(1, dtype=torch.float64),), 0.0, 1.0, solver, steps)
        return abs(y.item() - math.e), nfe

    (coarse, nfe), (fine, _) = error(8), error(16)
    assert math.log2(coarse / fine) == pytest.approx(order, abs=0.3)
    assert nfe == 8 * {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}[solver]


def test_solvers_integrate_backwards_in_time():
    (y,), _ = odeint(lambda t, s: (s[0],), (torch.tensor([math.e]),), 1.0, 0.0, "rk4", 32)
    assert y.item() == pytest.approx(1.0, abs=1e-6)


def test_adaptive_dopri5_reaches_its_tolerance_and_counts_evaluations():
    (y,), nfe = odeint(
        lambda t, s: (math.cos(t) * s[0],),
        (torch.ones(3, dtype=torch.float64),),
        0.0,
        2.0,
        "dopri5",
        rtol=1e-8,
        atol=1e-8,
    )
    assert torch.allclose(y, torch.full_like(y, math.exp(math.sin(2.0))), atol=1e-6) and nfe > 6


@pytest.mark.parametrize(
    "solver, steps, message",
    [
        ("rk5", 8, "unknown ODE solver 'rk5'; choose one of euler, midpoint, heun, rk4, adams2, dopri5"),
        ("euler", 0, "positive integer"),
        ("euler", 2.5, "positive integer"),
    ],
)
def test_bad_solver_names_and_step_counts_are_refused(solver, steps, message):
    with pytest.raises(ValueError, match=message):
        FlowMatching(2, solver=solver, steps=steps)


def test_other_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="pairing must be one of"):
        FlowMatching(2, pairing="sinkhorn")
    with pytest.raises(ValueError, match="divergence must be one of"):
        FlowMatching(2, divergence="skilling")
    with pytest.raises(ValueError, match="for images give their preprocessing"):
        FlowMatching((1, 8, 8))
    with pytest.raises(ValueError, match="divisible by 4"):
        FlowMatching((1, 6, 6), preprocessing=Preprocessing(), level_widths=(8, 8, 8)).log_prob(torch.rand(2, 1, 6, 6))


# --- the learned field -------------------------------------------------------------------------------


def closed_form_velocity(x, t):
    """E[x1 - x0 | x_t = x] for x0 ~ N(0, I), x1 ~ N(MEAN, STD^2 I), x_t = (1 - t) x0 + t x1."""
    var = (1 - t) ** 2 + t**2 * STD**2
    return MEAN + (t * STD**2 - (1 - t)) / var * (x - t * MEAN)


class GaussianData(ToyDataModule):
    """N(MEAN, STD^2 I) samples in the toy data module's clothes."""

    def setup(self, stage=None):
        draw = lambda n, seed: MEAN + STD * torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))  # noqa: E731
        self.train_data, self.val_data, self.test_data = (
            draw(self.n_train, 0),
            draw(self.n_val, 1),
            draw(self.n_test, 2),
        )


@pytest.fixture(scope="module")
def gaussian_model(tmp_path_factory):
    torch.manual_seed(0)
    model = FlowMatching(2, width=64, depth=2, embedding_width=16)
    data = GaussianData(n_train=8192, n_val=512, n_test=512, batch_size=256)
    fit_flow(model, data, steps=1500, lr=3e-3, run_dir=tmp_path_factory.mktemp("fm"), progress=False)
    return model


@pytest.mark.slow
def test_learned_velocity_matches_the_closed_form(gaussian_model):
    for t in (0.1, 0.5, 0.9):  # where the path's mass is at time t: x_t ~ N(t MEAN, sigma_t^2 I)
        sigma_t = math.sqrt((1 - t) ** 2 + t**2 * STD**2)
        x = t * MEAN + sigma_t * torch.randn(2000, 2, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            learned = gaussian_model.velocity(x, torch.full((len(x),), t))
        truth = closed_form_velocity(x, t)
        assert (learned - truth).norm(dim=1).mean() < 0.1 * truth.norm(dim=1).mean(), t


def test_exact_log_prob_integrates_to_one_and_matches_the_truth(gaussian_model):
    bounds = ((-1.5, 3.5), (-3.0, 2.0))  # MEAN +- 5 STD
    assert integrate_density(gaussian_model.log_prob, bounds, resolution=120) == pytest.approx(1.0, abs=0.01)
    x = MEAN + STD * torch.randn(500, 2)
    gap = torch.distributions.Normal(MEAN, STD).log_prob(x).sum(1) - gaussian_model.log_prob(x).detach()
    assert -0.02 < gap.mean() < 0.05 and gap.abs().mean() < 0.15  # KL(truth || model) and its pointwise spread


def test_round_trip_error_shrinks_as_solver_steps_grow(gaussian_model):
    x = MEAN + STD * torch.randn(256, 2)
    errors = []
    for steps in (2, 8, 32):
        gaussian_model.steps = steps
        errors.append((gaussian_model.decode(gaussian_model.encode(x)) - x).abs().max().item())
    gaussian_model.steps = 32
    assert errors[0] > 4 * errors[1] > 16 * errors[2] and errors[2] < 1e-4


def test_temperature_scales_the_initial_noise(gaussian_model):
    at_zero = gaussian_model.sample(4, temperature=0.0)
    assert torch.allclose(at_zero, at_zero[:1].expand(4, 2)) and gaussian_model.last_nfe == 4 * gaussian_model.steps
    assert torch.allclose(at_zero[0], MEAN, atol=0.1)
    samples = gaussian_model.sample(4000)
    assert torch.allclose(samples.mean(0), MEAN, atol=0.05) and samples.std(0).sub(STD).abs().max() < 0.05


# --- images: Hutchinson against the exact divergence --------------------------------------------------


def random_image_model(**kwargs):
    torch.manual_seed(1)
    model = FlowMatching(
        (1, 4, 4),
        preprocessing=Preprocessing(),
        level_widths=(8, 8),
        embedding_width=8,
        steps=8,
        likelihood_solver="rk4",
        **kwargs,
    )
    with torch.no_grad():  # the zero-initialised head would make v = 0 and every divergence 0
        for p in model.velocity.head.parameters():
            p.normal_(0, 0.3)
    return model


@pytest.mark.slow
def test_hutchinson_estimate_agrees_with_the_exact_divergence_within_its_error():
    exact_model, x = random_image_model(divergence="exact"), torch.randint(0, 256, (3, 1, 4, 4), dtype=torch.uint8)
    torch.manual_seed(2)
    exact = exact_model.bits_per_dim(x)
    hutchinson_model = random_image_model(divergence="hutchinson", probes=4)
    estimates = []
    for seed in range(40):  # the same dequantisation noise as the exact run, fresh probes
        torch.manual_seed(2)
        u = torch.rand(x.shape)
        torch.manual_seed(100 + seed)
        y = (x.float() + u) / 256
        estimates.append(-hutchinson_model.log_prob(y) / (16 * math.log(2)) + 8)
    estimates = torch.stack(estimates)
    stderr = estimates.std(0) / math.sqrt(len(estimates))
    assert ((estimates.mean(0) - exact).abs() < 4 * stderr + 1e-4).all()
    assert (estimates.std(0) > 0).all()  # a real estimate, not the exact value again


@pytest.mark.parametrize("normalize", ["global", "per_pixel"])
def test_normalised_data_space_keeps_the_likelihood_exact(normalize, tmp_path):
    """An untrained field (zero velocity) on standardised data is the Gaussian of ``u = (y - 0.5 - mean) / std``:
    log p(y) must be log N(u; 0, I) - sum log std, with the statistics of the initialising batch."""
    model = FlowMatching(
        (1, 4, 4),
        preprocessing=Preprocessing(normalize=normalize),
        level_widths=(8, 8),
        embedding_width=8,
        steps=4,
        likelihood_solver="rk4",
    )
    g = torch.Generator().manual_seed(3)
    batch = 0.2 + 0.5 * torch.rand(64, 1, 4, 4, generator=g)
    model.initialize(batch)
    centred = batch - 0.5
    mean, std = (centred.mean(), centred.std()) if normalize == "global" else (centred.mean(0), centred.std(0))
    y = torch.rand(3, 1, 4, 4, generator=g)
    u = ((y - 0.5 - mean) / std).flatten(1)
    expected = -0.5 * (u.square() + math.log(2 * math.pi)).sum(1) - torch.log(std).expand(1, 4, 4).sum()
    torch.testing.assert_close(model.log_prob(y), expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(model.decode(model.encode(y)), y, atol=1e-5, rtol=0)
    save(model, tmp_path / "fm.pt")
    torch.testing.assert_close(load(tmp_path / "fm.pt").log_prob(y), expected, rtol=1e-5, atol=1e-4)


def test_auto_divergence_is_exact_for_small_dimensions():
    assert random_image_model(divergence="auto").log_prob(torch.rand(2, 1, 4, 4)).shape == (2,)
    small, large = random_image_model(), FlowMatching((1, 12, 12), preprocessing=Preprocessing(), level_widths=(8, 8))
    assert math.prod(small.model_shape) <= 64 < math.prod(large.model_shape)


# --- couplings, conditioning, saving, training surfaces ----------------------------------------------


def test_ot_assignment_is_the_optimal_permutation():
    g = torch.Generator().manual_seed(0)
    noise, data = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    perm = _ot_assignment(noise, data)
    cost = lambda p: (noise[list(p)] - data).square().sum().item()  # noqa: E731
    assert cost(perm.tolist()) == pytest.approx(min(cost(p) for p in itertools.permutations(range(6))))


def test_class_conditional_model_needs_labels_and_saves_and_loads(tmp_path):
    model = FlowMatching(2, width=16, depth=1, n_classes=3)
    with pytest.raises(ValueError, match="pass labels"):
        model.sample(2)
    labels = torch.tensor([0, 2])
    assert model.sample(2, labels=labels).shape == (2, 2)
    assert model.objective(torch.randn(2, 2), labels).shape == (2,)
    save(model, tmp_path / "fm.pt")
    x = torch.randn(2, 2)
    assert torch.allclose(load(tmp_path / "fm.pt").log_prob(x, labels), model.log_prob(x, labels))


@pytest.mark.slow
def test_image_model_trains_validates_on_its_objective_and_tests_bits_per_dim(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    common = [
        "--model.flow",
        "lgm.flow.FlowMatching",
        "--model.flow.init_args.shape",
        "[1, 8, 8]",
        "--model.flow.init_args.preprocessing.n_bits",
        "8",
        "--model.flow.init_args.level_widths",
        "[8, 8]",
        "--model.flow.init_args.steps",
        "4",
        "--data",
        "lgm.data.ImageDataModule",
        "--data.init_args.name",
        "digits",
        "--data.init_args.batch_size",
        "100",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--trainer.log_every_n_steps",
        "1",
    ]
    main(["fit", *common, "--trainer.max_epochs", "1", "--model.flow.init_args.pairing", "ot"])
    run = next((tmp_path / "runs" / "lgm").iterdir())
    metrics = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/fm", "val/fm", "val/loss"} <= set(metrics) and "val/bpd" not in metrics
    main(
        [
            "test",
            *common,
            "--model.flow.init_args.pairing",
            "ot",
            "--ckpt_path",
            str(run / "checkpoints" / "last.ckpt"),
        ]
    )
    model = load(run / "checkpoints" / "last.ckpt")
    bpd = model.bits_per_dim(torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8))
    assert torch.isfinite(bpd).all() and model.sample(3, temperature=0.7).shape == (3, 1, 8, 8)
    assert model.last_nfe == 4 * 4


def test_sample_command_takes_solver_and_steps_and_reports_the_cost(tmp_path, capsys):
    save(FlowMatching(2, width=8, depth=1), tmp_path / "fm.pt")
    main(
        [
            "sample",
            "--ckpt",
            str(tmp_path / "fm.pt"),
            "--n",
            "16",
            "--solver",
            "heun",
            "--steps",
            "3",
            "--out",
            str(tmp_path / "s.png"),
        ]
    )
    assert "(heun x 3: 6 velocity evaluations, 6 network evaluations)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["sample", "--ckpt", str(tmp_path / "fm.pt"), "--steps", "0", "--out", str(tmp_path / "t.png")])
    assert "positive integer" in capsys.readouterr().err


def test_evaluate_reports_on_a_flow_matching_model(tmp_path, monkeypatch):
    from test_evaluate import fake_data

    from lgm.evaluate.classifier import classifier_for, save_classifier

    monkeypatch.setenv("LGM_CACHE_DIR", str(tmp_path / "cache"))
    data = fake_data(tmp_path)
    save_classifier(classifier_for("fashion_mnist"), tmp_path / "classifier.pt")
    save(
        FlowMatching(
            (1, 28, 28),
            preprocessing=Preprocessing(),
            level_widths=(8, 8),
            embedding_width=8,
            steps=2,
            divergence="hutchinson",
        ),
        tmp_path / "fm.pt",
    )
    out = tmp_path / "report.json"
    main(
        [
            "evaluate",
            "--ckpt",
            str(tmp_path / "fm.pt"),
            "--data",
            "fashion_mnist",
            "--data-dir",
            str(data),
            "--metrics",
            "bpd,fid",
            "--n-samples",
            "20",
            "--bpd-images",
            "10",
            "--solver",
            "midpoint",
            "--steps",
            "3",
            "--likelihood-solver",
            "heun",
            "--likelihood-steps",
            "2",
            "--classifier-weights",
            str(tmp_path / "classifier.pt"),
            "--out",
            str(out),
        ]
    )
    report = json.loads(out.read_text())
    assert math.isfinite(report["metrics"]["bpd"]["value"]) and math.isfinite(report["metrics"]["classifier"]["fid"])
    assert report["diagnostics"]["reconstruction_max_abs_error"] < 1e-3  # an untrained field: v = 0
    sampling = report["sampling"]
    assert (sampling["solver"], sampling["steps"], sampling["velocity_evaluations"]) == ("midpoint", 3, 6)
    assert sampling["images"] == 20 and sampling["seconds"] == pytest.approx(
        20 / sampling["images_per_second"], abs=1e-3
    )
    assert report["settings"]["solver"] == "midpoint"
    bpd = report["metrics"]["bpd"]
    assert (bpd["solver"], bpd["steps"], bpd["divergence"], bpd["probes"]) == ("heun", 2, "hutchinson", 1)


def test_evaluate_refuses_solver_options_for_a_coupling_flow(tmp_path, capsys):
    from test_evaluate import fake_data

    from lgm.flow import NiceFlow

    data = fake_data(tmp_path)
    save(
        NiceFlow((1, 28, 28), couplings=2, width=8, depth=1, preprocessing=Preprocessing(data_range="unit")),
        tmp_path / "nice.pt",
    )
    with pytest.raises(SystemExit):
        main(
            [
                "evaluate",
                "--ckpt",
                str(tmp_path / "nice.pt"),
                "--data",
                "fashion_mnist",
                "--steps",
                "4",
                "--data-dir",
                str(data),
                "--out",
                str(tmp_path / "r.json"),
            ]
        )
    assert "continuous flows (FlowMatching, MeanFlow) only, not to NiceFlow" in capsys.readouterr().err


def test_use_solver_keeps_the_old_solver_on_a_bad_value():
    model = FlowMatching(2, width=8, depth=1, solver="rk4", steps=8)
    model.use_solver(steps=3)
    assert (model.solver, model.steps) == ("rk4", 3)
    with pytest.raises(ValueError, match="unknown ODE solver 'leapfrog'"):
        model.use_solver("leapfrog", 5)
    assert (model.solver, model.steps) == ("rk4", 3)


def test_image_likelihoods_integrate_adaptively_by_default_apart_from_the_sampling_solver(tmp_path):
    image, points = (
        FlowMatching((1, 4, 4), preprocessing=Preprocessing(), level_widths=(8, 8), steps=8),
        FlowMatching(2, width=8, depth=1, steps=8),
    )
    assert image.likelihood_integration == ("dopri5", 8) and points.likelihood_integration == ("rk4", 8)
    image.use_likelihood_solver("heun", 3)
    image.log_prob(torch.rand(2, 1, 4, 4))
    assert image.last_nfe == 2 * 3
    image.sample(2)
    assert image.last_nfe == 4 * 8 and (image.solver, image.steps) == ("rk4", 8)
    with pytest.raises(ValueError, match="unknown likelihood solver 'leapfrog'; choose auto or one of"):
        image.use_likelihood_solver("leapfrog")
    assert image.likelihood_integration == ("heun", 3)
    save(FlowMatching(2, width=8, depth=1, likelihood_solver="midpoint", likelihood_steps=5), tmp_path / "fm.pt")
    assert load(tmp_path / "fm.pt").likelihood_integration == ("midpoint", 5)


def test_a_checkpoint_from_before_an_argument_existed_still_resumes():
    from lgm.flow.io import check_compatible, flow_spec

    model = FlowMatching(2, width=8, depth=1)
    old = flow_spec(model)
    old["init_args"] = {k: v for k, v in old["init_args"].items() if not k.startswith("likelihood_")}
    check_compatible(old, model, "old.ckpt")  # the missing arguments take their defaults
    with pytest.raises(CheckpointError, match=r"likelihood_solver"):
        check_compatible(old, FlowMatching(2, width=8, depth=1, likelihood_solver="rk4"), "old.ckpt")


def test_check_invertible_refuses_a_continuous_flow_with_the_reason():
    from lgm.flow import check_invertible

    with pytest.raises(ValueError, match="only up to its ODE solver's error"):
        check_invertible(FlowMatching(2, width=8, depth=1), torch.randn(4, 2))
