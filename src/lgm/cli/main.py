"""The ``lgm-flow`` program: one entry point for every subcommand.

``fit``, ``validate``, ``test`` and ``predict`` are Lightning's CLI (`lgm.cli.lightning`); ``sample``
(`lgm.cli.sample`), ``evaluate`` (`lgm.cli.evaluate`), ``classifier`` (`lgm.cli.classifier`) and
``pretrained`` (`lgm.cli.pretrained`) are lgm's own. Every subcommand reports errors the same way (see `main`).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lgm.train.guard import TrainingDiverged

# Every subcommand, with what ``lgm-flow --help`` says of it.
SUBCOMMANDS = {
    "fit": "train a model from a YAML config and --section.key overrides (Lightning's CLI); resumes with --ckpt_path",
    "validate": "validation loss of a checkpoint",
    "test": "test bits/dim (or NLL) of a checkpoint",
    "predict": "Lightning's predict loop",
    "sample": "draw samples from a checkpoint or model file into a picture",
    "evaluate": "bits/dim, FID, KID, IS, precision/recall and figures of a checkpoint or baseline, as a JSON report",
    "classifier": "train or test the feature classifier of the classifier protocol",
    "pretrained": "list the trained models shipped with the package (sample or evaluate one with --pretrained NAME)",
}
DEBUG_ENV = "LGM_DEBUG"  # set to 1 for the full traceback of an error (as --debug does)


def main(args: list[str] | None = None) -> None:
    """Run ``lgm-flow``. A user error (bad value, missing or foreign file, unwritable path) ends in one
    line on stderr and exit status 2; a run that diverged in one line and status 1; a run stopped by
    SIGTERM with status 143. ``--debug`` (anywhere) or ``LGM_DEBUG=1`` shows the traceback instead."""
    argv = list(sys.argv[1:] if args is None else args)
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    if argv[:1] in ([], ["-h"], ["--help"]):
        print(overview(), file=sys.stdout if argv else sys.stderr)
        sys.exit(0 if argv else 2)  # no subcommand is a usage error
    try:
        run_subcommand(argv)
    except SIGTERMException:
        # Lightning's exception is a SystemExit with status 0; a stopped run must not look finished.
        sys.exit(128 + signal.SIGTERM)
    except TrainingDiverged as error:
        fail(error, status=1, debug=debug)
    except argparse.ArgumentError as error:  # a bad option or config value
        subcommand = f" {argv[0]}" if argv and argv[0] in SUBCOMMANDS else ""
        fail(error, status=2, debug=debug, hint=f"see `lgm-flow{subcommand} --help`")
    except (
        ValueError,
        OSError,
        ModuleNotFoundError,
        MisconfigurationException,
    ) as error:  # CheckpointError is a ValueError
        fail(error, status=2, debug=debug)


def overview() -> str:
    """What ``lgm-flow --help`` prints: the subcommands, and how errors are reported."""
    width = max(map(len, SUBCOMMANDS))
    lines = [f"  {name:<{width}}  {what}" for name, what in SUBCOMMANDS.items()]
    return "\n".join(
        [
            "usage: lgm-flow SUBCOMMAND [options]   (lgm-flow SUBCOMMAND --help for its options)",
            "",
            *lines,
            "",
            f"A user error ends in one line and exit status 2; --debug or {DEBUG_ENV}=1 shows the traceback.",
        ]
    )


def fail(error: BaseException, status: int, debug: bool, hint: str = "") -> None:
    """Exit with ``status`` after one line naming ``error`` and ``hint`` (or re-raise it for its
    traceback, when ``debug``)."""
    if debug:
        raise error
    print(f"lgm-flow: error: {describe(error)}{'; ' + hint if hint else ''}", file=sys.stderr)
    sys.exit(status)


def describe(error: BaseException) -> str:
    """``error`` as one line. Errors of the operating system get the path and a hint; the messages of
    lgm's own errors already name the fix."""
    if isinstance(error, OSError) and error.filename is not None:
        text = f"{error.strerror or error}: {str(error.filename)!r}; check the path and its permissions"
    else:
        text = str(error) or type(error).__name__
    text = " ".join(text.split())
    # jsonargparse reports a class that failed to build as a list of the union's members that did not fit:
    # keep the member that is the class's own error.
    if "Does not validate against any of the Union subtypes" in text and "Errors: - " in text:
        reasons = text.split("Errors: - ", 1)[1].split(" - ")
        text = next((r for r in reasons if not r.startswith("Expected a <class 'NoneType'>")), reasons[0])
    # ... and a class path it cannot import as the ways it tried: keep the import's error.
    elif text.startswith("Parser key") and " - Problem with given class_path" in text:
        key, reasons = text.split(": - ", 1)
        text = f"{key}: {reasons.split(' - ')[-1]}"
    return text


def run_subcommand(argv: list[str]) -> None:
    """Hand ``argv`` to its subcommand (imported only when used: Lightning's start-up is slow)."""
    if argv and not argv[0].startswith("-") and argv[0] not in SUBCOMMANDS:
        raise ValueError(f"unknown command {argv[0]!r}; choose one of {', '.join(SUBCOMMANDS)} (see `lgm-flow --help`)")
    if argv[:1] == ["sample"]:
        from lgm.cli.sample import sample_main

        sample_main(argv[1:])
    elif argv[:1] == ["evaluate"]:
        from lgm.cli.evaluate import evaluate_main

        evaluate_main(argv[1:])
    elif argv[:1] == ["pretrained"]:
        from lgm.cli.pretrained import pretrained_main

        pretrained_main(argv[1:])
    elif argv[:1] == ["classifier"]:
        from lgm.cli.classifier import classifier_main

        classifier_main(argv[1:])
    else:
        from lgm.cli.lightning import run_lightning

        run_lightning(argv)
