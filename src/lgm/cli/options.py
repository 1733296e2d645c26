"""Options that several subcommands (and `experiments.curve`) share."""

from __future__ import annotations

import argparse

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
