"""Options that several subcommands (and `experiments.curve`) share."""

from __future__ import annotations

import argparse

from lgm.evaluate.features import INCEPTION_RUNTIMES
from lgm.flow.ode import SOLVERS
from lgm.flow.precision import NETWORK_PRECISION_CHOICES


def add_sampler_options(parser: argparse.ArgumentParser, likelihood: bool = False) -> None:
    """``--solver``, ``--steps``, ``--time-shift`` (`lgm.flow.Flow.use_solver`) and, with ``likelihood``,
    ``--likelihood-solver`` and ``--likelihood-steps``: how continuous flows integrate."""
    parser.add_argument(
        "--solver",
        help=f"sampler of continuous flows: an ODE solver ({', '.join(SOLVERS)}) or flow_map (MeanFlow's jumps); "
        "default: the model's",
    )
    parser.add_argument("--steps", type=int, help="sampler steps, for continuous flows (default: the model's)")
    parser.add_argument(
        "--time-shift",
        type=float,
        help="spacing of the sampler's steps, for continuous flows: 1 equal, > 1 shorter near the noise, < 1 "
        "shorter near the data (default: the model's)",
    )
    if likelihood:
        parser.add_argument(
            "--likelihood-solver",
            choices=("auto", *SOLVERS),
            help="ODE solver of bits/dim, for continuous flows (default: the model's; auto is dopri5 for images)",
        )
        parser.add_argument(
            "--likelihood-steps",
            type=int,
            help="ODE solver steps of bits/dim, for continuous flows (default: the model's)",
        )


def add_network_precision_option(parser: argparse.ArgumentParser) -> None:
    """``--network-precision``: the precision of the networks (`lgm.flow.Flow.use_network_precision`)."""
    parser.add_argument(
        "--network-precision",
        choices=NETWORK_PRECISION_CHOICES,
        default="32",
        help="precision of the networks: 32, bf16-mixed (the networks in bf16, the flow's own maps, log-dets "
        "and priors in float32) or auto (bf16-mixed where the hardware has bf16 units); default 32",
    )


def add_denoise_options(parser: argparse.ArgumentParser) -> None:
    """``--denoise`` / ``--no-denoise`` and ``--denoise-step``: Tweedie denoising (`lgm.flow.Flow.denoise`)."""
    parser.add_argument(
        "--denoise",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="denoise samples by the score (Tweedie's formula); default: on for flows trained with noise "
        "(noise_std), off for others",
    )
    parser.add_argument(
        "--denoise-step", type=float, default=1.0, help="step of the denoising, in units of sigma^2 (default 1.0)"
    )


def add_hub_option(parser: argparse.ArgumentParser) -> None:
    """``--hub``: where ``--pretrained`` models are (`lgm.flow.zoo`)."""
    parser.add_argument(
        "--hub",
        metavar="REPO_OR_FOLDER",
        help="where the pretrained models are: a Hugging Face Hub repository, owner/repo (pip install "
        "'lgm-flow[hub]'), or a folder laid out like it; default: those shipped with the package",
    )


def add_guidance_options(parser: argparse.ArgumentParser) -> None:
    """``--guidance`` and ``--guidance-attention-temperature``: guided sampling (`lgm.flow.Flow.use_guidance`)."""
    parser.add_argument(
        "--guidance",
        type=float,
        default=1.0,
        help="guidance scale s >= 0 (default 1: none, or a --pretrained model card's; 0: the weak model): "
        "classifier-free guidance of class-conditional models trained with label dropout (0 samples the "
        "unconditional model), TarFlow's "
        "attention guidance (with --guidance-attention-temperature)",
    )
    parser.add_argument(
        "--guidance-attention-temperature",
        type=float,
        help="attention temperature of the weak model that guidance moves away from (> 1 softens attention)",
    )


def add_inception_runtime_option(parser: argparse.ArgumentParser) -> None:
    """``--inception-runtime``: what runs the Inception network (`lgm.evaluate.features.inception_protocol`)."""
    parser.add_argument(
        "--inception-runtime",
        choices=INCEPTION_RUNTIMES,
        default="auto",
        help="what runs the Inception network: torch, openvino (the same features, about twice as fast on a "
        "CPU; pip install 'lgm-flow[inception]') or auto (openvino where installed); default auto",
    )
