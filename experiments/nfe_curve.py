"""Sample quality against network evaluations: score one continuous flow under several samplers.

    python -m experiments.nfe_curve CKPT --data fashion_mnist --out nfe \\
        --samplers flow_map:1 flow_map:2 flow_map:4 midpoint:4 adams2:8 [--time-shift 1.0] \\
        [--temperature 1.0] [--guidance 1.0] [--inception-n 10000] [--reference test]

Each sampler ``SOLVER:STEPS`` (``lgm.flow.FlowMatching.use_solver``; ``flow_map`` for `lgm.flow.MeanFlow`)
is scored by `lgm.evaluate.report.evaluate`: Inception FID of ``--inception-n`` samples against the
``--reference`` split (choose the sampler settings on ``val``, report on ``test``). Reports go to
``OUT/<SOLVER>-<STEPS>-shift<K>.json``; one already there is kept, so an interrupted curve resumes. The
table has one row per report in ``OUT``: the sampler, network evaluations per image, the FID, and the
sampling rate of that run (one thread unless ``--threads``; compare rates from one machine and load).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch

from lgm.cli.options import add_guidance_options, add_inception_runtime_option, add_network_precision_option
from lgm.evaluate.features import SPLITS
from lgm.evaluate.report import EvalSettings, evaluate


def parse_sampler(text: str) -> tuple[str, int]:
    """``"midpoint:8"`` -> ``("midpoint", 8)``; a `ValueError` naming the form otherwise."""
    solver, sep, steps = text.partition(":")
    if not sep or not steps.isdigit() or int(steps) < 1:
        raise ValueError(f"a sampler is SOLVER:STEPS with STEPS >= 1, e.g. midpoint:8 or flow_map:1; got {text!r}")
    return solver, int(steps)


def report_name(solver: str, steps: int, time_shift: float) -> str:
    return f"{solver}-{steps}-shift{time_shift:g}.json"


def score(ckpt: Path, out: Path, samplers: list[tuple[str, int]], settings: EvalSettings) -> None:
    """Write the report of each sampler not yet scored."""
    for solver, steps in samplers:
        path = out / report_name(solver, steps, settings.time_shift)
        if path.is_file():
            continue
        print(f"scoring {solver} x {steps} (time shift {settings.time_shift:g})", flush=True)
        evaluate(path, replace(settings, solver=solver, steps=steps), ckpt)


def table(out: Path) -> str:
    """The markdown table of every report in ``out``, fewest network evaluations first."""
    rows = []
    for path in out.glob("*.json"):
        report = json.loads(path.read_text())
        sampling, settings = report["sampling"], report["settings"]
        per_image = sampling["network_evaluations"]
        rows.append(
            (
                per_image,
                f"| {sampling['solver']} x {sampling['steps']} | {settings['time_shift']:g} | {per_image} | "
                f"{settings['temperature']:g} | {settings['guidance']:g} | "
                f"{report['metrics']['inception']['fid']:.2f} | {sampling['images_per_second']:.1f} |",
            )
        )
    header = (
        "| sampler | time shift | network evaluations / image | T | guidance | Inception FID | images/s |\n"
        "|---|---|---|---|---|---|---|"
    )
    return "\n".join([header, *(row for _, row in sorted(rows))])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ckpt", type=Path, help="checkpoint or model file of a continuous flow")
    p.add_argument("--data", required=True, help="data set of the model")
    p.add_argument("--out", type=Path, required=True, help="folder of the reports")
    p.add_argument("--samplers", nargs="+", required=True, metavar="SOLVER:STEPS", help="e.g. flow_map:1 midpoint:8")
    p.add_argument("--time-shift", type=float, default=1.0, help="spacing of the steps (default 1.0: equal)")
    p.add_argument("--temperature", type=float, default=1.0, help="prior temperature (default 1.0)")
    p.add_argument("--inception-n", type=int, default=10_000, help="samples per FID (default 10000)")
    p.add_argument("--reference", choices=SPLITS, default="test", help="split the FID compares with (default test)")
    p.add_argument("--seed", type=int, default=0, help="seed of the prior noise (default 0)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--data-dir", help="folder with the data (default $LGM_DATA_DIR)")
    add_guidance_options(p)
    add_network_precision_option(p)
    add_inception_runtime_option(p)
    args = p.parse_args(argv)
    try:
        samplers = [parse_sampler(s) for s in args.samplers]
    except ValueError as e:
        p.error(str(e))
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    settings = EvalSettings(
        data=args.data,
        metrics=("inception_fid",),
        n_samples=args.inception_n,
        inception_n=args.inception_n,
        temperature=args.temperature,
        seed=args.seed,
        reference=args.reference,
        figures=False,
        data_dir=args.data_dir,
        time_shift=args.time_shift,
        network_precision=args.network_precision,
        inception_runtime=args.inception_runtime,
        guidance=args.guidance,
        guidance_attention_temperature=args.guidance_attention_temperature,
    )
    score(args.ckpt, args.out, samplers, settings)
    print(table(args.out))


if __name__ == "__main__":
    main()
