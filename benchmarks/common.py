"""Shared pieces of the benchmarks: the model pairs, the timing loop, peak memory and the tables.

Every benchmark compares lgm with normflows at *identical* architecture, built here once:

* Glow: squeeze, then ``K`` x (actnorm, LU 1x1 conv, affine coupling with ``sigmoid(h + 2)`` scale and
  a conv3x3-actnorm-ReLU-conv1x1-actnorm-ReLU-zero-conv3x3 network) per level, half the channels
  factored out between levels, N(0, I) priors at every level (``learned_prior=False`` here, fixed
  ``DiagGaussian`` there: normflows has no conditional split prior).
* NICE: 4 additive couplings on even/odd halves of the flattened image, MLP networks, a diagonal
  scaling, N(0, I) prior.

Inputs are random 8-bit images, dequantised once (``y = (x + u) / 256``): no data set is needed and
both libraries see the same tensors. Time is the median over ``repeats`` of a block of calls, the two
libraries measured in turns (interleaved) so that a load on the machine hits both alike.

normflows is a benchmark-only dependency: ``pip install -e '.[bench]'`` (or ``pip install normflows``).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lgm.flow import Glow, NiceFlow, Preprocessing
from lgm.train.optim import make_optimizer
from lgm.utils.hardware import machine_line as hardware_line


def import_normflows():
    """normflows, or exit with the command that installs it (it is never a dependency of lgm)."""
    try:
        import normflows
    except ImportError:
        sys.exit("these benchmarks compare with normflows: pip install -e '.[bench]'  (or: pip install normflows)")
    return normflows


@dataclass(frozen=True)
class Config:
    """One benchmarked architecture.

    ``kind`` is ``"glow"`` (``shape``, ``levels``, ``length`` = K steps per level, ``width``) or ``"nice"``
    (``shape``, ``length`` = couplings, MLP ``width`` x ``depth``); ``batch`` is the training batch size.
    """

    name: str
    kind: str
    shape: tuple[int, int, int]
    length: int
    width: int
    batch: int
    levels: int = 1
    depth: int = 1

    def describe(self) -> str:
        c, h, w = self.shape
        if self.kind == "glow":
            return f"Glow {c}x{h}x{w}, L={self.levels}, K={self.length}, width {self.width}"
        return f"NICE {c}x{h}x{w}, {self.length} couplings, MLP {self.depth}x{self.width}"


CONFIGS = {
    c.name: c
    for c in (
        Config("glow-fashion", "glow", (1, 28, 28), length=8, width=64, batch=64, levels=2),
        Config("glow-32", "glow", (1, 32, 32), length=8, width=128, batch=64, levels=3),
        Config("glow-cifar", "glow", (3, 32, 32), length=8, width=128, batch=32, levels=3),
        Config("nice-mnist", "nice", (1, 28, 28), length=4, width=1000, batch=128, depth=5),
    )
}


def uniform_images(n: int, shape: tuple[int, ...], seed: int = 0) -> Tensor:
    """``n`` random 8-bit images, dequantised into ``[0, 1]``: ``[n, *shape]`` float32."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, *shape), generator=g).float()
    return (x + torch.rand(x.shape, generator=g)) / 256


# ---------------------------------------------------------------------------------------------
# The model pairs. Each side is a `Side`: the model, its training loss and its sampler, so the
# benchmarks never branch on the library.


@dataclass
class Side:
    """One library's model with ``loss(y) -> scalar`` (mean NLL of images ``y`` in [0, 1]) and
    ``sample(n, temperature) -> Tensor``."""

    library: str
    model: nn.Module
    loss: Callable[[Tensor], Tensor]
    sample: Callable[[int, float], Tensor]


def lgm_model(config: Config, coupling: str = "affine") -> nn.Module:
    """lgm's model of ``config``, not yet data-initialised (``coupling`` of Glow: affine or additive)."""
    if config.kind == "glow":
        return Glow(
            shape=config.shape,
            levels=config.levels,
            flow_steps=config.length,
            width=config.width,
            coupling=coupling,
            mixing="conv_lu",
            scale="sigmoid",
            learned_prior=False,
        )
    return NiceFlow(
        shape=config.shape,
        couplings=config.length,
        width=config.width,
        depth=config.depth,
        partition="even_odd",
        scale="exp",
        prior="gaussian",
        preprocessing=Preprocessing(n_bits=8, data_range="unit"),
    )


def normflows_model(config: Config, coupling_scale: bool = True) -> nn.Module:
    """normflows' model of ``config``, not yet data-initialised (its actnorms set themselves on the
    first batch). ``coupling_scale=False`` gives Glow additive couplings (for the cross-check).

    normflows lists flows in its sampling direction (latent -> data) and runs them backwards to
    compute densities, so the data -> latent order of lgm is written reversed here. Its Glow
    coupling computes ``z_b = (x_b - t) * sigmoid(h + 2)`` (``scale_map="sigmoid"``; openai/glow's
    form up to the sign of ``t``), lgm's ``z_b = x_b * sigmoid(h + 2) + t``: the same work.
    """
    nf = import_normflows()
    c, h, w = config.shape
    if config.kind == "nice":
        dim = c * h * w
        flows = []
        for i in range(config.length):
            # lgm's even_odd partition changes the odd features first (keeps the even ones), then the
            # even ones; normflows' 1-D "checkerboard_inv" keeps the even ones, "checkerboard" the odd.
            net = nf.nets.MLP([dim // 2] + [config.width] * config.depth + [dim // 2], init_zeros=True)
            flows.append(
                nf.flows.AffineCouplingBlock(
                    net, scale=False, split_mode="checkerboard_inv" if i % 2 == 0 else "checkerboard"
                )
            )
        flows.append(nf.flows.AffineConstFlow((dim,), scale=True, shift=False))
        return nf.NormalizingFlow(nf.distributions.DiagGaussian(dim, trainable=False), flows[::-1])
    q0, flows, merges = [], [], []
    for i in range(config.levels):  # normflows lists levels coarsest first
        level = config.levels - 1 - i  # lgm's level index, finest = 0
        channels = c * 4 ** (level + 1) // 2**level
        side = h // 2 ** (level + 1), w // 2 ** (level + 1)
        blocks = [
            nf.flows.GlowBlock(
                channels,
                config.width,
                scale=coupling_scale,
                scale_map="sigmoid",
                split_mode="channel",
                use_lu=True,
                net_actnorm=True,
            )
            for _ in range(config.length)
        ]
        flows.append(blocks + [nf.flows.Squeeze()])
        latent = channels if level == config.levels - 1 else channels // 2
        q0.append(nf.distributions.DiagGaussian((latent, *side), trainable=False))
        if i > 0:
            merges.append(nf.flows.Merge())
    return nf.MultiscaleFlow(q0, flows, merges, class_cond=False)


def lgm_side(config: Config) -> Side:
    model = lgm_model(config)
    model.initialize(uniform_images(config.batch, config.shape, seed=1))
    return Side("lgm", model, lambda y: -model.log_prob(y).mean(), lambda n, t: model.sample(n, temperature=t))


def normflows_side(config: Config) -> Side:
    model = normflows_model(config)
    prepare = normflows_input(config)
    with torch.no_grad():
        model.log_prob(
            prepare(uniform_images(config.batch, config.shape, seed=1)), *([] if config.kind == "nice" else [None])
        )
    if config.kind == "nice":
        sample = lambda n, t: _nice_sample(model, n, t)  # noqa: E731
    else:
        sample = lambda n, t: model.sample(n, temperature=t)[0]  # noqa: E731
    return Side("normflows", model, lambda y: model.forward_kld(prepare(y)), sample)


def _nice_sample(model: nn.Module, n: int, temperature: float) -> Tensor:
    """normflows' `NormalizingFlow.sample` has no temperature: scale the fixed prior's std by it."""
    model.q0.temperature = temperature
    try:
        return model.sample(n)[0]
    finally:
        model.q0.temperature = None


def normflows_input(config: Config) -> Callable[[Tensor], Tensor]:
    """What normflows is fed for images ``y`` in [0, 1]: lgm's Glow centres them (``y - 0.5``, log-det 0)
    inside the model; NICE takes flat vectors."""
    if config.kind == "nice":
        return lambda y: y.flatten(1)
    return lambda y: y - 0.5


def sides(config: Config) -> list[Side]:
    """Both libraries' models of ``config``, initialised on the same batch, lgm first."""
    return [lgm_side(config), normflows_side(config)]


def n_parameters(module: nn.Module) -> int:
    """The trainable parameters (a distilled model's frozen teacher is no part of it)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# ---------------------------------------------------------------------------------------------
# Timing, memory and tables.


def training_step(side: Side, optimizer: torch.optim.Optimizer, y: Tensor) -> None:
    """One forward + backward + optimiser step on the batch ``y``."""
    optimizer.zero_grad(set_to_none=True)
    side.loss(y).backward()
    optimizer.step()


def adam(side: Side, plain: bool = False) -> torch.optim.Optimizer:
    """The Adam each library's users train with: lgm's training module builds it with
    `lgm.train.optim.make_optimizer` (PyTorch's fused implementation, the same update rule); normflows
    leaves the optimiser to its users, whose examples use ``torch.optim.Adam``. ``plain=True`` gives
    both the plain ``torch.optim.Adam``, to compare the flows alone."""
    if side.library == "lgm" and not plain:
        return make_optimizer("adam", [{"params": list(side.model.parameters())}], lr=1e-4)
    return torch.optim.Adam(side.model.parameters(), lr=1e-4)


def training_calls(config: Config, plain_adam: bool = False) -> tuple[list[Side], dict[str, Callable[[], None]]]:
    """Both libraries' models of ``config`` and, per library, one training step (with its own Adam
    optimiser, see `adam`) on the same batch of ``config.batch`` images, as a call."""
    pair = sides(config)
    y = uniform_images(config.batch, config.shape)
    optimizers = {s.library: adam(s, plain_adam) for s in pair}
    return pair, {s.library: (lambda s=s: training_step(s, optimizers[s.library], y)) for s in pair}


def interleaved_rates(
    calls: dict[str, Callable[[], None]], items: int, repeats: int, warmup: int = 1, inner: int = 1
) -> dict[str, float]:
    """Median items/s of each call (``items`` per call, ``inner`` calls a timing), measured in turns."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    rates: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            for _ in range(inner):
                call()
            rates[name].append(items * inner / (time.perf_counter() - start))
    return {name: statistics.median(r) for name, r in rates.items()}


def peak_training_rss_mib(
    config: Config, library: str, threads: int, steps: int = 3, plain_adam: bool = False
) -> float:
    """Peak resident memory added by ``steps`` training steps, in MiB, from a fresh process (Linux).

    The child builds and initialises the model, resets the kernel's peak-RSS mark, trains, and
    reports the peak (``VmHWM``) minus the resident size before training (``VmRSS``): the high-water
    mark of the training step (activations, gradients, optimiser state) above the model itself. A
    fresh process per measurement keeps allocator caches apart. (``getrusage``'s ``ru_maxrss`` would
    not do: it survives ``exec`` and so starts at the parent's peak.)
    """
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.common",
        "peak-memory",
        config.name,
        library,
        str(threads),
        str(steps),
        str(int(plain_adam)),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["mib"]


def _status_kib(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (e.g. ``VmRSS``, ``VmHWM``)."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1])


def _peak_memory_child(name: str, library: str, threads: int, steps: int, plain_adam: bool) -> None:
    torch.set_num_threads(threads)
    config = CONFIGS[name]
    side = {"lgm": lgm_side, "normflows": normflows_side}[library](config)
    optimizer = adam(side, plain_adam)
    y = uniform_images(config.batch, config.shape)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident size
    before = _status_kib("VmRSS")
    for _ in range(steps):
        training_step(side, optimizer, y)
    print(json.dumps({"mib": (_status_kib("VmHWM") - before) / 1024}))


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def machine_line(with_normflows: bool = True) -> str:
    """One line saying where and with what the numbers were measured: date, CPU model and flags, threads
    (as `start` set them), torch and normflows versions."""
    normflows = f", normflows {import_normflows().__version__}" if with_normflows else ""
    return f"{time.strftime('%Y-%m-%d')}, {hardware_line()}{normflows}"


def parser(description: str, repeats: int) -> argparse.ArgumentParser:
    """The options every benchmark takes: threads, repeats, and which configurations to run."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    p.add_argument("--repeats", type=int, default=repeats, help="timed repeats per library; the median is reported")
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS), help="architectures to run")
    return p


def start(p: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse the options, set torch's thread count, and turn ``--configs`` into `Config` objects."""
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.configs = [CONFIGS[name] for name in args.configs]
    return args


def ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}x" if theirs > 0 and math.isfinite(theirs) else "-"


if __name__ == "__main__":
    if sys.argv[1:2] == ["peak-memory"]:
        _peak_memory_child(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), bool(int(sys.argv[6])))
