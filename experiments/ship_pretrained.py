"""Add a trained model to the zoo (`lgm.flow.zoo`): its weights as a `lgm.flow.save` file and its card.

    python -m experiments.ship_pretrained CKPT --name fashion_mnist/flow_matching --card draft.json \\
        --check-images 500 [--likelihood-solver midpoint --likelihood-steps 8]

``draft.json`` holds what a person states and measured elsewhere: ``summary``, ``recipe``, ``training``,
``sampling`` and ``metrics`` (see `lgm.flow.zoo`). This script adds the ``name``, the parameter count,
the file's ``sha256`` and the ``check`` (bits/dim of the first ``--check-images`` test images, measured
here by `lgm.evaluate.cards.card_check`, which the test suite re-scores), and writes both files into
``src/lgm/flow/weights/`` (or ``--weights``). A distilled `lgm.flow.MeanFlow` ships without its teacher.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lgm.data.images import load_images
from lgm.evaluate.cards import card_check
from lgm.flow import MeanFlow, load, save
from lgm.flow.zoo import WEIGHTS, file_sha256
from lgm.utils.files import atomic_write_text

CARD_FIELDS = ("summary", "recipe", "training", "sampling", "metrics")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m experiments.ship_pretrained", description=__doc__.split("\n")[0])
    parser.add_argument("ckpt", help="checkpoint (.ckpt) or lgm.flow.save file of the model")
    parser.add_argument("--name", required=True, help="<data>/<family>, e.g. fashion_mnist/flow_matching")
    parser.add_argument("--card", required=True, help=f"JSON with {', '.join(CARD_FIELDS)}")
    parser.add_argument("--check-images", type=int, default=500, help="test images of the check (default 500)")
    parser.add_argument("--likelihood-solver", help="ODE solver of a continuous flow's check")
    parser.add_argument("--likelihood-steps", type=int, help="its steps")
    parser.add_argument("--data-dir", help="folder with the data (default $LGM_DATA_DIR)")
    parser.add_argument("--weights", default=str(WEIGHTS), help="the zoo's folder (default: the package's)")
    args = parser.parse_args(argv)
    draft = json.loads(Path(args.card).read_text())
    missing = [field for field in CARD_FIELDS if field not in draft]
    if missing:
        parser.error(f"the draft card {args.card!r} lacks {', '.join(missing)}")
    data, _, family = args.name.partition("/")
    if not family:
        parser.error(f"--name is <data>/<family>, got {args.name!r}")

    flow = load(args.ckpt)
    if isinstance(flow, MeanFlow) and flow.teacher is not None:
        flow = flow.without_teacher()  # a distilled model samples without its teacher
    weights = Path(args.weights) / f"{args.name}.pt"
    weights.parent.mkdir(parents=True, exist_ok=True)
    save(flow, weights)
    check = card_check(
        load(weights),  # the shipped file, as users will load it
        load_images(data, args.data_dir),
        images=args.check_images,
        likelihood_solver=args.likelihood_solver,
        likelihood_steps=args.likelihood_steps,
    )
    card = {
        "name": args.name,
        "class": type(flow).__name__,
        "parameters": sum(p.numel() for p in flow.parameters()),
        "sha256": file_sha256(weights),
        **{field: draft[field] for field in CARD_FIELDS},
        "check": check,
    }
    atomic_write_text(json.dumps(card, indent=2) + "\n", weights.with_suffix(".json"))
    print(json.dumps(card, indent=2))
    return card


if __name__ == "__main__":
    main()
