"""Few-step flow matching: time grids and the two-step Adams-Bashforth solver, classifier-free guidance
of flow matching, and MeanFlow (the identity at the closed-form transport, training from scratch,
starting from and distilling a trained FlowMatching, likelihoods, the CLI)."""

import math

import pytest
import torch
from torch import nn

from lgm.cli import main
from lgm.flow import FlowMatching, Glow, Latent, MeanFlow, Preprocessing, load, save
from lgm.flow.ode import odeint, time_grid

# --- time grids and solvers ------------------------------------------------------------------------


def test_time_grids_end_at_the_interval_and_shift_their_steps():
    assert time_grid(0.0, 1.0, 4) == [0.0, 0.25, 0.5, 0.75, 1.0]
    shifted = time_grid(0.0, 1.0, 4, time_shift=3.0)
    steps = [b - a for a, b in zip(shifted, shifted[1:])]
    assert shifted[0] == 0.0 and shifted[-1] == 1.0 and all(h > 0 for h in steps)
    assert steps == sorted(steps)  # k > 1: short steps near t = 0 (noise), long ones near the data
    later = time_grid(0.0, 1.0, 4, time_shift=1 / 3)
    assert [b - a for a, b in zip(later, later[1:])] == pytest.approx(steps[::-1])  # 1/k mirrors k
    assert time_grid(1.0, 0.0, 4, time_shift=3.0) == shifted[::-1]  # backwards: the same times
    with pytest.raises(ValueError, match="time shift needs times in"):
        time_grid(0.0, 2.0, 4, time_shift=2.0)
    with pytest.raises(ValueError, match="time shift must be a finite number > 0"):
        time_grid(0.0, 1.0, 4, time_shift=0.0)


@pytest.mark.parametrize("time_shift", [1.0, 3.0])
def test_adams2_is_second_order_at_one_evaluation_per_step_on_even_and_uneven_steps(time_shift):
    """dy/dt = y from 0 to 1: the error falls 4-fold when the steps double."""

    def error(steps):
        start = (torch.ones(1, dtype=torch.float64),)
        (y,), nfe = odeint(lambda t, s: (s[0],), start, 0.0, 1.0, "adams2", steps, time_shift=time_shift)
        return abs(y.item() - math.e), nfe

    (coarse, nfe), (fine, _) = error(16), error(32)
    assert nfe == 16 and math.log2(coarse / fine) == pytest.approx(2, abs=0.3)


# --- classifier-free guidance of flow matching -----------------------------------------------------


def guided_model(label_dropout=0.2):
    torch.manual_seed(0)
    model = FlowMatching(2, width=16, depth=2, embedding_width=8, n_classes=3, label_dropout=label_dropout, steps=4)
    with torch.no_grad():  # the zero-initialised output layer would make every velocity 0
        model.velocity.net[-1].weight.normal_(0, 0.5)
    return model.eval()


def draw(model, labels, seed=0):
    torch.manual_seed(seed)
    return model.sample(len(labels) if labels is not None else 4, labels=labels)


def test_guidance_scale_1_is_the_conditional_model_and_0_the_unconditional_one():
    model, labels = guided_model(), torch.tensor([0, 1, 2, 0])
    conditional = draw(model, labels)
    model.use_guidance(0.0)
    assert torch.equal(draw(model, labels), draw(model, None))  # labels=None: the unconditional model
    model.use_guidance(1.0)
    assert torch.equal(draw(model, labels), conditional)
    assert model.solver_info()["network_evaluations"] == 4 * 4  # rk4 x 4, one network evaluation each
    model.use_guidance(2.5)
    guided = draw(model, labels)
    assert (guided - conditional).abs().max() > 1e-3
    assert model.solver_info()["network_evaluations"] == 2 * 4 * 4


def test_the_guided_velocity_is_the_unconditional_one_plus_s_times_the_difference():
    model, labels = guided_model(), torch.tensor([0, 1, 2, 0])
    y, t = torch.randn(4, 2), torch.rand(4)
    conditional = model.velocity(y, t, labels)
    unconditional = model.velocity(y, t, torch.full((4,), 3))  # class 3: "no class"
    model.use_guidance(2.5)
    expected = unconditional + 2.5 * (conditional - unconditional)
    torch.testing.assert_close(model._guided_velocity(y, t, labels), expected)


def test_label_dropout_drops_labels_in_training_only_and_makes_the_model_unconditional_too():
    model, labels = guided_model(label_dropout=0.3), torch.zeros(20_000, dtype=torch.long)
    model.train()
    dropped = model.class_indices(labels, len(labels), labels.device) == 3
    assert 0.28 < dropped.float().mean().item() < 0.32
    model.eval()
    assert torch.equal(model.class_indices(labels, len(labels), labels.device), labels)
    assert model.capabilities.guidance and model.log_prob(torch.randn(2, 2)).shape == (2,)


def test_guidance_needs_a_model_trained_with_label_dropout_and_every_family_takes_scale_1():
    plain = guided_model(label_dropout=0.0)
    assert not plain.capabilities.guidance and plain.velocity.conditioning.classes.num_embeddings == 3
    with pytest.raises(ValueError, match="this model is class-conditional"):
        plain.sample(2)
    with pytest.raises(ValueError, match="needs a class-conditional model trained with label dropout"):
        plain.use_guidance(2.0)
    plain.use_guidance(1.0)
    with pytest.raises(ValueError, match="has no guided sampling"):
        FlowMatching(2).use_guidance(2.0)
    with pytest.raises(ValueError, match="guidance scale must be a finite number >= 0"):
        guided_model().use_guidance(-1.0)
    with pytest.raises(ValueError, match="no attention to soften"):
        guided_model().use_guidance(2.0, attention_temperature=1.5)
    Glow((1, 4, 4), levels=1, flow_steps=1, width=4).use_guidance(1.0)


# --- MeanFlow: the identity at the closed-form transport -------------------------------------------

MEAN, STD = 2.0, 0.5  # data N(MEAN, STD^2) in 1-D, noise N(0, 1), independent pairs


def path_std(t):
    """The standard deviation of y_t = (1 - t) y_0 + t y_1 around t * MEAN."""
    return ((1 - t) ** 2 + (t * STD) ** 2).sqrt()


def transport(y, s, t):
    """The closed-form flow map of the marginal velocity field from time s to t."""
    return t * MEAN + path_std(t) / path_std(s) * (y - s * MEAN)


class MarginalVelocity(nn.Module):
    def forward(self, y, t, classes=None):
        t = t[:, None]
        return MEAN + (-(1 - t) + t * STD**2) / path_std(t) ** 2 * (y - t * MEAN)


class AverageVelocity(nn.Module):
    """The closed-form u(y, s, s + d) = (transport(y, s, s + d) - y) / d, the marginal velocity at d = 0."""

    def __init__(self, sign=1.0):
        super().__init__()
        self.sign = sign  # -1: the map of the wrong direction of time

    def forward(self, y, s, classes=None, interval=None):
        d = self.sign * interval[:, None]
        at_zero = d.abs() < 1e-12
        average = (transport(y, s[:, None], s[:, None] + d) - y) / torch.where(at_zero, torch.ones_like(d), d)
        return torch.where(at_zero, MarginalVelocity()(y, s), average)


def closed_form_meanflow(sign=1.0, flow_map_fraction=1.0):
    model = MeanFlow(1, weighting_power=0.0, flow_map_fraction=flow_map_fraction, teacher=True).double()
    model.velocity, model.teacher = AverageVelocity(sign), MarginalVelocity()
    model.teacher_ready.fill_(True)
    return model


@pytest.mark.parametrize("flow_map_fraction", [1.0, 0.5])
def test_the_closed_form_average_velocity_is_a_fixed_point_of_the_meanflow_target(flow_map_fraction):
    """With the true velocity (the teacher) and the true average velocity, u = v + (t - s) du/ds holds
    exactly: MeanFlow's loss is 0 (for pairs s < t and s = t alike); the average velocity of the other
    direction of time is no fixed point."""
    torch.manual_seed(0)
    x = MEAN + STD * torch.randn(256, 1, dtype=torch.float64)
    assert closed_form_meanflow(flow_map_fraction=flow_map_fraction).objective(x).max() < 1e-12
    wrong = closed_form_meanflow(-1.0, flow_map_fraction).objective(x)
    assert wrong.mean() > 1e-3 * flow_map_fraction


class ClassIndexVelocity(nn.Module):
    """A teacher whose velocity is its class index everywhere ("no class": n_classes)."""

    def forward(self, y, s, classes=None, interval=None):
        return classes.to(y.dtype)[:, None].expand_as(y)


class StandingStill(nn.Module):
    def forward(self, y, s, classes=None, interval=None):
        return torch.zeros_like(y)


@pytest.mark.parametrize("teacher_guidance", [1.0, 3.0])
def test_a_guided_teacher_gives_labelled_pairs_the_guided_velocity_and_dropped_labels_the_unconditional(
    teacher_guidance,
):
    """With the student standing still and s = t, the loss (unweighted) is the target squared: the
    teacher's v_u + w (v_c - v_u) = 2 + w (c - 2) for class c of 2 ("no class" = 2), and 2 for a dropped label."""
    model = MeanFlow(
        1,
        n_classes=2,
        label_dropout=0.999,
        teacher=True,
        teacher_guidance=teacher_guidance,
        weighting_power=0.0,
        flow_map_fraction=0.0,
    ).double()
    model.velocity, model.teacher = StandingStill(), ClassIndexVelocity()
    model.teacher_ready.fill_(True)
    x, labels = torch.zeros(4, 1, dtype=torch.float64), torch.tensor([0, 1, 0, 1])
    guided = 2 + teacher_guidance * (labels.double() - 2)
    torch.testing.assert_close(model.eval().objective(x, labels), guided.square())
    torch.manual_seed(0)  # label dropout 0.999: every label dropped
    torch.testing.assert_close(model.train().objective(x, labels), torch.full((4,), 4.0, dtype=torch.float64))


def test_teacher_guidance_needs_a_teacher_with_label_dropout():
    with pytest.raises(ValueError, match="teacher_guidance needs a class-conditional teacher trained with label"):
        MeanFlow(1, n_classes=2, teacher=True, teacher_guidance=2.0)
    with pytest.raises(ValueError, match="guidance scale must be a finite number >= 0"):
        MeanFlow(1, n_classes=2, label_dropout=0.1, teacher=True, teacher_guidance=-1.0)


def test_the_closed_form_flow_map_samples_the_data_in_one_step():
    model = closed_form_meanflow()
    z = torch.linspace(-2, 2, 9, dtype=torch.float64)[:, None]
    for steps in (1, 3):
        model.use_solver("flow_map", steps, time_shift=2.0)
        torch.testing.assert_close(model.decode(Latent(z)), MEAN + STD * z)
        assert model.solver_info()["velocity_evaluations"] == steps


@pytest.mark.slow
def test_meanflow_trained_from_scratch_learns_the_one_step_transport():
    torch.manual_seed(0)
    # Every pair s < t, spread wide (the one-step map needs intervals near [0, 1]), no adaptive weight.
    model = MeanFlow(1, width=32, depth=2, embedding_width=16, flow_map_fraction=1.0, time_mean=0.0, time_std=2.0)
    model.weighting_power = 0.0
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 1200)
    for _ in range(1200):
        loss = model.objective(MEAN + STD * torch.randn(512, 1)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    z = torch.linspace(-2, 2, 9)[:, None]
    with torch.no_grad():
        errors = {}
        for steps in (1, 4):
            model.use_solver("flow_map", steps)
            errors[steps] = (model.decode(Latent(z)) - (MEAN + STD * z)).abs().max().item()
    # A new model's one jump is Euler's step along v(y, 0) = MEAN - y: every z lands on MEAN (error 1.0).
    assert errors[1] < 0.35 and errors[4] < 0.15


# --- MeanFlow from a trained FlowMatching -----------------------------------------------------------


ODE = {"likelihood_solver": "rk4", "likelihood_steps": 8}


def trained_like_flow_matching():
    torch.manual_seed(0)
    fm = FlowMatching((1, 4, 4), preprocessing=Preprocessing(), level_widths=(8, 8), embedding_width=8, **ODE)
    with torch.no_grad():
        for p in fm.velocity.parameters():
            p.normal_(0, 0.2)
    return fm.eval()


def test_a_meanflow_started_from_a_flow_matching_model_is_that_model_at_every_interval():
    fm = trained_like_flow_matching()
    mf = MeanFlow((1, 4, 4), preprocessing=Preprocessing(), level_widths=(8, 8), embedding_width=8, teacher=True, **ODE)
    mf.start_from(fm)
    mf.eval()
    y, s = torch.randn(3, 1, 4, 4), torch.rand(3)
    with torch.no_grad():
        v = fm.velocity(y, s)
        for interval in (torch.zeros(3), torch.rand(3)):
            torch.testing.assert_close(mf.velocity(y, s, None, interval), v)
        torch.testing.assert_close(mf.teacher(y, s), v)
    # The likelihood is the ODE of u(y, t, t): the flow-matching model's, solver for solver.
    x = torch.randint(0, 256, (2, 1, 4, 4), dtype=torch.uint8)
    torch.manual_seed(1)
    expected = fm.bits_per_dim(x)
    torch.manual_seed(1)
    torch.testing.assert_close(mf.bits_per_dim(x), expected)
    # ODE solvers sample the same model; flow_map jumps are Euler steps of it before training.
    for solver, steps in (("rk4", 4), ("flow_map", 2)):
        mf.use_solver(solver, steps)
        fm.use_solver("euler" if solver == "flow_map" else solver, steps)
        z = torch.randn(2, 1, 4, 4)
        torch.testing.assert_close(mf.decode(Latent(z)), fm.decode(Latent(z)))


def test_start_from_refuses_another_family_or_architecture():
    mf = MeanFlow((1, 4, 4), preprocessing=Preprocessing(), level_widths=(8, 8), embedding_width=8)
    with pytest.raises(ValueError, match="starts from a trained FlowMatching, not a Glow"):
        mf.start_from(Glow((1, 4, 4), levels=1, flow_steps=1, width=4))
    with pytest.raises(ValueError, match="has another architecture"):
        mf.start_from(FlowMatching((1, 4, 4), preprocessing=Preprocessing(), level_widths=(8, 16), embedding_width=8))
    with pytest.raises(ValueError, match="can start from a Glow, not a FlowMatching"):
        Glow((1, 4, 4), levels=1, flow_steps=1, width=4).start_from(trained_like_flow_matching())


def test_a_distilled_meanflow_without_its_teacher_samples_the_same_from_a_file_half_the_size(tmp_path):
    architecture = dict(
        preprocessing=Preprocessing(), level_widths=(8, 8), embedding_width=8, n_classes=2, label_dropout=0.1
    )
    mf = MeanFlow((1, 4, 4), teacher=True, teacher_guidance=2.0, **architecture)
    mf.start_from(FlowMatching((1, 4, 4), **architecture))
    mf.use_solver("flow_map", 2, time_shift=2.0)
    student = mf.without_teacher()
    assert student.teacher is None and student.init_args["teacher"] is False
    assert (student.solver, student.steps, student.time_shift) == ("flow_map", 2, 2.0)
    save(mf, tmp_path / "mf.pt")
    save(student, tmp_path / "student.pt")
    assert (tmp_path / "student.pt").stat().st_size < 0.6 * (tmp_path / "mf.pt").stat().st_size
    z, labels = torch.randn(3, 1, 4, 4), torch.tensor([0, 1, 1])
    with torch.no_grad():
        expected = mf.decode(Latent(z), labels)
        torch.testing.assert_close(load(tmp_path / "student.pt").decode(Latent(z), labels), expected)


def test_distillation_regresses_on_the_teacher_and_a_meanflow_saves_and_loads_with_it(tmp_path):
    fm = trained_like_flow_matching()
    mf = MeanFlow((1, 4, 4), preprocessing=Preprocessing(), level_widths=(8, 8), embedding_width=8, teacher=True)
    x = torch.randint(0, 256, (8, 1, 4, 4), dtype=torch.uint8)
    with pytest.raises(ValueError, match="distils a teacher it has not got: start it from a trained FlowMatching"):
        mf.objective(x)
    mf.start_from(fm)
    loss = mf.objective(x).mean()
    loss.backward()
    assert loss > 0 and all(p.grad is None for p in mf.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in mf.velocity.parameters())
    save(mf, tmp_path / "mf.pt")
    loaded = load(tmp_path / "mf.pt")
    assert isinstance(loaded, MeanFlow) and loaded.teacher is not None and loaded.teacher_ready
    z = torch.randn(2, 1, 4, 4)
    torch.testing.assert_close(loaded.decode(Latent(z)), mf.eval().decode(Latent(z)))


def test_meanflow_arguments_and_samplers_are_checked():
    with pytest.raises(ValueError, match="flow_map_fraction must be in"):
        MeanFlow(2, flow_map_fraction=1.5)
    with pytest.raises(ValueError, match="need time_std > 0"):
        MeanFlow(2, time_std=0.0)
    mf = MeanFlow(2)
    with pytest.raises(ValueError, match="unknown sampler 'leapfrog'; choose flow_map or an ODE solver"):
        mf.use_solver("leapfrog")
    assert mf.solver == "flow_map" and mf.capabilities.solver and not mf.capabilities.guidance
    assert mf.capabilities.objective == "meanflow"  # logged as train/meanflow, val/meanflow
    with pytest.raises(ValueError, match="unknown ODE solver 'flow_map'"):
        FlowMatching(2, solver="flow_map")


def test_lgm_flow_distils_a_flow_matching_checkpoint_into_a_meanflow_and_samples_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    common = ["--data", "lgm.data.ImageDataModule", "--data.init_args.name", "digits"]
    common += ["--data.init_args.batch_size", "100", "--model.flow.init_args.shape", "[1, 8, 8]"]
    common += ["--model.flow.init_args.level_widths", "[8, 8]", "--model.flow.init_args.embedding_width", "8"]
    common += ["--model.flow.init_args.n_classes", "10", "--model.flow.init_args.label_dropout", "0.1"]
    common += ["--model.flow.init_args.preprocessing.n_bits", "8"]
    common += ["--sample_grid.temperatures", "[1.0]", "--sample_grid.n", "4", "--trainer.max_steps", "3"]
    common += ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    common += ["--trainer.limit_val_batches", "1"]
    main(["fit", "--model.flow", "lgm.flow.FlowMatching", "--model.flow.init_args.steps", "2", *common])
    (fm_run,) = list((tmp_path / "runs" / "lgm").iterdir())
    teacher_ckpt = fm_run / "checkpoints" / "last.ckpt"
    main(
        ["fit", "--model.flow", "lgm.flow.MeanFlow", "--model.flow.init_args.teacher", "true"]
        + ["--model.start_from", str(teacher_ckpt), *common]
    )
    mf_run = next(r for r in (tmp_path / "runs" / "lgm").iterdir() if r != fm_run)
    mf = load(mf_run / "checkpoints" / "last.ckpt")
    assert isinstance(mf, MeanFlow) and mf.teacher is not None
    torch.testing.assert_close(mf.teacher.state_dict(), load(teacher_ckpt).velocity.state_dict())
    out = tmp_path / "guided.png"
    main(
        ["sample", "--ckpt", str(mf_run / "checkpoints" / "last.ckpt"), "--n", "10", "--guidance", "2"]
        + ["--steps", "2", "--time-shift", "1.5", "--out", str(out)]
    )
    assert out.is_file() and "(flow_map x 2: 2 velocity evaluations, 4 network evaluations)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["fit", "--model.flow", "lgm.flow.MeanFlow", "--model.start_from", str(tmp_path / "none.ckpt"), *common])
