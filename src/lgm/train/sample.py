"""``lgm-flow sample``: draw samples from a checkpoint or model file and save them as a picture."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torchvision.utils import save_image

from lgm.flow.discrete import quantize
from lgm.flow.io import load
from lgm.flow.matching import FlowMatching
from lgm.flow.ode import SOLVERS
from lgm.viz.density import plot_samples


def sample_main(argv: list[str]) -> Path:
    parser = argparse.ArgumentParser(
        prog="lgm-flow sample",
        description="Sample from a trained flow: a grid of images, or a scatter plot for 2-D data.",
    )
    parser.add_argument("--ckpt", required=True, help="checkpoint (.ckpt) or file written by lgm.flow.save")
    parser.add_argument("--n", type=int, default=64, help="number of samples (default 64)")
    parser.add_argument("--temperature", type=float, default=1.0, help="prior temperature (default 1.0)")
    parser.add_argument("--out", default="samples.png", help="output picture (default samples.png)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prior noise (default 0)")
    parser.add_argument(
        "--labels", type=int, nargs="+", help="classes to sample, for class-conditional models (default: all, in turn)"
    )
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--solver", choices=SOLVERS, help="ODE solver, for continuous flows (default: the model's)")
    parser.add_argument("--steps", type=int, help="ODE solver steps, for continuous flows (default: the model's)")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error(f"--n must be at least 1, got {args.n}")

    try:
        flow = load(args.ckpt, map_location=args.device)
    except (FileNotFoundError, ValueError) as e:
        parser.error(str(e))
    labels = None
    if flow.n_classes:
        wanted = torch.tensor(args.labels or list(range(flow.n_classes)))
        labels = wanted.repeat((args.n + len(wanted) - 1) // len(wanted))[: args.n].to(args.device)
    elif args.labels:
        parser.error("--labels needs a class-conditional model; this one is not")
    if args.solver is not None or args.steps is not None:
        if not isinstance(flow, FlowMatching):
            parser.error("--solver and --steps apply to continuous flows (FlowMatching) only")
        try:
            flow.use_solver(args.solver, args.steps)
        except (ValueError, ModuleNotFoundError) as e:
            parser.error(str(e))
    torch.manual_seed(args.seed)
    try:
        with torch.no_grad():
            x = flow.sample(args.n, temperature=args.temperature, labels=labels).cpu()
    except ValueError as e:
        parser.error(str(e))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if flow.n_bits is not None:
        images = quantize(x, flow.n_bits).float() / 255
        save_image(images, out, nrow=max(1, round(args.n**0.5)), padding=1)
    elif x.dim() == 2 and x.shape[1] == 2:
        lo, hi = x.quantile(0.005, dim=0), x.quantile(0.995, dim=0)
        margin = 0.1 * (hi - lo)
        plot_samples(x, bounds=((lo[0] - margin[0], hi[0] + margin[0]), (lo[1] - margin[1], hi[1] + margin[1])), path=out)
    else:
        raise SystemExit(f"cannot draw samples of shape {list(x.shape[1:])}: only images and 2-D points")
    cost = f" ({flow.last_nfe} velocity evaluations, {flow.solver} x {flow.steps})" if isinstance(flow, FlowMatching) else ""
    print(f"wrote {args.n} samples at temperature {args.temperature} to {out}{cost}")
    return out
