"""TarFlow: triangular block Jacobians, exact log-dets, the cached inverse against a naive one, guidance,
label dropout, save/load, and clear errors."""

from __future__ import annotations

import doctest

import pytest
import torch

import lgm.flow.tarflow
from lgm.cli import main
from lgm.flow import Glow, Latent, Preprocessing, TarFlow, check_invertible, load, save
from lgm.flow.tarflow import AutoregressiveBlock, CausalTransformer, Patchify


def tiny(**kwargs) -> TarFlow:
    """A small TarFlow with random (non-zero) output layers, so that no block is the identity."""
    torch.manual_seed(0)
    arguments = dict(shape=(1, 4, 4), patch_size=2, blocks=2, layers=2, width=16, heads=2)
    flow = TarFlow(**{**arguments, **kwargs})
    for block in flow.blocks:
        torch.nn.init.normal_(block.net.output.weight, std=0.3)
        torch.nn.init.normal_(block.net.output.bias, std=0.3)
        torch.nn.init.normal_(block.first, std=0.3)
    return flow.eval()


def block(reverse: bool, n_classes: int | None = None) -> AutoregressiveBlock:
    torch.manual_seed(1)
    net = CausalTransformer(
        tokens=5, token_dim=3, out_dim=6, width=8, layers=2, heads=2, mlp_ratio=2, n_classes=n_classes
    )
    torch.nn.init.normal_(net.output.weight, std=0.5)
    result = AutoregressiveBlock(net, token_dim=3, reverse=reverse).double()
    torch.nn.init.normal_(result.first, std=0.5)
    return result


def naive_inverse(
    block: AutoregressiveBlock, z, classes=None, guidance=1.0, weak_classes=None, weak_temperature=1.0
) -> torch.Tensor:
    """The inverse without a cache: a full Transformer pass per token, guided by the same formula."""
    z = z.flip(1) if block.reverse else z
    x = torch.zeros_like(z)
    first = block.first.expand(z.shape[0], 1, -1)
    for i in range(z.shape[1]):
        params = torch.cat((first, block.net(x, classes)[:, :-1]), dim=1)
        if guidance != 1:
            weak = torch.cat((first, block.net(x, weak_classes, weak_temperature)[:, :-1]), dim=1)
            params = torch.cat((first, (weak + guidance * (params - weak))[:, 1:]), dim=1)
        shift, log_scale = params[:, i : i + 1].chunk(2, dim=-1)
        x[:, i : i + 1] = z[:, i : i + 1] * torch.exp(log_scale) + shift
    return x.flip(1) if block.reverse else x


@pytest.mark.parametrize("reverse", [False, True])
def test_each_block_has_a_triangular_jacobian_in_its_token_order_and_its_logdet(reverse):
    layer = block(reverse)
    x = torch.randn(1, 5, 3, dtype=torch.float64)
    jacobian = torch.autograd.functional.jacobian(lambda v: layer(v)[0], x).reshape(15, 15)
    order = torch.arange(5).flip(0) if reverse else torch.arange(5)
    values = torch.cat([torch.arange(3 * t, 3 * t + 3) for t in order.tolist()])  # token-major, block's order
    in_order = jacobian[values][:, values]
    assert torch.equal(torch.triu(in_order, diagonal=1), torch.zeros_like(in_order))
    assert torch.count_nonzero(torch.tril(in_order, diagonal=-3)) > 0  # later tokens do depend on earlier ones
    diagonal_blocks = torch.block_diag(*[in_order[3 * t : 3 * t + 3, 3 * t : 3 * t + 3] for t in range(5)])
    torch.testing.assert_close(diagonal_blocks, torch.diag(torch.diagonal(in_order)))  # each token elementwise
    logdet = layer(x)[1]
    torch.testing.assert_close(logdet, torch.linalg.slogdet(jacobian).logabsdet[None], rtol=0, atol=1e-10)


@pytest.mark.parametrize("n_classes", [None, 3])
def test_the_cached_inverse_equals_the_naive_one_and_inverts_the_block(n_classes):
    layer = block(reverse=True, n_classes=n_classes)
    x = torch.randn(4, 5, 3, dtype=torch.float64)
    classes = torch.tensor([0, 1, 2, 3]) if n_classes else None  # 3 = "no class"
    with torch.no_grad():
        z, _ = layer(x, classes)
        torch.testing.assert_close(layer.inverse(z, classes), x, rtol=0, atol=1e-10)
        torch.testing.assert_close(layer.inverse(z, classes), naive_inverse(layer, z, classes), rtol=0, atol=1e-10)


def test_guided_inverse_equals_the_naive_guided_one_and_scales_1_and_0_are_the_model_and_the_weak_one():
    layer = block(reverse=False, n_classes=3)
    z = torch.randn(4, 5, 3, dtype=torch.float64)
    classes, none = torch.tensor([0, 1, 2, 0]), torch.full((4,), 3)
    with torch.no_grad():
        guided = layer.inverse(z, classes, 3.0, none, 1.5)
        torch.testing.assert_close(guided, naive_inverse(layer, z, classes, 3.0, none, 1.5), rtol=0, atol=1e-10)
        assert (guided - layer.inverse(z, classes)).abs().max() > 1e-3
        assert torch.equal(layer.inverse(z, classes, 1.0, none, 1.5), layer.inverse(z, classes))
        assert torch.equal(layer.inverse(z, classes, 0.0, none, 1.0), layer.inverse(z, none))
        # A weak model equal to the strong one: guidance changes nothing, whatever its scale.
        torch.testing.assert_close(layer.inverse(z, classes, 3.0, classes, 1.0), layer.inverse(z, classes))


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"n_classes": 3},
        {"shape": (3, 4, 6), "preprocessing": Preprocessing(data_range="unit", logit_alpha=0.05)},
        {"shape": (1, 8, 8), "patch_size": 4},
        {"preprocessing": Preprocessing(noise_std=0.05)},
    ],
)
def test_the_whole_flow_is_invertible_with_the_autograd_logdet(kwargs):
    flow = tiny(**kwargs).double()
    x = torch.rand(5, *flow.shape, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 1]) if flow.n_classes else None
    report = check_invertible(flow, x, n_jacobian=3, labels=labels)
    assert report.roundtrip_error < 1e-10 and report.logdet_error < 1e-8, report


def test_a_new_tarflow_is_the_identity_and_log_prob_matches_the_prior_of_the_latent():
    flow = TarFlow((1, 8, 8), patch_size=2, blocks=3, layers=1, width=16, heads=2)
    x = torch.rand(4, 1, 8, 8)
    torch.testing.assert_close(flow.encode(x).levels[0], x - 0.5)
    torch.testing.assert_close(flow.log_prob(x), flow.prior.log_prob(x - 0.5))
    assert doctest.testmod(lgm.flow.tarflow).failed == 0


def test_the_conditional_flow_depends_on_the_class_and_gradients_reach_every_parameter():
    flow = tiny(n_classes=3, label_dropout=0.0).train()
    x = torch.rand(6, 1, 4, 4)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    assert (flow.log_prob(x, labels) - flow.log_prob(x, (labels + 1) % 3)).abs().max() > 1e-4
    flow.objective((x * 255).to(torch.uint8), labels).mean().backward()
    unreached = [name for name, p in flow.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    # Class 3 ("no class") is used only when labels are dropped or absent.
    assert unreached == [], unreached


def test_label_dropout_trains_the_unconditional_model_too():
    flow = tiny(n_classes=3, label_dropout=0.5)
    x = torch.rand(2000, 1, 4, 4)
    labels = torch.randint(0, 3, (2000,))
    with torch.no_grad():
        conditional, unconditional = flow.log_prob(x, labels), flow.log_prob(x)
        flow.train()
        torch.manual_seed(0)
        mixed = flow.log_prob(x, labels)
    dropped = torch.isclose(mixed, unconditional, rtol=0, atol=1e-5) & ~torch.isclose(
        mixed, conditional, rtol=0, atol=1e-5
    )
    kept = torch.isclose(mixed, conditional, rtol=0, atol=1e-5)
    assert bool((dropped | kept).all()) and 0.45 < dropped.float().mean().item() < 0.55


def test_sampling_with_guidance_temperature_and_denoising():
    flow = tiny(n_classes=3, preprocessing=Preprocessing(noise_std=0.05))
    labels = torch.tensor([0, 1, 2, 0])
    torch.manual_seed(0)
    plain = flow.sample(4, temperature=0.8, labels=labels, denoise=False)
    flow.use_guidance(3.0)
    assert (flow.guidance, flow.attention_temperature) == (3.0, None)
    torch.manual_seed(0)
    guided = flow.sample(4, temperature=0.8, labels=labels, denoise=False)
    assert guided.shape == (4, 1, 4, 4) and (guided - plain).abs().max() > 1e-3
    torch.manual_seed(0)
    denoised = flow.sample(4, temperature=0.8, labels=labels)
    assert (denoised - guided).abs().max() > 0 and 0 <= denoised.min() and denoised.max() <= 1
    flow.use_guidance(1.0)
    torch.manual_seed(0)
    assert torch.equal(flow.sample(4, temperature=0.8, labels=labels, denoise=False), plain)
    flow.use_guidance(0.0)  # the unconditional model
    torch.manual_seed(0)
    unconditional = flow.sample(4, temperature=0.8, labels=labels, denoise=False)
    torch.manual_seed(0)
    torch.testing.assert_close(unconditional, flow.sample(4, temperature=0.8, denoise=False), rtol=0, atol=1e-6)


def test_guidance_of_an_unconditional_model_needs_an_attention_temperature():
    flow = tiny()
    with pytest.raises(ValueError, match="needs an attention temperature for its weak model"):
        flow.use_guidance(2.0)
    flow.use_guidance(2.0, attention_temperature=2.0)
    z = torch.randn(3, 1, 4, 4)
    with torch.no_grad():
        guided = flow.decode(Latent(z))
        flow.use_guidance(1.0)
        assert (guided - flow.decode(Latent(z))).abs().max() > 1e-4
    with pytest.raises(ValueError, match="guidance scale must be a finite number >= 0"):
        flow.use_guidance(-1.0)
    glow = Glow((1, 4, 4), levels=1, flow_steps=1, width=4)
    with pytest.raises(ValueError, match="has no guided sampling"):
        glow.use_guidance(2.0)
    glow.use_guidance(1.0)  # no guidance: every family takes it
    assert flow.capabilities.guidance and not Glow((1, 4, 4), levels=1, flow_steps=1, width=4).capabilities.guidance


def test_save_and_load_give_the_same_model(tmp_path):
    flow = tiny(n_classes=3, preprocessing=Preprocessing(noise_std=0.05))
    save(flow, tmp_path / "tarflow.pt")
    loaded = load(tmp_path / "tarflow.pt")
    x, labels = torch.rand(3, 1, 4, 4), torch.tensor([0, 1, 2])
    with torch.no_grad():
        torch.testing.assert_close(loaded.log_prob(x, labels), flow.log_prob(x, labels))
    assert loaded.init_args == flow.init_args and loaded.noise_std == 0.05


def test_variational_dequantisation_trains_q_with_the_blocks_and_survives_save_and_load(tmp_path):
    """The bits/dim recipe (configs/tarflow_fashion_bpd.yaml): q(u | x) and the blocks both learn from the
    variational bound, and a saved model gives the same bound for the same draws."""
    flow = tiny(preprocessing=Preprocessing(data_range="unit", logit_alpha=0.05, dequantization="variational"))
    assert flow.dequantization == "variational"
    x = torch.randint(0, 256, (4, 1, 4, 4), dtype=torch.uint8)
    flow.train().objective(x).mean().backward()
    for part in (flow.dequantizer, flow.blocks):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    save(flow.eval(), tmp_path / "tarflow.pt")
    loaded = load(tmp_path / "tarflow.pt")
    torch.manual_seed(7)
    expected = flow.bits_per_dim(x)
    torch.manual_seed(7)
    torch.testing.assert_close(loaded.bits_per_dim(x), expected)


def test_patchify_orders_patches_and_bad_shapes_get_clear_errors():
    patchify = Patchify((2, 4, 6), 2)
    x = torch.arange(48.0).reshape(1, 2, 4, 6)
    tokens, logdet = patchify(x)
    assert tokens.shape == (1, 6, 8) and logdet.item() == 0
    assert tokens[0, 1].tolist() == [2, 3, 8, 9, 26, 27, 32, 33]  # second patch of the first row, channel-major
    torch.testing.assert_close(patchify.inverse(tokens), x)
    with pytest.raises(ValueError, match=r"28x28 pixels cannot be cut into 3x3 patches.*pad_to"):
        TarFlow((1, 28, 28), patch_size=3)
    padded = TarFlow((1, 6, 6), patch_size=4, blocks=1, layers=1, width=8, heads=2, preprocessing={"pad_to": 8})
    assert padded.patchify.token_shape == (4, 16) and padded.log_prob(torch.rand(2, 1, 6, 6)).isfinite().all()
    with pytest.raises(ValueError, match="width .* must be a multiple of the number of heads"):
        TarFlow((1, 4, 4), patch_size=2, width=10, heads=4)
    with pytest.raises(ValueError, match="images of shape"):
        TarFlow((16,), patch_size=2)
    with pytest.raises(ValueError, match="label_dropout must be in"):
        TarFlow((1, 4, 4), patch_size=2, label_dropout=1.0)


def test_lgm_flow_fits_a_class_conditional_tarflow_and_samples_it_with_guidance(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(
        ["fit", "--data", "lgm.data.ImageDataModule", "--data.init_args.name", "digits"]
        + ["--data.init_args.batch_size", "100", "--model.flow", "lgm.flow.TarFlow"]
        + ["--model.flow.init_args.shape", "[1, 8, 8]", "--model.flow.init_args.patch_size", "2"]
        + ["--model.flow.init_args.blocks", "2", "--model.flow.init_args.layers", "1"]
        + ["--model.flow.init_args.width", "16", "--model.flow.init_args.heads", "2"]
        + ["--model.flow.init_args.n_classes", "10", "--model.flow.init_args.preprocessing.noise_std", "0.05"]
        + ["--sample_grid.temperatures", "[1.0]", "--sample_grid.n", "4", "--trainer.max_epochs", "1"]
        + ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    )
    (run,) = list((tmp_path / "runs" / "lgm").iterdir())
    ckpt = run / "checkpoints" / "last.ckpt"
    flow = load(ckpt)
    assert isinstance(flow, TarFlow) and flow.n_classes == 10 and flow.noise_std == 0.05
    assert any(p.abs().sum() > 0 for p in flow.blocks[0].net.output.parameters())  # trained away from identity
    out = tmp_path / "guided.png"
    main(["sample", "--ckpt", str(ckpt), "--n", "10", "--guidance", "1.5", "--out", str(out)])
    assert out.is_file()
    with pytest.raises(SystemExit):
        main(["sample", "--ckpt", str(ckpt), "--guidance", "-1", "--out", str(tmp_path / "bad.png")])
    assert not (tmp_path / "bad.png").exists()


def test_bf16_networks_keep_the_flow_exactly_invertible_and_close_to_float32():
    flow = tiny(n_classes=3)
    x, labels = torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        reference = flow.log_prob(x, labels)
        flow.use_network_precision("bf16-mixed")
        latent = flow.encode(x, labels)
        torch.testing.assert_close(flow.decode(latent, labels), x, rtol=0, atol=1e-5)  # the same bf16 maps both ways
        assert (flow.log_prob(x, labels) - reference).abs().max() < 0.05 * reference.abs().max()
