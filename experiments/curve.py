"""Metric-vs-training-time curves: evaluate every snapshot of one or more runs, then print the table.

    python -m experiments.curve RUN [RUN ...] --data fashion_mnist --out curves \\
        [--bpd-images 1000] [--select-n 1000] [--select-protocol inception] [--inception-n 10000] \\
        [--solver midpoint --steps 16] [--likelihood-solver rk4 --likelihood-steps 128] [--no-denoise]

A run's snapshots are its ``checkpoints/snapshot-<M>min.ckpt`` (written by ``--snapshots.minutes``).
Each is scored by `lgm.evaluate.report.evaluate` against the test set (bits/dim; the classifier and
Inception protocols at ``--n-samples`` / ``--inception-n``) at the temperature among 0.6, 0.7, 0.8,
0.9, 1.0 that scores the lowest FID on the validation split (flows trained with noise are scored on
their denoised samples, unless ``--no-denoise``). Reports go to
``OUT/<run folder name>/<M>min.json``; a report already there is kept, and a snapshot whose scoring
was interrupted reuses the stages it finished (`lgm.evaluate.report.FinishedStages`), so rerunning
after an interruption resumes. The table has one row per run and mark, then each mark's mean and standard
deviation over the runs.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

import torch

from lgm.cli.evaluate import parse_candidates
from lgm.cli.options import (
    add_denoise_options,
    add_guidance_options,
    add_inception_runtime_option,
    add_network_precision_option,
    add_sampler_options,
)
from lgm.evaluate.report import EvalSettings, evaluate
from lgm.flow.guidance import NO_GUIDANCE

TEMPERATURES = (0.6, 0.7, 0.8, 0.9, 1.0)
METRICS = ("bpd", "fid", "kid", "is", "pr", "inception_fid", "inception_kid", "inception_pr")
SNAPSHOT = re.compile(r"snapshot-(\d+(?:\.\d+)?)min\.ckpt")


def snapshots(run: Path) -> list[tuple[float, Path]]:
    """``(minutes, path)`` of a run's snapshots, in time order."""
    found = [
        (float(m.group(1)), p)
        for p in (run / "checkpoints").glob("snapshot-*min.ckpt")
        if (m := SNAPSHOT.fullmatch(p.name))
    ]
    return sorted(found)


def evaluate_runs(runs: list[Path], out: Path, settings: EvalSettings) -> list[dict]:
    """Evaluate every snapshot of ``runs`` that has no report yet; return all rows of the curve."""
    rows = []
    for run in runs:
        for minutes, ckpt in snapshots(run):
            report_path = out / run.name / f"{minutes:g}min.json"
            if not report_path.is_file():
                print(f"evaluating {ckpt}", flush=True)
                evaluate(report_path, settings, ckpt=ckpt)
            report = json.loads(report_path.read_text())
            step = torch.load(ckpt, map_location="cpu", weights_only=False, mmap=True)["global_step"]
            rows.append({"run": run.name, "minutes": minutes, "steps": step, **_values(report)})
    return rows


def _values(report: dict) -> dict:
    m = report["metrics"]
    inception, classifier = m["inception"], m["classifier"]
    return {
        "bpd": m["bpd"]["value"],
        "bpd_images": m["bpd"]["images"],
        "temperature": report["settings"]["temperature"],
        "guidance": report["settings"].get("guidance", NO_GUIDANCE),
        "inception_fid": inception["fid"],
        "inception_kid": inception["kid"],
        "precision": inception["precision"],
        "recall": inception["recall"],
        "fid": classifier["fid"],
        "is": classifier["is"],
        "images_per_second": report["sampling"]["images_per_second"],
    }


def table(rows: list[dict]) -> str:
    """The curve as markdown: each run's rows, then mean ± standard deviation per mark."""
    header = [
        "run",
        "training time",
        "steps",
        "test bits/dim",
        "T, guidance s (chosen on val)" if any(r["guidance"] != NO_GUIDANCE for r in rows) else "T (chosen on val)",
        "Inception FID",
        "Inception KID x 1e3",
        "Inception precision / recall",
        "classifier FID",
        "classifier IS",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for r in rows:
        lines.append(
            f"| {r['run']} | {r['minutes']:g} min | {r['steps']:,} | {r['bpd']:.3f} | {_sampling(r)} | "
            f"{r['inception_fid']:.1f} | {r['inception_kid'] * 1e3:.2f} | {r['precision']:.3f} / {r['recall']:.3f} | "
            f"{r['fid']:.1f} | {r['is']:.2f} |"
        )
    marks = sorted({r["minutes"] for r in rows})
    for minutes in marks:
        at = [r for r in rows if r["minutes"] == minutes]
        if len(at) > 1:
            lines.append(
                f"| **mean ± sd of {len(at)}** | {minutes:g} min | | {_spread(at, 'bpd', 3)} | | "
                f"**{_spread(at, 'inception_fid', 1)}** | | | {_spread(at, 'fid', 1)} | {_spread(at, 'is', 2)} |"
            )
    return "\n".join(lines)


def _sampling(row: dict) -> str:
    guided = row["guidance"] != NO_GUIDANCE
    return f"{row['temperature']:g}, s {row['guidance']:g}" if guided else f"{row['temperature']:g}"


def _spread(rows: list[dict], key: str, digits: int) -> str:
    values = [r[key] for r in rows]
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="run folders (runs/lgm/<version>)")
    p.add_argument("--data", required=True, help="data set of the runs")
    p.add_argument("--out", type=Path, required=True, help="folder of the reports (one subfolder per run)")
    p.add_argument("--bpd-images", type=int, help="bits/dim on the first N test images (default all)")
    p.add_argument("--n-samples", type=int, default=10_000, help="images for the classifier protocol (default 10000)")
    p.add_argument("--inception-n", type=int, default=10_000, help="images for the Inception protocol (default 10000)")
    p.add_argument("--select-n", type=int, default=1_000, help="samples per candidate temperature (default 1000)")
    p.add_argument("--select-protocol", choices=("classifier", "inception"), default="inception")
    add_sampler_options(p, likelihood=True)
    add_network_precision_option(p)
    add_inception_runtime_option(p)
    add_denoise_options(p)
    add_guidance_options(p)
    p.add_argument(
        "--select-guidance",
        metavar="W1,W2,...",
        help="choose the guidance scale on the validation split too, at the chosen temperature (replaces --guidance)",
    )
    p.add_argument("--data-dir", help="folder with the data (default $LGM_DATA_DIR)")
    args = p.parse_args(argv)
    missing = [str(r) for r in args.runs if not snapshots(r)]
    if missing:
        p.error(f"no snapshot-<M>min.ckpt in {', '.join(missing)}: train with --snapshots.minutes [...]")
    if args.guidance != NO_GUIDANCE and args.select_guidance:
        p.error("give either --guidance or --select-guidance, not both")
    guidances = parse_candidates(p, "--select-guidance", args.select_guidance)
    settings = EvalSettings(
        data=args.data,
        metrics=METRICS,
        n_samples=args.n_samples,
        inception_n=args.inception_n,
        reference="test",
        bpd_images=args.bpd_images,
        figures=False,
        data_dir=args.data_dir,
        solver=args.solver,
        steps=args.steps,
        time_shift=args.time_shift,
        likelihood_solver=args.likelihood_solver,
        likelihood_steps=args.likelihood_steps,
        network_precision=args.network_precision,
        inception_runtime=args.inception_runtime,
        denoise=args.denoise,
        denoise_step=args.denoise_step,
        guidance=args.guidance,
        guidance_attention_temperature=args.guidance_attention_temperature,
        select_temperatures=TEMPERATURES,
        select_guidances=guidances,
        select_n=args.select_n,
        select_protocol=args.select_protocol,
    )
    print(table(evaluate_runs(args.runs, args.out, settings)))


if __name__ == "__main__":
    main()
