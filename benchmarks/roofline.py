"""Achieved GFLOP/s of the training step against a measured roof on the same machine and threads.

    python -m benchmarks.roofline [--threads 2] [--repeats 5] [--configs ...]

The roof is what this machine reaches on the two kernels these models are made of: a large
float32 matrix product (2048 x 2048 x 2048) and a large 3x3 convolution (batch 32, 128 -> 128
channels, 32 x 32, channels-last, the faster layout here). A training step's FLOPs are counted once
with ``torch.utils.flop_counter.FlopCounterMode`` (matrix products and convolutions, forward and
backward; elementwise work and the optimiser are not counted, so they show up as lost throughput),
and divided by its median time (the libraries timed in turns). See `benchmarks.common`.

Where the CPU has bf16 matrix units (`lgm.utils.hardware.has_bf16_units`), the same kernels are also
measured in bf16, lgm is also timed with bf16 networks (``network_precision="bf16-mixed"``), and
every row is set against the bf16 roof too: the headroom that float32 leaves on such a machine.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import interleaved_rates, machine_line, markdown_table, parser, start, training_calls
from lgm.utils.hardware import has_bf16_units


def matmul_roof(repeats: int, n: int = 2048, dtype: torch.dtype = torch.float32) -> float:
    """GFLOP/s of an ``n x n`` by ``n x n`` matrix product (``2 n^3`` FLOPs) in ``dtype``."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n**3 * interleaved_rates({"mm": lambda: a @ b}, 1, repeats, warmup=2)["mm"] / 1e9


def conv_roof(
    repeats: int, batch: int = 32, channels: int = 128, side: int = 32, dtype: torch.dtype = torch.float32
) -> float:
    """GFLOP/s of a 3x3, stride-1, padded convolution ``[batch, channels, side, side]`` -> same shape, in ``dtype``."""
    x = torch.randn(batch, channels, side, side, dtype=dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(channels, channels, 3, 3, dtype=dtype).contiguous(memory_format=torch.channels_last)
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
    dtypes = {"fp32": torch.float32, **({"bf16": torch.bfloat16} if has_bf16_units("cpu") else {})}
    roofs = {
        (kernel, name): roof(args.repeats, dtype=dtype)
        for name, dtype in dtypes.items()
        for kernel, roof in (("matmul", matmul_roof), ("conv3x3", conv_roof))
    }
    rows = []
    for config in args.configs:
        pair, calls = training_calls(config)
        if "bf16" in dtypes:
            calls["lgm, bf16 networks"] = partial(_with_bf16_networks, pair[0].model, calls["lgm"])
        flops = {name: counted_flops(call) for name, call in calls.items()}
        steps_per_s = interleaved_rates(calls, 1, args.repeats, warmup=1, inner=2)
        kernel = "matmul" if config.kind == "nice" else "conv3x3"
        for name in calls:
            achieved = flops[name] * steps_per_s[name] / 1e9
            timing = [f"{flops[name] / 1e9:.2f}", f"{1e3 / steps_per_s[name]:.0f}", f"{achieved:.1f}"]
            of_roof = [f"{100 * achieved / roofs[kernel, dtype]:.0f}%" for dtype in dtypes]
            rows.append([config.describe(), name, *timing, *of_roof])
    roof_text = "; ".join(
        f"{dtype} roof: matmul {roofs['matmul', dtype]:.1f} GFLOP/s, 3x3 conv {roofs['conv3x3', dtype]:.1f} GFLOP/s"
        for dtype in dtypes
    )
    print(
        f"Training step against the roof, {machine_line()}; {roof_text} (NICE is compared with the "
        "matmul, Glow with the conv)\n"
    )
    header = ["model", "library", "GFLOP per step", "ms per step", "achieved GFLOP/s"]
    print(markdown_table(header + [f"of {dtype} roof" for dtype in dtypes], rows))


def _with_bf16_networks(flow, call) -> None:
    flow.use_network_precision("bf16-mixed")
    try:
        call()
    finally:
        flow.use_network_precision("32")


if __name__ == "__main__":
    main()
