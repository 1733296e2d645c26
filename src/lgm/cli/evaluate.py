"""``lgm-flow evaluate``: metrics of a trained image flow (or of a baseline image set) as a JSON report,
with figures beside it (see `lgm.evaluate.report`)."""

from __future__ import annotations

import argparse

from lgm.cli.options import (
    add_denoise_options,
    add_guidance_options,
    add_hub_option,
    add_inception_runtime_option,
    add_network_precision_option,
    add_sampler_options,
)
from lgm.evaluate.features import SPLITS
from lgm.evaluate.report import BASELINES, METRICS, EvalSettings, evaluate
from lgm.flow.guidance import NO_GUIDANCE
from lgm.flow.zoo import model_card, pretrained_file
from lgm.utils.files import check_writable
from lgm.viz.report import draw_report_figures


def evaluate_main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(
        prog="lgm-flow evaluate",
        description=(
            "Evaluate a flow checkpoint (or a baseline image set): bits/dim, FID, KID, IS, precision/recall, figures."
        ),
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", help="checkpoint (.ckpt) or file written by lgm.flow.save")
    source.add_argument(
        "--pretrained",
        metavar="NAME",
        help="a shipped model (`lgm-flow pretrained` lists them), with its card's data set, sampling settings "
        "and temperature as the defaults",
    )
    source.add_argument(
        "--baseline",
        choices=BASELINES,
        help=(
            "score real test images (the floor), test images with Gaussian noise (--noise), or pixel-wise "
            "Gaussian samples fit to the training set"
        ),
    )
    parser.add_argument(
        "--data", help="data set of the model: mnist, fashion_mnist or cifar10 (required, except with --pretrained)"
    )
    parser.add_argument(
        "--metrics",
        default="bpd,fid,kid,is,pr",
        help=f"comma-separated, among {','.join(METRICS)} (default bpd,fid,kid,is,pr)",
    )
    parser.add_argument(
        "--n-samples",
        type=int,
        default=10_000,
        help="generated and reference images for the classifier protocol (default 10000)",
    )
    parser.add_argument(
        "--inception-n",
        type=int,
        default=1_000,
        help="images for the Inception protocol, ~0.15 s each on 2 CPU cores (default 1000)",
    )
    parser.add_argument("--temperature", type=float, help="prior temperature of the scored samples (default 1.0)")
    parser.add_argument(
        "--select-temperature",
        metavar="T1,T2,...",
        help=(
            "choose the temperature instead: the one whose samples score the lowest FID against the "
            "validation split (e.g. 0.6,0.7,0.8,0.9,1.0)"
        ),
    )
    parser.add_argument(
        "--select-guidance",
        metavar="S1,S2,...",
        help=(
            "choose the guidance scale (models with guided sampling) the same way, at the chosen temperature "
            "(e.g. 1,2,3; 1 is none); replaces --guidance"
        ),
    )
    parser.add_argument(
        "--select-n",
        type=int,
        default=1_000,
        help="samples and validation images per candidate temperature (default 1000, at most 5000)",
    )
    parser.add_argument(
        "--select-protocol",
        choices=("classifier", "inception"),
        default="inception",
        help="feature protocol of the temperature selection (default inception)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of sampling, dequantisation and KID/IS subsets (default 0)"
    )
    parser.add_argument(
        "--reference",
        choices=SPLITS,
        default="train",
        help="real split to compare with (default train; val: the 5,000 training images held out for validation)",
    )
    parser.add_argument("--bpd-images", type=int, help="bits/dim on the first N test images only (default all)")
    parser.add_argument(
        "--noise",
        type=float,
        default=0.02,
        help="noise sigma of --baseline noisy_test, in units of the [0, 1] range (default 0.02)",
    )
    parser.add_argument(
        "--classifier-weights", help="classifier weights for the classifier protocol (default: the shipped ones)"
    )
    parser.add_argument("--data-dir", help="folder with the data (default $LGM_DATA_DIR)")
    add_sampler_options(parser, likelihood=True)
    add_network_precision_option(parser)
    add_inception_runtime_option(parser)
    add_denoise_options(parser)
    add_guidance_options(parser)
    add_hub_option(parser)
    parser.add_argument("--no-figures", action="store_true", help="metrics only")
    parser.add_argument(
        "--out", default="report.json", help="JSON report; figures are written beside it (default report.json)"
    )
    parser.set_defaults(guidance=None)  # None: a --pretrained model card's, else none
    args = parser.parse_args(argv)
    try:
        check_writable(args.out)  # before the evaluation, which may take hours
    except OSError as e:
        parser.error(str(e))
    if args.temperature is not None and args.select_temperature:
        parser.error("give either --temperature or --select-temperature, not both")
    if args.guidance is not None and args.select_guidance:
        parser.error("give either --guidance or --select-guidance, not both")
    ckpt, sampling = args.ckpt, {}
    if args.pretrained:
        try:
            ckpt = str(pretrained_file(args.pretrained, args.hub))
            sampling = model_card(args.pretrained, args.hub).get("sampling", {})
        except (FileNotFoundError, ValueError) as e:
            parser.error(str(e))
        args.data = args.data or args.pretrained.split("/")[0]
    if args.data is None:
        parser.error("--data is required: the data set of the model (mnist, fashion_mnist or cifar10)")
    candidates = parse_candidates(parser, "--select-temperature", args.select_temperature)
    guidances = parse_candidates(parser, "--select-guidance", args.select_guidance)

    settings = EvalSettings(
        data=args.data,
        metrics=tuple(m.strip() for m in args.metrics.split(",") if m.strip()),
        n_samples=args.n_samples,
        inception_n=args.inception_n,
        seed=args.seed,
        temperature=sampling.get("temperature", 1.0) if args.temperature is None else args.temperature,
        select_temperatures=candidates,
        select_guidances=guidances,
        select_n=args.select_n,
        select_protocol=args.select_protocol,
        reference=args.reference,
        bpd_images=args.bpd_images,
        noise=args.noise,
        figures=not args.no_figures,
        data_dir=args.data_dir,
        classifier_weights=args.classifier_weights,
        solver=sampling.get("solver") if args.solver is None else args.solver,
        steps=sampling.get("steps") if args.steps is None else args.steps,
        time_shift=sampling.get("time_shift") if args.time_shift is None else args.time_shift,
        likelihood_solver=args.likelihood_solver,
        likelihood_steps=args.likelihood_steps,
        network_precision=args.network_precision,
        inception_runtime=args.inception_runtime,
        denoise=args.denoise,
        denoise_step=args.denoise_step,
        guidance=sampling.get("guidance", NO_GUIDANCE) if args.guidance is None else args.guidance,
        guidance_attention_temperature=args.guidance_attention_temperature,
    )
    try:
        report = evaluate(args.out, settings, ckpt=ckpt, baseline=args.baseline, draw=draw_report_figures)
    except (FileNotFoundError, ModuleNotFoundError, ValueError) as e:
        parser.error(str(e))
    print(f"wrote {args.out}")
    if report.get("temperature_selection"):
        selection = report["temperature_selection"]
        print(
            f"temperature {selection['chosen']} chosen on the validation split; FID by temperature: {selection['fid']}"
        )
    if report.get("guidance_selection"):
        selection = report["guidance_selection"]
        print(f"guidance {selection['chosen']} chosen on the validation split; FID by guidance: {selection['fid']}")
    if report.get("sampling"):
        print("sampling", report["sampling"])
    for protocol, values in report["metrics"].items():
        print(protocol, {k: v for k, v in (values or {}).items() if k != "protocol"})
    return report


def parse_candidates(parser: argparse.ArgumentParser, option: str, value: str | None) -> tuple[float, ...]:
    """The comma-separated numbers of ``option`` (``()`` when not given); a one-line error otherwise."""
    if not value:
        return ()
    try:
        return tuple(float(v) for v in value.split(","))
    except ValueError:
        parser.error(f"{option} takes comma-separated numbers, got {value!r}")
