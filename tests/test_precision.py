"""Mixed precision that keeps flows exact: networks in bf16, the flow's maps, log-dets and priors in float32."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from helpers import initialized_net, randomise
from torch import nn

from lgm.data import ToyDataModule
from lgm.flow import FlowMatching, Glow, NiceFlow, Preprocessing, load, save
from lgm.flow.checks import check_invertible, jacobian_logdet
from lgm.flow.coupling import AdditiveVectorCoupling, AffineVectorCoupling, ImageCoupling
from lgm.flow.nets import glow_net, mlp
from lgm.flow.precision import run_network
from lgm.train import fit_flow
from lgm.utils import hardware


def bf16(transform):
    transform.network_dtype = torch.bfloat16
    return transform


COUPLINGS = {
    "image-affine": (lambda: ImageCoupling(4, partial(glow_net, width=8)), (4, 4, 4)),
    "image-checkerboard": (lambda: ImageCoupling(2, partial(glow_net, width=8), mask="checkerboard"), (2, 4, 4)),
    "image-additive": (lambda: ImageCoupling(4, partial(glow_net, width=8), affine=False), (4, 4, 4)),
    "vector-affine": (lambda: AffineVectorCoupling(6, mlp(3, 6, width=8), scale="exp"), (6,)),
    "vector-additive": (lambda: AdditiveVectorCoupling(6, mlp(3, 3, width=8)), (6,)),
}


@pytest.mark.parametrize("name", sorted(COUPLINGS))
def test_a_coupling_with_a_bf16_network_inverts_and_its_logdet_is_exact_at_float32(name):
    """The network's output enters only through the kept half, so the inverse recomputes it from the same
    input bits, and the log-det depends on it only through the (float32) scale."""
    build, shape = COUPLINGS[name]
    torch.manual_seed(0)
    coupling = bf16(initialized_net(randomise(build(), seed=1, std=0.1), shape))
    x = torch.randn(3, *shape)
    with torch.no_grad():
        z, logdet = coupling(x)
        back = coupling.inverse(z)
    assert z.dtype == logdet.dtype == back.dtype == torch.float32
    torch.testing.assert_close(back, x, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logdet, jacobian_logdet(coupling, x), rtol=1e-5, atol=1e-4)


def glow(**kwargs):
    torch.manual_seed(0)
    flow = Glow(shape=(1, 8, 8), levels=2, flow_steps=2, width=8, **kwargs)
    flow.initialize(torch.rand(16, 1, 8, 8))
    return randomise(flow, seed=2, std=0.05)


def test_a_glow_with_bf16_networks_has_the_exact_logdet_of_the_map_it_computes():
    flow = glow()
    flow.use_network_precision("bf16-mixed")
    x = torch.rand(4, 1, 8, 8)
    report = check_invertible(flow, x, n_jacobian=4)
    assert report.logdet_error < 1e-3
    # Each layer inverts exactly, but float32 round-off (1e-7) in a kept half can flip a bf16 rounding
    # inside the next network: the composed round trip holds to bf16 accuracy, not to float32's.
    assert report.roundtrip_error < 1e-2


def test_only_the_networks_compute_in_bf16():
    flow = glow(learned_prior=True)
    flow.use_network_precision("bf16-mixed")
    networks = {id(m) for net in flow.networks() for m in net.modules()}
    dtypes: dict[str, set[torch.dtype]] = {"network": set(), "flow": set()}

    def record(module, inputs, output):
        outputs = output if isinstance(output, tuple) else (output,)
        kind = "network" if id(module) in networks else "flow"
        dtypes[kind] |= {t.dtype for t in outputs if isinstance(t, torch.Tensor) and t.is_floating_point()}

    hooks = [m.register_forward_hook(record) for m in flow.modules()]
    with torch.no_grad():
        log_p = flow.log_prob(torch.rand(4, 1, 8, 8))
        samples = flow.sample(4, temperature=0.7)
    for hook in hooks:
        hook.remove()
    assert torch.bfloat16 in dtypes["network"]
    assert dtypes["flow"] == {torch.float32}
    assert log_p.dtype == samples.dtype == torch.float32 and torch.isfinite(log_p).all()


def test_bf16_networks_change_bits_per_dim_by_their_rounding_only():
    flow = glow()
    x = (torch.rand(8, 1, 8, 8) * 255).round().to(torch.uint8)
    torch.manual_seed(3)
    full = flow.bits_per_dim(x)
    flow.use_network_precision("bf16-mixed")
    torch.manual_seed(3)
    mixed = flow.bits_per_dim(x)
    assert 0 < (full - mixed).abs().max() < 0.01
    flow.use_network_precision("32")
    torch.manual_seed(3)
    assert torch.equal(flow.bits_per_dim(x), full)


def small_image_flow_matching() -> FlowMatching:
    torch.manual_seed(0)
    model = FlowMatching((1, 4, 4), preprocessing=Preprocessing(), level_widths=(8, 8), embedding_width=8, steps=4)
    randomise(model.velocity, seed=1, std=0.2)  # an untrained field is v = 0 whatever the precision
    return model


def test_flow_matching_runs_its_velocity_in_bf16_and_its_ode_and_loss_in_float32():
    model = small_image_flow_matching()
    model.use_network_precision("bf16-mixed")
    seen = set()
    hook = model.velocity.register_forward_hook(lambda m, i, out: seen.add(out.dtype))
    x = (torch.rand(6, 1, 4, 4) * 255).round().to(torch.uint8)
    loss = model.objective(x)
    with torch.no_grad():
        samples = model.sample(3)
    hook.remove()
    assert seen == {torch.bfloat16}
    assert loss.dtype == samples.dtype == torch.float32 and torch.isfinite(loss).all()


def test_auto_precision_follows_the_hardware(monkeypatch):
    flow = NiceFlow.toy(width=8)
    monkeypatch.setattr("lgm.flow.precision.has_bf16_units", lambda device: True)
    flow.use_network_precision("auto")
    assert flow.network_precision == "bf16-mixed"
    assert {t.network_dtype for t in flow.transform.modules() if hasattr(t, "network_dtype")} == {torch.bfloat16}
    monkeypatch.setattr("lgm.flow.precision.has_bf16_units", lambda device: False)
    flow.use_network_precision("auto")
    assert flow.network_precision == "32"
    assert {t.network_dtype for t in flow.transform.modules() if hasattr(t, "network_dtype")} == {None}


def test_unknown_precisions_are_refused_and_the_precision_is_not_saved(tmp_path):
    flow = NiceFlow.toy(width=8)
    with pytest.raises(ValueError, match="unknown network precision 'fp8'; choose 'auto' or one of"):
        flow.use_network_precision("fp8")
    flow.use_network_precision("bf16-mixed")
    save(flow, tmp_path / "model.pt")
    assert load(tmp_path / "model.pt").network_precision == "32"


def test_training_with_bf16_networks_logs_the_precision_and_the_machine(tmp_path):
    result = fit_flow(
        NiceFlow.toy(width=8),
        ToyDataModule(n_train=512, n_val=64, n_test=64),
        steps=4,
        run_dir=tmp_path,
        progress=False,
        network_precision="bf16-mixed",
    )
    assert result.flow.network_precision == "bf16-mixed"
    hparams = (tmp_path / "hparams.yaml").read_text()
    assert "network_precision: bf16-mixed" in hparams and hardware.cpu_model() in hparams
    assert torch.isfinite(torch.tensor(result.final("val/nll")))


def test_trainer_mixed_precision_is_refused_with_the_switch_to_use(tmp_path):
    with pytest.raises(ValueError, match="is not for flows.*use --model.network_precision bf16-mixed"):
        fit_flow(
            NiceFlow.toy(width=8),
            ToyDataModule(n_train=512, n_val=64, n_test=64),
            steps=2,
            run_dir=tmp_path,
            progress=False,
            trainer_args={"precision": "bf16-mixed"},
        )


def test_bf16_units_are_read_from_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: ["avx2", "avx512f"])
    assert not hardware.has_bf16_units("cpu")
    monkeypatch.setattr(hardware, "cpu_flags", lambda: ["avx2", "avx512f", "amx_bf16"])
    assert hardware.has_bf16_units("cpu")
    line = hardware.machine_line()
    assert "amx_bf16" in line and "thread" in line


def test_network_dtype_none_switches_off_an_enclosing_autocast():
    """A flow set to "32" keeps its networks in float32 even inside someone's autocast."""
    net, x = nn.Linear(16, 16), torch.randn(2, 16)
    full = net(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(run_network(net, None, x), full)
        assert not torch.equal(run_network(net, torch.bfloat16, x), full)


def test_flow_matching_keeps_the_adaptive_solver_in_float32():
    """bf16 rounding would look like error to dopri5's step control; fixed-step solvers take bf16."""
    model = small_image_flow_matching()
    x = (torch.rand(4, 1, 4, 4) * 255).round().to(torch.uint8)
    torch.manual_seed(1)
    full = model.bits_per_dim(x)
    model.use_network_precision("bf16-mixed")
    seen = set()
    hook = model.velocity.register_forward_hook(lambda m, i, out: seen.add(out.dtype))
    torch.manual_seed(1)
    assert model.likelihood_info()["solver"] == "dopri5" and torch.equal(model.bits_per_dim(x), full)
    assert seen == {torch.float32}
    model.use_likelihood_solver("rk4", 4)
    model.bits_per_dim(x)
    hook.remove()
    assert torch.bfloat16 in seen
