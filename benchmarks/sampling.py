"""Sampling throughput at temperature 0.7: lgm against normflows at identical architecture.

    python -m benchmarks.sampling [--threads 2] [--repeats 5] [--n 64] [--configs ...]

Prints a markdown table of images/s (median of ``--repeats`` timings of two calls drawing ``--n``
images each, the libraries measured in turns). Both models are in eval mode and called under
``torch.inference_mode``; lgm's ``sample`` enters it itself, normflows' is wrapped in it here.
See `benchmarks.common` for the architectures.
"""

from __future__ import annotations

import torch

from benchmarks.common import interleaved_rates, machine_line, markdown_table, parser, ratio, sides, start

TEMPERATURE = 0.7


def main() -> None:
    p = parser(__doc__.splitlines()[0], repeats=5)
    p.add_argument("--n", type=int, default=64, help="images per sampling call")
    args = start(p)
    rows = []
    for config in args.configs:
        pair = sides(config)
        for side in pair:
            side.model.eval()
        calls = {s.library: (lambda s=s: _draw(s, args.n)) for s in pair}
        rates = interleaved_rates(calls, args.n, args.repeats, warmup=1, inner=2)
        lgm, nf = (s.library for s in pair)
        rows.append([config.describe(), f"{rates[lgm]:.0f}", f"{rates[nf]:.0f}", ratio(rates[lgm], rates[nf])])
    print(f"Sampling {args.n} images at T = {TEMPERATURE}, {machine_line()}; median of {args.repeats} x 2 calls\n")
    print(markdown_table(["model", "lgm img/s", "normflows img/s", "speed ratio"], rows))


def _draw(side, n: int) -> None:
    with torch.inference_mode():
        side.sample(n, TEMPERATURE)


if __name__ == "__main__":
    main()
