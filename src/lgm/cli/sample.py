"""``lgm-flow sample``: draw samples from a checkpoint, a model file or a shipped model and save them as
a picture."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from lgm.cli.options import (
    add_denoise_options,
    add_guidance_options,
    add_hub_option,
    add_network_precision_option,
    add_sampler_options,
)
from lgm.flow.discrete import quantize
from lgm.flow.guidance import NO_GUIDANCE
from lgm.flow.io import load
from lgm.flow.zoo import card_temperature, pretrained
from lgm.utils.files import check_writable
from lgm.viz.density import plot_samples
from lgm.viz.images import save_grid

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pdf", ".svg")  # what both the grid and the scatter plot can write


def sample_main(argv: list[str]) -> Path:
    parser = argparse.ArgumentParser(
        prog="lgm-flow sample",
        description="Sample from a trained flow: a grid of images, or a scatter plot for 2-D data.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", help="checkpoint (.ckpt) or file written by lgm.flow.save")
    source.add_argument("--pretrained", metavar="NAME", help="a shipped model (`lgm-flow pretrained` lists them)")
    parser.add_argument("--n", type=int, default=64, help="number of samples (default 64)")
    parser.add_argument(
        "--temperature", type=float, help="prior temperature (default 1.0, or the --pretrained model card's)"
    )
    parser.add_argument("--out", default="samples.png", help="output picture (default samples.png)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prior noise (default 0)")
    parser.add_argument(
        "--labels", type=int, nargs="+", help="classes to sample, for class-conditional models (default: all, in turn)"
    )
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    add_sampler_options(parser)
    add_network_precision_option(parser)
    add_denoise_options(parser)
    add_guidance_options(parser)
    add_hub_option(parser)
    parser.set_defaults(guidance=None)  # None: the model's own (a --pretrained model's card's, else none)
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error(f"--n must be at least 1, got {args.n}")
    out = Path(args.out)
    try:
        check_picture_path(out)
    except (ValueError, OSError) as e:
        parser.error(str(e))

    try:
        if args.pretrained:
            flow = pretrained(args.pretrained, map_location=args.device, hub=args.hub)
            temperature = card_temperature(args.pretrained, args.hub)
        else:
            flow, temperature = load(args.ckpt, map_location=args.device), 1.0
    except (FileNotFoundError, ValueError) as e:
        parser.error(str(e))
    temperature = temperature if args.temperature is None else args.temperature
    if flow.n_bits is None and tuple(flow.shape) != (2,):
        parser.error(f"cannot draw samples of shape {list(flow.shape)}: only images and 2-D points")
    labels = None
    if flow.n_classes:
        wanted = torch.tensor(args.labels or list(range(flow.n_classes)))
        labels = wanted.repeat((args.n + len(wanted) - 1) // len(wanted))[: args.n].to(args.device)
    elif args.labels:
        parser.error("--labels needs a class-conditional model; this one is not")
    if (args.solver, args.steps, args.time_shift) != (None, None, None):
        if not flow.capabilities.solver:
            parser.error("--solver, --steps and --time-shift apply to continuous flows (FlowMatching, MeanFlow) only")
        try:
            flow.use_solver(args.solver, args.steps, args.time_shift)
        except (ValueError, ModuleNotFoundError) as e:
            parser.error(str(e))
    if args.guidance is not None or args.guidance_attention_temperature is not None:
        try:
            flow.use_guidance(
                NO_GUIDANCE if args.guidance is None else args.guidance, args.guidance_attention_temperature
            )
        except ValueError as e:
            parser.error(str(e))
    flow.use_network_precision(args.network_precision)
    torch.manual_seed(args.seed)
    try:
        with torch.no_grad():
            x = flow.sample(args.n, temperature, labels, denoise=args.denoise, denoise_step=args.denoise_step).cpu()
    except ValueError as e:
        parser.error(str(e))
    if flow.n_bits is not None:
        save_grid(quantize(x, flow.n_bits).float() / 255, out)
    else:
        lo, hi = x.quantile(0.005, dim=0), x.quantile(0.995, dim=0)
        margin = 0.1 * (hi - lo)
        plot_samples(
            x, bounds=((lo[0] - margin[0], hi[0] + margin[0]), (lo[1] - margin[1], hi[1] + margin[1])), path=out
        )
    info = flow.solver_info()
    cost = (
        f" ({info['solver']} x {info['steps']}: {info['velocity_evaluations']} velocity evaluations, "
        f"{info['network_evaluations']} network evaluations)"
        if info
        else ""
    )
    print(f"wrote {args.n} samples at temperature {temperature} to {out}{cost}")
    return out


def check_picture_path(out: Path) -> None:
    """Raise a one-line error naming the fix unless the picture ``out`` can be written: checked
    before sampling starts."""
    if out.suffix.lower() not in PICTURE_SUFFIXES:
        raise ValueError(
            f"cannot write --out {str(out)!r}: name a picture file ending in one of {', '.join(PICTURE_SUFFIXES)}"
        )
    check_writable(out)
