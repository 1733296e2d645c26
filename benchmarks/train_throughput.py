"""Training throughput and peak memory: lgm against normflows at identical architecture.

    python -m benchmarks.train_throughput [--threads 2] [--repeats 5] [--steps 3] [--configs ...] [--plain-adam]

Prints a markdown table: images/s of one training step (forward, backward, Adam step: each library's
Adam as its users get it, or with ``--plain-adam`` ``torch.optim.Adam`` for both; median of
``--repeats`` timings of ``--steps`` steps, the libraries measured in turns), the peak resident
memory a training step adds (each library in a fresh process), and the parameter counts. Inputs
are random 8-bit images (no data set needed). See `benchmarks.common` for the architectures.
"""

from __future__ import annotations

from benchmarks.common import (
    interleaved_rates,
    machine_line,
    markdown_table,
    n_parameters,
    parser,
    peak_training_rss_mib,
    ratio,
    start,
    training_calls,
)


def main() -> None:
    p = parser(__doc__.splitlines()[0], repeats=5)
    p.add_argument("--steps", type=int, default=3, help="training steps per timing")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument(
        "--plain-adam",
        action="store_true",
        help="torch.optim.Adam for both libraries (lgm's training uses the fused one)",
    )
    args = start(p)
    rows = []
    for config in args.configs:
        pair, calls = training_calls(config, args.plain_adam)
        rates = interleaved_rates(calls, config.batch, args.repeats, warmup=1, inner=args.steps)
        memory = {
            s.library: float("nan")
            if args.no_memory
            else peak_training_rss_mib(config, s.library, args.threads, plain_adam=args.plain_adam)
            for s in pair
        }
        lgm, nf = (s.library for s in pair)
        rows.append(
            [
                config.describe(),
                str(config.batch),
                f"{n_parameters(pair[0].model):,} / {n_parameters(pair[1].model):,}",
                f"{rates[lgm]:.1f}",
                f"{rates[nf]:.1f}",
                ratio(rates[lgm], rates[nf]),
                f"{memory[lgm]:.0f}",
                f"{memory[nf]:.0f}",
                ratio(memory[lgm], memory[nf]),
            ]
        )
    optimiser = (
        "torch.optim.Adam for both"
        if args.plain_adam
        else "lgm: fused Adam, as its training module builds it; normflows: torch.optim.Adam"
    )
    print(
        f"Training step (forward + backward + Adam; {optimiser}), {machine_line()}; median of "
        f"{args.repeats} x {args.steps} steps\n"
    )
    print(
        markdown_table(
            [
                "model",
                "batch",
                "parameters lgm / normflows",
                "lgm img/s",
                "normflows img/s",
                "speed ratio",
                "lgm peak MiB",
                "normflows peak MiB",
                "memory ratio",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
