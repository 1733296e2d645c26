"""Achieved GFLOP/s of the training step against a measured roof on the same machine and threads.

    python -m benchmarks.roofline [--threads 2] [--repeats 5] [--configs ...]

The roof is what this machine reaches on the two kernels these models are made of: a large
float32 matrix product (2048 x 2048 x 2048) and a large 3x3 convolution (batch 32, 128 -> 128
channels, 32 x 32, channels-last, the faster layout here). A training step's FLOPs are counted once
with ``torch.utils.flop_counter.FlopCounterMode`` (matrix products and convolutions, forward and
backward; elementwise work and the optimiser are not counted, so they show up as lost throughput),
and divided by its median time (the libraries timed in turns). See `benchmarks.common`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import interleaved_rates, machine_line, markdown_table, parser, start, training_calls


def matmul_roof(repeats: int, n: int = 2048) -> float:
    """GFLOP/s of an ``n x n`` by ``n x n`` float32 matrix product (``2 n^3`` FLOPs)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 * interleaved_rates({"mm": lambda: a @ b}, 1, repeats, warmup=2)["mm"] / 1e9


def conv_roof(repeats: int, batch: int = 32, channels: int = 128, side: int = 32) -> float:
    """GFLOP/s of a 3x3, stride-1, padded convolution ``[batch, channels, side, side]`` -> same shape."""
    x = torch.randn(batch, channels, side, side).contiguous(memory_format=torch.channels_last)
    w = torch.randn(channels, channels, 3, 3).contiguous(memory_format=torch.channels_last)
    flops = 2 * batch * channels * channels * 9 * side * side
    with torch.inference_mode():
        rate = interleaved_rates({"conv": lambda: F.conv2d(x, w, padding=1)}, 1, repeats, warmup=2)["conv"]
    return flops * rate / 1e9


def counted_flops(call) -> int:
    """FLOPs of the matrix products and convolutions of one ``call()`` (forward and backward)."""
    with FlopCounterMode(display=False) as counter:
        call()
    return counter.get_total_flops()


def main() -> None:
    args = start(parser(__doc__.splitlines()[0], repeats=5))
    roofs = {"matmul": matmul_roof(args.repeats), "conv3x3": conv_roof(args.repeats)}
    rows = []
    for config in args.configs:
        pair, calls = training_calls(config)
        flops = {library: counted_flops(call) for library, call in calls.items()}
        steps_per_s = interleaved_rates(calls, 1, args.repeats, warmup=1, inner=2)
        roof = roofs["matmul" if config.kind == "nice" else "conv3x3"]
        for side in pair:
            achieved = flops[side.library] * steps_per_s[side.library] / 1e9
            rows.append(
                [
                    config.describe(),
                    side.library,
                    f"{flops[side.library] / 1e9:.2f}",
                    f"{1e3 / steps_per_s[side.library]:.0f}",
                    f"{achieved:.1f}",
                    f"{100 * achieved / roof:.0f}%",
                ]
            )
    print(
        f"Training step against the roof, {machine_line(args.threads)}; roof: matmul {roofs['matmul']:.1f} GFLOP/s, "
        f"3x3 conv {roofs['conv3x3']:.1f} GFLOP/s (NICE is compared with the matmul, Glow with the conv)\n"
    )
    print(markdown_table(["model", "library", "GFLOP per step", "ms per step", "achieved GFLOP/s", "of roof"], rows))


if __name__ == "__main__":
    main()
