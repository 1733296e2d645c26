"""``lgm-flow pretrained``: list the trained models shipped with the package (`lgm.flow.zoo`)."""

from __future__ import annotations

import argparse
import json

from lgm.cli.options import add_hub_option
from lgm.flow.zoo import model_card, pretrained_file, pretrained_models


def pretrained_main(argv: list[str]) -> list[str]:
    parser = argparse.ArgumentParser(
        prog="lgm-flow pretrained",
        description="List the shipped models; `lgm-flow sample --pretrained NAME` and `lgm-flow evaluate "
        "--pretrained NAME` use one, `lgm.flow.pretrained(NAME)` loads one in Python.",
    )
    parser.add_argument("name", nargs="?", help="print this model's card (JSON) instead of the list")
    add_hub_option(parser)
    args = parser.parse_args(argv)
    if args.name:
        print(json.dumps(model_card(args.name, args.hub), indent=2))
        return [args.name]
    names = pretrained_models(args.hub)
    for name in names:
        card = model_card(name, args.hub)
        size = pretrained_file(name, args.hub).stat().st_size / 1e6  # fetches it, checks it against its card
        headline = ", ".join(f"{metric} {entry['value']}" for metric, entry in card.get("metrics", {}).items())
        print(f"{name}  ({size:.1f} MB)  {card['summary']}; {headline}")
    if not names:
        print(
            "no pretrained models " + ("are shipped with this installation" if args.hub is None else f"in {args.hub}")
        )
    return names
