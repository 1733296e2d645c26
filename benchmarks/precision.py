"""Network precision: training and sampling throughput of lgm's models in float32 and in bf16-mixed.

    python -m benchmarks.precision [--threads 2] [--repeats 5] [--models glow-fashion glow-32 fm-fashion]
        [--device cuda]

In ``bf16-mixed`` only the networks (coupling networks, the velocity U-Net) run under bf16 autocast;
the flow's own maps, log-determinants, priors and losses stay float32 (`lgm.flow.precision`). Prints a
markdown table of images/s (median of ``--repeats`` timings, the two precisions measured in turns on
the same model) with the machine's CPU model and flags: the speed-up needs bf16 matrix units (Intel
AMX ``amx_bf16``, or ``avx512_bf16``), and a CPU without them runs bf16 slower than float32.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from functools import partial

import torch

from benchmarks.common import CONFIGS, interleaved_rates, lgm_model, machine_line, markdown_table, ratio, uniform_images
from lgm.flow import Flow, FlowMatching, Glow, Preprocessing
from lgm.flow.discrete import dequantize_images
from lgm.flow.precision import NETWORK_PRECISIONS
from lgm.train.optim import make_optimizer
from lgm.utils.hardware import has_bf16_units

TEMPERATURE = 0.7


def fm_fashion() -> FlowMatching:
    """The model of ``configs/fm_fashion_best.yaml``, sampled as it is scored (midpoint x 16: 32 evaluations)."""
    preprocessing = Preprocessing(n_bits=8, data_range="unit", logit_alpha=0.05, normalize="global")
    return FlowMatching(
        (1, 28, 28),
        level_widths=(32, 64, 64),
        embedding_width=64,
        preprocessing=preprocessing,
        solver="midpoint",
        steps=16,
    )


# name -> (description, model builder, training batch)
MODELS: dict[str, tuple[str, Callable[[], Flow], int]] = {
    **{
        name: (CONFIGS[name].describe(), lambda name=name: lgm_model(CONFIGS[name]), CONFIGS[name].batch)
        for name in ("glow-fashion", "glow-32")
    },
    "fm-fashion": ("flow matching U-Net 32/64/64 (fm_fashion_best), midpoint x 16", fm_fashion, 64),
    # The paper's size (K = 32, width 512) on 28x28 images: for a GPU.
    "glow-paper": (
        "Glow 1x28x28, L=2, K=32, width 512",
        lambda: Glow(shape=(1, 28, 28), levels=2, flow_steps=32, width=512, learned_prior=False),
        64,
    ),
}
DEFAULT_MODELS = ("glow-fashion", "glow-32", "fm-fashion")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per precision; the median is reported")
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), choices=list(MODELS), help="models to run")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--n", type=int, default=64, help="images per sampling call (default 64)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models:
        describe, build, batch = MODELS[name]
        torch.manual_seed(0)
        flow = build().to(args.device)
        images = (uniform_images(batch, flow.shape) * 255).round().to(torch.uint8).to(args.device)
        flow.initialize(dequantize_images(images, 8))
        optimizer = make_optimizer("adam", [{"params": list(flow.parameters())}], lr=1e-4)
        step = partial(_train_step, flow, optimizer, images)
        train = {prec: _synchronized(partial(step, prec)) for prec in NETWORK_PRECISIONS}
        train_rates = interleaved_rates(train, batch, args.repeats, warmup=1, inner=2)
        memory = {prec: _peak_mib(train[prec], args.device) for prec in NETWORK_PRECISIONS}
        flow.eval()
        draw = {prec: _synchronized(partial(_draw, flow, args.n, prec)) for prec in NETWORK_PRECISIONS}
        sample_rates = interleaved_rates(draw, args.n, args.repeats, warmup=1, inner=1)
        rows.append(
            [describe, str(batch)]
            + [f"{train_rates[prec]:.0f}" for prec in NETWORK_PRECISIONS]
            + [ratio(train_rates["bf16-mixed"], train_rates["32"])]
            + [f"{sample_rates[prec]:.1f}" for prec in NETWORK_PRECISIONS]
            + [ratio(sample_rates["bf16-mixed"], sample_rates["32"])]
            + ([] if memory["32"] is None else [f"{memory[prec]:.0f}" for prec in NETWORK_PRECISIONS])
        )
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "the CPU"
    units = "has" if has_bf16_units(device) else "has no"
    print(
        f"Network precision on {where}, {machine_line(with_normflows=False)}; {where} {units} bf16 "
        f"matrix units. Training: median of {args.repeats} x 2 steps (Adam); sampling: {args.n} images at "
        f"T = {TEMPERATURE}, median of {args.repeats} calls\n"
    )
    header = ["model", "batch", "train fp32 img/s", "train bf16 img/s", "bf16 / fp32"]
    header += ["sample fp32 img/s", "sample bf16 img/s", "bf16 / fp32"]
    header += ["train peak MiB fp32", "train peak MiB bf16"] if device.type == "cuda" else []
    print(markdown_table(header, rows))


def _train_step(flow: Flow, optimizer: torch.optim.Optimizer, images: torch.Tensor, precision: str) -> None:
    flow.use_network_precision(precision)
    optimizer.zero_grad(set_to_none=True)
    flow.objective(images).mean().backward()
    optimizer.step()


def _synchronized(call: Callable[[], None]) -> Callable[[], None]:
    """``call`` that returns only once the device has finished it (GPU work is queued asynchronously)."""

    def run() -> None:
        call()
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    return run


def _peak_mib(call: Callable[[], None], device: str) -> float | None:
    """Peak GPU memory of one ``call`` in MiB (``None`` off the GPU: see `benchmarks.train_throughput`)."""
    if torch.device(device).type != "cuda":
        return None
    torch.cuda.reset_peak_memory_stats(device)
    call()
    return torch.cuda.max_memory_allocated(device) / 2**20


def _draw(flow: Flow, n: int, precision: str) -> None:
    flow.use_network_precision(precision)
    with torch.inference_mode():
        flow.sample(n, temperature=TEMPERATURE)


if __name__ == "__main__":
    main()
