"""Sampling throughput of trained models (any checkpoints or saved models), side by side.

    python -m benchmarks.checkpoint_sampling --ckpt NICE=nice.ckpt --ckpt FM=fm.ckpt \\
        [--threads 1] [--repeats 5] [--n 100] [--temperature 1.0] [--solver midpoint --steps 16] \
        [--time-shift 1.0] [--guidance 1.0] [--network-precision 32]

Prints a markdown table of images/s: the median of ``--repeats`` timings of one call drawing ``--n``
images, the models measured in turns (interleaved) so that a load on the machine hits all alike.
``--solver``/``--steps``/``--time-shift`` set the sampler of continuous flows (`FlowMatching`,
`MeanFlow`) and are ignored by the others, whose sampling is one pass through the inverse flow;
``--guidance`` applies to models with guided sampling, ``--network-precision`` to every model (bf16-mixed:
the networks under bf16 autocast). Class-conditional models draw the classes in turn.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import interleaved_rates, machine_line, markdown_table, n_parameters
from lgm.cli.options import add_network_precision_option, add_sampler_options
from lgm.flow import load


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--ckpt", action="append", required=True, metavar="NAME=PATH", help="a model to time (repeat the option)"
    )
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per model; the median is reported")
    p.add_argument("--n", type=int, default=100, help="images per sampling call (default 100)")
    p.add_argument("--temperature", type=float, default=1.0, help="prior temperature (default 1.0)")
    add_sampler_options(p)
    p.add_argument("--guidance", type=float, default=1.0, help="guidance scale of guided models (default 1: none)")
    add_network_precision_option(p)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    models = {}
    for spec in args.ckpt:
        name, sep, path = spec.partition("=")
        if not sep:
            p.error(f"--ckpt takes NAME=PATH, got {spec!r}")
        models[name] = load(path).eval()
        if models[name].capabilities.solver:
            models[name].use_solver(args.solver, args.steps, args.time_shift)
        if models[name].capabilities.guidance:
            models[name].use_guidance(args.guidance)
        models[name].use_network_precision(args.network_precision)
    calls = {
        name: (lambda m=m: m.sample(args.n, temperature=args.temperature, labels=_labels(m, args.n)))
        for name, m in models.items()
    }
    rates = interleaved_rates(calls, args.n, args.repeats, warmup=1)
    fastest = max(rates.values())
    rows = [
        [
            name,
            type(m).__name__ + _cost(m),
            f"{n_parameters(m) / 1e6:.2f}M",
            f"{rates[name]:.1f}",
            f"{rates[name] / fastest:.3f}",
        ]
        for name, m in models.items()
    ]
    print(
        f"Sampling {args.n} images at T = {args.temperature}, networks at {args.network_precision}, "
        f"{machine_line(with_normflows=False)}; median of {args.repeats} calls\n"
    )
    print(markdown_table(["model", "class", "parameters", "images/s", "relative to the fastest"], rows))


def _labels(model, n: int) -> torch.Tensor | None:
    """The classes in turn for a class-conditional model, else None."""
    return torch.arange(n) % model.n_classes if model.n_classes else None


def _cost(model) -> str:
    info = model.solver_info()
    guided = f", guidance {model.guidance:g}" if model.guidance != 1 else ""
    return (
        f" ({info['solver']}, {info['steps']} steps, {info['network_evaluations']} network evaluations{guided})"
        if info
        else ""
    )


if __name__ == "__main__":
    main()
