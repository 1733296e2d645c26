"""Saving and loading flows: `save` writes a model file, `load` reads it or a training checkpoint.

Both files hold the same two entries, so one reader serves both:

* ``"lgm_flow"``: ``{"format": 4, "class_path": "lgm.flow.NiceFlow", "init_args": {...}}``, the
  recipe to rebuild the model with plain arguments;
* ``"state_dict"``: the model's tensors, keys prefixed with ``"flow."`` (the attribute name under
  which the training module holds the model, so Lightning checkpoints need no conversion).

Files are read with ``torch.load(weights_only=True)``: loading never runs code stored in the file.
Files of an earlier format are read through `upgrade_spec`, which renames what has been renamed
since (the tensors' names have not changed).
"""

from __future__ import annotations

import copy
import importlib
import inspect
import os
import zipfile
from pathlib import Path

import torch

from lgm.flow.base import Flow, plain_init_arg
from lgm.flow.preprocess import Preprocessing
from lgm.utils.files import atomic_save

FORMAT_VERSION = 4

# Constructor arguments renamed in format 2, per model class: {class: {old name: new name}}.
RENAMED_IN_FORMAT_2 = {
    "lgm.flow.matching.FlowMatching": {"coupling": "pairing"},  # "coupling" also named the coupling layers
    "lgm.flow.glow.Glow": {"permutation": "mixing"},  # "conv_lu" is no permutation
    "lgm.flow.glow.VectorGlow": {"permutation": "mixing"},
}

# Format 3 holds an image model's five preprocessing arguments as one value, "preprocessing" (a dict of
# `lgm.flow.Preprocessing`'s fields, or None for continuous data). The defaults the flat arguments had:
FLAT_PREPROCESSING_DEFAULTS = {
    "lgm.flow.nice.NiceFlow": {"n_bits": None, "data_range": "unit"},
    "lgm.flow.realnvp.RealNVP": {"n_bits": 8, "data_range": "unit", "logit_alpha": 0.05},
    "lgm.flow.glow.Glow": {"n_bits": 8, "data_range": "centered"},
    "lgm.flow.matching.FlowMatching": {"n_bits": None, "data_range": "centered"},
}
PREPROCESSING_FIELDS = ("n_bits", "data_range", "logit_alpha", "normalize", "pad_to")

# Format 4 names sizes in one vocabulary: ``width`` (features of a network's hidden layers), ``depth``
# (its hidden layers or residual blocks), the flow's length by its unit (``couplings``, ``flow_steps``),
# ``steps`` only for solver steps.
RENAMED_IN_FORMAT_4 = {
    "lgm.flow.nice.NiceFlow": {"hidden": "width"},
    "lgm.flow.realnvp.RealNVP": {"hidden": "width", "blocks": "depth"},
    "lgm.flow.realnvp.VectorRealNVP": {"hidden": "width"},
    "lgm.flow.glow.Glow": {"hidden": "width", "steps": "flow_steps"},
    "lgm.flow.glow.VectorGlow": {"hidden": "width", "steps": "flow_steps"},
    "lgm.flow.matching.FlowMatching": {"hidden": "width", "widths": "level_widths", "embed": "embedding_width"},
}
STATE_PREFIX = "flow."


class CheckpointError(ValueError):
    """A checkpoint or model file that cannot be used; the message says why and what to do."""


def flow_spec(flow: Flow) -> dict:
    """The ``"lgm_flow"`` entry for ``flow``: its class path and the arguments that rebuild it."""
    init_args = getattr(flow, "init_args", None)
    if init_args is None:
        raise TypeError(
            f"{type(flow).__name__} records no init_args, so it cannot be rebuilt from a file; "
            "use a model class such as lgm.flow.NiceFlow, or set self.init_args in your subclass"
        )
    cls = type(flow)
    return {
        "format": FORMAT_VERSION,
        "class_path": f"{cls.__module__}.{cls.__qualname__}",
        "init_args": copy.deepcopy(dict(init_args)),  # a spec never aliases the live model's arguments
    }


def save(flow: Flow, path: str | os.PathLike) -> None:
    """Write ``flow`` to ``path`` atomically (a crash mid-write leaves any previous file intact)."""
    payload = {
        "lgm_flow": flow_spec(flow),
        "state_dict": {STATE_PREFIX + k: v for k, v in flow.state_dict().items()},
    }
    atomic_save(payload, path)


def check_readable(path: str | os.PathLike) -> None:
    """Raise `CheckpointError` unless ``path`` is a complete PyTorch file: every member of its zip
    archive is read and its CRC checked (nothing is unpickled). Catches truncated and overwritten files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint or model file at {str(path)!r}; check the path")
    try:
        with zipfile.ZipFile(path) as archive:
            broken = archive.testzip()
    except (zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(
            f"{str(path)!r} is not a complete PyTorch file ({e}): it is truncated or not a checkpoint; "
            "use an intact copy, or another checkpoint of the same run"
        ) from e
    if broken is not None:
        raise CheckpointError(
            f"{str(path)!r} is corrupted (member {broken!r} fails its checksum); use another checkpoint"
        )


def check_compatible(spec: dict | None, flow: Flow, source: str) -> None:
    """Raise `CheckpointError` unless the ``"lgm_flow"`` entry ``spec`` of ``source`` describes ``flow``."""
    if spec is None:
        raise CheckpointError(f"{source} is not an lgm-flow checkpoint: it has no 'lgm_flow' entry")
    spec = upgrade_spec(spec, source)
    mine = flow_spec(flow)
    theirs = _with_defaults(type(flow), spec.get("init_args", {}))
    if spec.get("class_path") != mine["class_path"] or theirs != mine["init_args"]:
        differ = sorted(k for k in set(theirs) | set(mine["init_args"]) if theirs.get(k) != mine["init_args"].get(k))
        raise CheckpointError(
            f"{source} holds a {spec.get('class_path')} that differs from the configured {mine['class_path']} in "
            f"{differ or 'its class'} (file: {[theirs.get(k) for k in differ]}, config: "
            f"{[mine['init_args'].get(k) for k in differ]}). Resume with the run's own config.yaml"
        )


def _with_defaults(cls: type, init_args: dict) -> dict:
    """``init_args`` completed with ``cls``'s defaults for arguments it lacks: a file written before an
    argument was added to the class describes the model that the default builds."""
    defaults = {
        name: p.default
        for name, p in inspect.signature(cls).parameters.items()
        if p.default is not inspect.Parameter.empty and name not in init_args
    }
    defaults = {name: plain_init_arg(value) for name, value in defaults.items()}
    return {**init_args, **defaults}


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Flow:
    """Rebuild the flow stored in ``path`` (a `save` file or a ``lgm-flow fit`` checkpoint), in eval mode."""
    check_readable(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"could not read {str(path)!r} as a PyTorch file ({e}); it may be truncated or not a checkpoint"
        ) from e
    spec = payload.get("lgm_flow") if isinstance(payload, dict) else None
    if spec is None:
        raise CheckpointError(
            f"{str(path)!r} is not an lgm-flow file: it has no 'lgm_flow' entry. "
            "Use a checkpoint written by `lgm-flow fit` or a file written by lgm.flow.save"
        )
    spec = upgrade_spec(spec, str(path))
    flow = build_flow(spec)
    state = {k[len(STATE_PREFIX) :]: v for k, v in payload["state_dict"].items() if k.startswith(STATE_PREFIX)}
    try:
        flow.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(
            f"the weights in {str(path)!r} do not fit {spec['class_path']}(**{spec['init_args']}); the file was "
            f"written by an incompatible version or edited. Details: {str(e)[:500]}"
        ) from e
    return flow.to(map_location).eval()


def upgrade_spec(spec: dict, source: str) -> dict:
    """The ``"lgm_flow"`` entry ``spec`` of ``source`` in today's format (every earlier format is converted)."""
    version = spec.get("format")
    if version not in range(1, FORMAT_VERSION + 1):
        raise CheckpointError(
            f"{source!r} has lgm-flow format {version!r}; this version reads formats 1 to {FORMAT_VERSION}: "
            "load it with the lgm-flow version that wrote it"
        )
    class_path, init_args = spec.get("class_path"), dict(spec.get("init_args", {}))
    if version < 2:
        init_args = renamed_args(init_args, RENAMED_IN_FORMAT_2.get(class_path, {}))
    if version < 3 and class_path in FLAT_PREPROCESSING_DEFAULTS:
        flat = {
            **FLAT_PREPROCESSING_DEFAULTS[class_path],
            **{k: init_args.pop(k) for k in PREPROCESSING_FIELDS if k in init_args},
        }
        if flat["n_bits"] is None:
            init_args["preprocessing"] = None
        else:
            init_args["preprocessing"] = {k: flat.get(k) for k in PREPROCESSING_FIELDS}
    if version < 4:
        init_args = renamed_args(init_args, RENAMED_IN_FORMAT_4.get(class_path, {}))
    if isinstance(init_args.get("preprocessing"), dict):
        # Fields added to Preprocessing since the file was written (noise_std, dequantization) take the
        # defaults that describe the model the file holds.
        init_args["preprocessing"] = plain_init_arg(Preprocessing(**init_args["preprocessing"]))
    return {**spec, "format": FORMAT_VERSION, "init_args": init_args}


def renamed_args(init_args: dict, renamed: dict[str, str]) -> dict:
    """``init_args`` with the keys in ``renamed`` (``{old name: new name}``) given their new names."""
    return {renamed.get(k, k): v for k, v in init_args.items()}


def build_flow(spec: dict) -> Flow:
    """A new flow from ``{"class_path": "lgm.flow.Glow", "init_args": {...}}`` (a checkpoint's or a config's)."""
    module_name, _, class_name = spec["class_path"].rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"the model class {spec['class_path']!r} named in the file cannot be imported ({e})") from e
    if not (isinstance(cls, type) and issubclass(cls, Flow)):
        raise ValueError(f"{spec['class_path']!r} is not an lgm.flow.Flow subclass")
    return cls(**spec["init_args"])
