"""Milliseconds per training step of the 2-D banana recipes: NICE, RealNVP, Glow, flow matching.

    python -m benchmarks.toy_training_step [--threads 1] [--repeats 7] [--steps 50]

Each recipe's model is built from its config (``configs/*_banana.yaml``) and trained on one fixed
batch of banana points of the recipe's batch size: objective, backward, and the Adam step that
`lgm.train.FlowModule` builds (`lgm.train.optim.make_optimizer`). The models are timed in turns
(interleaved) so that a load on the machine hits all alike; the table gives the median over
``--repeats`` blocks of ``--steps`` steps, and each model's time relative to NICE's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml

from benchmarks.common import interleaved_rates, machine_line, markdown_table, n_parameters
from lgm.data import toy
from lgm.flow.io import build_flow
from lgm.train.optim import make_optimizer

CONFIGS = Path(__file__).parents[1] / "configs"
RECIPES = ("nice_banana", "realnvp_banana", "glow_banana", "fm_banana")


def build(recipe: str) -> tuple[torch.nn.Module, float, int]:
    """The recipe's flow, its learning rate and its batch size."""
    config = yaml.safe_load((CONFIGS / f"{recipe}.yaml").read_text())
    return (
        build_flow(config["model"]["flow"]),
        config["model"].get("lr", 1e-3),
        config["data"]["init_args"]["batch_size"],
    )


def training_call(recipe: str):
    """``(flow, one training step on a fixed batch)``; data-initialised layers are set from that batch."""
    torch.manual_seed(0)
    flow, lr, batch = build(recipe)
    x = toy.banana(batch, seed=0)
    flow.initialize(x)
    optimizer = make_optimizer("adam", [{"params": list(flow.parameters())}], lr=lr)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        flow.objective(x).mean().backward()
        optimizer.step()

    return flow, step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1, as the recipes were run)")
    p.add_argument("--repeats", type=int, default=7, help="timed blocks per model; the median is reported")
    p.add_argument("--steps", type=int, default=50, help="training steps per timed block")
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    built = {recipe: training_call(recipe) for recipe in args.recipes}
    rates = interleaved_rates(
        {r: step for r, (_, step) in built.items()}, items=1, repeats=args.repeats, warmup=5, inner=args.steps
    )
    ms = {r: 1000 / rate for r, rate in rates.items()}
    reference = ms[args.recipes[0]]
    rows = [
        [
            f"`configs/{r}.yaml`",
            type(flow).__name__,
            f"{n_parameters(flow):,}",
            f"{ms[r]:.1f}",
            f"{ms[r] / reference:.2f}x",
        ]
        for r, (flow, _) in built.items()
    ]
    print(
        f"Banana training step (objective + backward + Adam), {machine_line(with_normflows=False)}; "
        f"median of {args.repeats} x {args.steps} steps, in turns\n"
    )
    print(markdown_table(["recipe", "model", "parameters", "ms per step", f"relative to {args.recipes[0]}"], rows))


if __name__ == "__main__":
    main()
