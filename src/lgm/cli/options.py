"""Options that several subcommands (and `experiments.curve`) share."""

from __future__ import annotations

import argparse

from lgm.evaluate.features import INCEPTION_RUNTIMES
from lgm.flow.precision import NETWORK_PRECISION_CHOICES


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


def add_guidance_options(parser: argparse.ArgumentParser) -> None:
    """``--guidance`` and ``--guidance-attention-temperature``: guided sampling (`lgm.flow.Flow.use_guidance`)."""
    parser.add_argument(
        "--guidance",
        type=float,
        default=0.0,
        help="guidance scale w >= 0 (default 0, none): classifier-free guidance of class-conditional models, "
        "attention guidance of unconditional ones (with --guidance-attention-temperature); TarFlow only",
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
