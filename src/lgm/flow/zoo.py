"""The model zoo: trained models shipped with the package, each a `lgm.flow.save` file,
``weights/<data>/<family>.pt``, with its card beside it, ``<family>.json``.

`pretrained("fashion_mnist/flow_matching")` loads one, after checking the file's SHA-256 against its
card, set up to sample as its card's numbers were measured (the card's ``sampling``: solver, steps,
time shift, guidance; the temperature is the caller's, the card says which one it used).
`pretrained_models` lists the names, `model_card` reads a card; `pretrained_or_file` takes either a name or
the path of a checkpoint (the notebooks' ``PRETRAINED`` switch).

Every function takes ``hub``, where the models are: ``None``, the package's own; a local folder laid out
the same way, ``<data>/<family>.pt`` and ``.json`` (a copy or a downloaded snapshot); or a Hugging Face Hub
repository id, ``"owner/repo"`` of that layout, fetched with ``huggingface_hub`` (``pip install
'lgm-flow[hub]'``) into its cache, from which it loads offline too (``HF_HUB_OFFLINE=1``). The card's
SHA-256 is checked whatever the source.

A card (JSON) holds:

- ``name``, ``summary``, ``sha256`` of the ``.pt`` file;
- ``recipe``: the command that trained it; ``training``: time, steps, date, machine, precision;
- ``sampling``: the settings `pretrained` applies, and the ``temperature`` the metrics used;
- ``metrics``: what it measured, each with its protocol (e.g. Inception FID at n = 10,000 against the
  test set);
- ``check``: a quick, reproducible bits/dim of the first ``images`` test images (seed, likelihood
  solver), with its standard error; the test suite re-scores every shipped file against it, so a file
  can never drift from its card unnoticed. For a continuous flow the check's solver is coarse and its
  number is a fingerprint of the weights, not the model's likelihood (that is in ``metrics``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from lgm.flow.base import Flow
from lgm.flow.io import CheckpointError, load

WEIGHTS = Path(__file__).with_name("weights")
Hub = str | Path | None  # where the models are: see the module docstring


def zoo_folder(hub: Hub = None, patterns: tuple[str, ...] = ("*/*.json",)) -> Path:
    """The local folder of the models of ``hub``: the package's, ``hub`` itself if it is a folder, or the
    snapshot of the Hub repository ``hub`` holding the files that match ``patterns`` (downloaded, or
    from the cache)."""
    if hub is None:
        return WEIGHTS
    if Path(hub).is_dir():
        return Path(hub)
    try:
        import huggingface_hub
    except ImportError:
        raise ModuleNotFoundError(
            f"{hub!r} is no folder, and loading a Hugging Face Hub repository needs huggingface_hub: "
            "pip install 'lgm-flow[hub]'"
        ) from None
    try:
        return Path(huggingface_hub.snapshot_download(repo_id=str(hub), allow_patterns=list(patterns)))
    except (huggingface_hub.errors.HFValidationError, huggingface_hub.errors.EntryNotFoundError, OSError) as error:
        raise ValueError(
            f"cannot get the models of the Hub repository {hub!r} ({type(error).__name__}: {error}); check the "
            "id (owner/repo) and the connection (offline, only what the cache holds loads)"
        ) from None


def pretrained_models(hub: Hub = None) -> list[str]:
    """Names of the models of ``hub`` (default: shipped with the package), ``"<data>/<family>"``, sorted."""
    folder = zoo_folder(hub)
    return sorted(card.relative_to(folder).with_suffix("").as_posix() for card in folder.glob("*/*.json"))


def model_card(name: str, hub: Hub = None) -> dict[str, Any]:
    """The card of the model ``name``; a `ValueError` naming the choices for an unknown one."""
    names = pretrained_models(hub)
    if name not in names:
        raise ValueError(
            f"no pretrained model {name!r}{'' if hub is None else f' in {str(hub)!r}'}; choose one of "
            f"{', '.join(names) or '(none)'} (`lgm-flow pretrained` lists them)"
        )
    return json.loads((zoo_folder(hub) / f"{name}.json").read_text())


def pretrained_file(name: str, hub: Hub = None) -> Path:
    """The path of ``name``'s weights, after checking their SHA-256 against its card (a `CheckpointError`
    if they differ: the file was changed or damaged)."""
    card = model_card(name, hub)
    path = zoo_folder(hub, (f"{name}.json", f"{name}.pt")) / f"{name}.pt"
    again = "reinstall lgm-flow" if hub is None else f"fetch it from {str(hub)!r} again"
    if not path.is_file():
        raise FileNotFoundError(f"the weights of {name!r} are missing ({path.name}); {again}")
    digest = file_sha256(path)
    if digest != card["sha256"]:
        raise CheckpointError(
            f"the weights of {name!r} have SHA-256 {digest}, not their card's {card['sha256']}: the file was "
            f"changed or damaged; {again}"
        )
    return path


def pretrained(name: str, map_location: str | torch.device = "cpu", hub: Hub = None) -> Flow:
    """The model ``name`` of ``hub`` (see `pretrained_models`), checked against its card's SHA-256, in eval
    mode, sampling with its card's settings (``flow.use_solver``, ``flow.use_guidance`` change them)."""
    card = model_card(name, hub)
    flow = load(pretrained_file(name, hub), map_location=map_location)
    use_card_sampling(flow, card.get("sampling", {}))
    return flow


def pretrained_or_file(source: str | Path, hub: Hub = None, map_location: str | torch.device = "cpu") -> Flow:
    """The zoo model named ``source`` (`pretrained`) if ``hub`` has one of that name, else the checkpoint or
    `lgm.flow.save` file at the path ``source`` (`lgm.flow.load`); a `ValueError` naming both
    choices if it is neither."""
    names = pretrained_models(hub)
    if str(source) in names:
        return pretrained(str(source), map_location, hub)
    if not Path(source).is_file():
        raise ValueError(
            f"{str(source)!r} is neither a pretrained model ({', '.join(names) or 'none'}) nor a file; give one "
            "of those names or the path of a checkpoint"
        )
    return load(source, map_location=map_location)


def card_temperature(name: str, hub: Hub = None) -> float:
    """The temperature at which the card of ``name`` measured its numbers (1.0 if it names none)."""
    return float(model_card(name, hub).get("sampling", {}).get("temperature", 1.0))


def use_card_sampling(flow: Flow, sampling: dict[str, Any]) -> None:
    """Apply a card's ``sampling`` settings to ``flow``: solver, steps and time shift (continuous flows),
    guidance scale."""
    if flow.capabilities.solver and any(k in sampling for k in ("solver", "steps", "time_shift")):
        flow.use_solver(sampling.get("solver"), sampling.get("steps"), sampling.get("time_shift"))
    if "guidance" in sampling:
        flow.use_guidance(sampling["guidance"])


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of the file at ``path``, hex: what a card records."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
