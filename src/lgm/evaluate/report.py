"""The evaluation report of an image flow (or of a reference image set): metrics as JSON, figures beside it.

`evaluate` draws the images to score (samples of a flow at one temperature, or a baseline set),
computes the metrics asked for in each feature protocol against a cached real reference set of
the same size, and for flows also bits/dim, likelihood diagnostics and figures. The long stages that
finish (the temperature selection, bits/dim) are kept in ``<out>.partial`` until the report is
written, so rerunning the same evaluation after an interruption starts where it stopped.

Metric names: ``bpd`` (test bits/dim); classifier protocol ``fid``, ``kid``, ``is``, ``pr``;
Inception protocol ``inception_fid``, ``inception_kid``, ``inception_pr`` (on ``inception_n`` images).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor

from lgm.data.images import get_dataset, load_images
from lgm.evaluate.baselines import PixelGaussian
from lgm.evaluate.diagnostics import (
    chi_mean,
    corrupted_likelihoods,
    gaussian_noise,
    mean_bits_per_dim,
    standardized_latents,
    to_data,
)
from lgm.evaluate.features import SPLITS, Protocol, get_protocol, real_images
from lgm.evaluate.quality import (
    QUALITY_METRICS,
    class_accuracy,
    generate,
    quality_metrics,
    reference_features,
    sample_labels,
)
from lgm.flow.base import Flow
from lgm.flow.discrete import dequantize_images
from lgm.flow.guidance import NO_GUIDANCE
from lgm.flow.io import flow_spec, load
from lgm.utils.files import atomic_write_text
from lgm.utils.hardware import machine_summary

METRICS = ("bpd", *QUALITY_METRICS, *(f"inception_{m}" for m in ("fid", "kid", "pr")), "class_accuracy")
BASELINES = ("test", "noisy_test", "gaussian")


@dataclass
class EvalSettings:
    """What `evaluate` does; see ``lgm-flow evaluate --help`` for each field."""

    data: str
    metrics: tuple[str, ...] = ("bpd", "fid", "kid", "is", "pr")
    n_samples: int = 10_000
    inception_n: int = 1_000
    temperature: float = 1.0
    seed: int = 0
    reference: str = "train"
    bpd_images: int | None = None
    noise: float = 0.02
    figures: bool = True
    data_dir: str | None = None
    classifier_weights: str | None = None
    solver: str | None = None
    steps: int | None = None
    time_shift: float | None = None
    likelihood_solver: str | None = None
    likelihood_steps: int | None = None
    network_precision: str = "32"
    inception_runtime: str = "auto"
    denoise: bool | None = None
    denoise_step: float = 1.0
    guidance: float = NO_GUIDANCE
    guidance_attention_temperature: float | None = None
    select_temperatures: tuple[float, ...] = ()
    select_guidances: tuple[float, ...] = ()
    select_n: int = 1_000
    select_protocol: str = "inception"
    figure_temperatures: tuple[float, ...] = field(default=(0.0, 0.5, 0.7, 0.85, 1.0))

    def check(self) -> None:
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; choose among {', '.join(METRICS)}")
        if self.n_samples < 10 or self.inception_n < 10:
            raise ValueError(
                f"n_samples and inception_n must be at least 10, got {self.n_samples} and {self.inception_n}"
            )
        if self.temperature < 0:
            raise ValueError(f"temperature must be non-negative, got {self.temperature}")
        if self.reference not in SPLITS:
            raise ValueError(f"reference must be one of {', '.join(SPLITS)}, got {self.reference!r}")
        if any(t < 0 for t in self.select_temperatures):
            raise ValueError(f"temperatures must be non-negative, got {list(self.select_temperatures)}")
        if any(not w >= 0 for w in self.select_guidances):
            raise ValueError(f"guidance scales must be non-negative, got {list(self.select_guidances)}")
        if self.select_n < 10:
            raise ValueError(f"select_n must be at least 10, got {self.select_n}")
        if self.select_protocol not in ("classifier", "inception"):
            raise ValueError(f"select_protocol must be 'classifier' or 'inception', got {self.select_protocol!r}")


def _protocol_metrics(settings: EvalSettings, images_for, protocol: Protocol, wanted: list[str], n: int) -> dict:
    """Metrics of one protocol: ``images_for(n)`` gives the uint8 images to score."""
    reference = reference_features(protocol, settings.data, settings.reference, n, settings.data_dir)
    images, cache_as = images_for(n)
    values = quality_metrics(images, protocol, reference, tuple(wanted), settings.seed, cache_as)
    return {
        "protocol": protocol.identity,
        "runtime": protocol.runtime,
        "n_generated": len(images),
        "n_reference": len(reference),
        **values,
    }


def evaluate(
    out: str | Path,
    settings: EvalSettings,
    ckpt: str | Path | None = None,
    baseline: str | None = None,
    draw: Callable[[dict, Path], dict[str, str]] | None = None,
) -> dict:
    """Evaluate a flow checkpoint (``ckpt``) or a baseline image set and write the report ``out`` (JSON).

    With ``settings.figures``, a model's diagnostics are computed; ``draw(figures, stem)`` (e.g.
    `lgm.viz.report.draw_report_figures`, which ``lgm-flow evaluate`` passes) then writes each figure
    beside the report as ``<stem>_<name>.png`` and returns their paths, listed in the report.
    """
    settings.check()
    if (ckpt is None) == (baseline is None):
        raise ValueError("evaluate needs exactly one of a checkpoint (--ckpt) and a baseline (--baseline)")
    start = time.time()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    flow = None
    if ckpt is not None:  # a broken checkpoint, or one of other data, is reported before any data is read
        flow = load(ckpt)
        shape = get_dataset(settings.data).shape
        if flow.n_bits is None or tuple(flow.shape) != shape:
            raise ValueError(
                f"the model takes data of shape {list(flow.shape)}, but {settings.data} images are {list(shape)}"
            )
    arrays = load_images(settings.data, settings.data_dir)
    report: dict = {
        "data": {
            "name": settings.data,
            "reference_split": settings.reference,
            "train_images": len(arrays.x_train),
            "test_images": len(arrays.x_test),
            "test_sha256": hashlib.sha256(arrays.x_test.numpy().tobytes()).hexdigest(),
        }
    }
    if flow is not None:
        _use_solver(flow, settings)
        if settings.select_guidances and not flow.capabilities.guidance:
            raise ValueError(f"guidance selection needs a model with guided sampling; {type(flow).__name__} has none")
        flow.use_guidance(settings.guidance, settings.guidance_attention_temperature)
        flow.use_network_precision(settings.network_precision)
        settings = replace(settings, denoise=flow.denoises(settings.denoise))
        report["machine"] = machine_summary()
        report["model"] = {
            "checkpoint": str(ckpt),
            "sha256": hashlib.sha256(Path(ckpt).read_bytes()).hexdigest(),
            **flow_spec(flow),
            "parameters": sum(p.numel() for p in flow.parameters()),
        }
    else:
        if baseline not in BASELINES:
            raise ValueError(f"unknown baseline {baseline!r}; choose among {', '.join(BASELINES)}")
        if settings.select_temperatures or settings.select_guidances:
            raise ValueError("temperature or guidance selection needs a model (--ckpt), not a baseline")
        report["model"] = {"baseline": baseline}

    # Protocols first: a missing extra or classifier should fail before any long computation.
    requested = {
        "classifier": [m for m in QUALITY_METRICS if m in settings.metrics],
        "inception": [m for m in QUALITY_METRICS if f"inception_{m}" in settings.metrics],
    }
    needed = {name for name, wanted in requested.items() if wanted}
    if "class_accuracy" in settings.metrics:
        if flow is None or not flow.n_classes:
            raise ValueError("class_accuracy needs a class-conditional model: drop it from the metrics")
        needed.add("classifier")
    protocols = {
        name: get_protocol(name, settings.data, settings.classifier_weights, settings.inception_runtime)
        for name in requested
        if name in needed
    }
    stages = FinishedStages(out, {"data": report["data"], "model": report["model"], "settings": asdict(settings)})
    if flow is not None and settings.select_temperatures:
        selection = stages.run("temperature_selection", lambda: select_temperature(flow, settings))
        report["temperature_selection"] = selection
        settings = replace(settings, temperature=selection["chosen"])
    if flow is not None and settings.select_guidances:
        selection = stages.run("guidance_selection", lambda: select_guidance(flow, settings))
        report["guidance_selection"] = selection
        settings = replace(settings, guidance=selection["chosen"])
        flow.use_guidance(settings.guidance, settings.guidance_attention_temperature)
    report["settings"] = {k: v for k, v in asdict(settings).items() if k not in ("data", "data_dir")}
    if flow is not None:
        report["sampling"] = {}
        samples_of = _flow_images(flow, settings, report["sampling"])
    else:
        samples_of = _baseline_images(baseline, settings, arrays.x_train)
    metrics: dict = {}
    if "bpd" in settings.metrics:
        metrics["bpd"] = stages.run("bpd", lambda: _bits_per_dim(flow, arrays, settings, baseline))
        if flow is not None and flow.noise_std is not None:
            metrics["noisy_data_bpd"] = stages.run(
                "noisy_data_bpd", lambda: _noisy_data_bits_per_dim(flow, arrays, settings)
            )
    for name, protocol in protocols.items():
        n = settings.n_samples if name == "classifier" else settings.inception_n
        if requested[name]:
            metrics[name] = _protocol_metrics(settings, samples_of, protocol, requested[name], n)
    if "class_accuracy" in settings.metrics:
        images, _ = samples_of(settings.n_samples)
        metrics["class_accuracy"] = {
            "protocol": protocols["classifier"].identity,
            "n_generated": len(images),
            **class_accuracy(images, sample_labels(len(images), flow.n_classes), protocols["classifier"]),
        }
    report["metrics"] = metrics
    if flow is not None and settings.figures:
        report["diagnostics"], figures = _flow_diagnostics(flow, arrays, settings)
        report["figures"] = draw(figures, out.with_suffix("")) if draw is not None else {}
    report["wall_time_s"] = round(time.time() - start, 1)
    atomic_write_text(_json(report), out)
    stages.discard()
    return report


class FinishedStages:
    """The finished stages of one evaluation, kept as JSON in ``<out>.partial`` until its report is written.

    ``identity`` (data, model with its checkpoint's hash, settings) must match the stored one for the
    stages to be reused; a partial file of another evaluation, or an unreadable one, is ignored and
    replaced. Every stage is seeded by the settings alone, so a resumed report equals an uninterrupted one.
    """

    def __init__(self, out: Path, identity: dict):
        self.path = out.with_name(out.name + ".partial")
        self.identity = json.loads(_json(identity))
        self.done: dict = {}
        try:
            stored = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return
        if (
            isinstance(stored, dict)
            and stored.get("identity") == self.identity
            and isinstance(stored.get("stages"), dict)
        ):
            self.done = stored["stages"]
            print(f"resuming {out}: {', '.join(self.done)} already computed ({self.path})", flush=True)

    def run(self, name: str, compute):
        """The stored result of stage ``name``, or ``compute()``'s, stored before it is returned."""
        if name not in self.done:
            self.done[name] = json.loads(_json(compute()))
            atomic_write_text(_json({"identity": self.identity, "stages": self.done}), self.path)
        return self.done[name]

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


def select_temperature(flow: Flow, settings: EvalSettings) -> dict:
    """The temperature among ``settings.select_temperatures`` whose samples score the lowest FID against the
    validation split (`real_images`' ``val``: images that training held out, never the test set), at
    the guidance ``settings.guidance``.

    Each candidate draws ``select_n`` samples (seed ``settings.seed + 1``, apart from the samples that
    are scored afterwards) and is compared with ``select_n`` validation images in the
    ``select_protocol``. Returns ``{"split", "protocol", "n", "seed", "fid": {temperature: FID}, "chosen"}``.
    """
    return _select_on_validation(flow, settings, {t: (t, settings.guidance) for t in settings.select_temperatures})


def select_guidance(flow: Flow, settings: EvalSettings) -> dict:
    """The guidance scale among ``settings.select_guidances`` with the lowest validation FID at the
    temperature ``settings.temperature`` (the chosen one, when temperatures are selected first): the
    same protocol and result as `select_temperature`, keyed by guidance scale."""
    return _select_on_validation(flow, settings, {w: (settings.temperature, w) for w in settings.select_guidances})


def _select_on_validation(flow: Flow, settings: EvalSettings, candidates: dict) -> dict:
    """The key of ``candidates`` (``{key: (temperature, guidance)}``) whose samples score the lowest FID
    against ``select_n`` validation images; the flow's guidance is restored afterwards."""
    protocol = get_protocol(
        settings.select_protocol, settings.data, settings.classifier_weights, settings.inception_runtime
    )
    reference = reference_features(protocol, settings.data, "val", settings.select_n, settings.data_dir)
    fids = {}
    try:
        for key, (temperature, guidance) in candidates.items():
            flow.use_guidance(guidance, settings.guidance_attention_temperature)
            images = generate(
                flow,
                settings.select_n,
                temperature,
                settings.seed + 1,
                denoise=settings.denoise,
                denoise_step=settings.denoise_step,
            )
            fids[key] = quality_metrics(images, protocol, reference, ("fid",))["fid"]
    finally:
        flow.use_guidance(settings.guidance, settings.guidance_attention_temperature)
    chosen = min(fids, key=fids.get)
    return {
        "split": "val",
        "protocol": protocol.identity,
        "n": settings.select_n,
        "seed": settings.seed + 1,
        "fid": {str(k): v for k, v in fids.items()},
        "chosen": chosen,
    }


def _use_solver(flow: Flow, settings: EvalSettings) -> None:
    """Apply the solver settings to a continuous flow; refuse them for any other."""
    chosen = (
        settings.solver,
        settings.steps,
        settings.time_shift,
        settings.likelihood_solver,
        settings.likelihood_steps,
    )
    if all(value is None for value in chosen):
        return
    if not flow.capabilities.solver:
        raise ValueError(
            "--solver, --steps, --time-shift and --likelihood-* apply to continuous flows (FlowMatching, MeanFlow) "
            f"only, not to {type(flow).__name__}"
        )
    flow.use_solver(settings.solver, settings.steps, settings.time_shift)
    flow.use_likelihood_solver(settings.likelihood_solver, settings.likelihood_steps)


def _flow_images(flow: Flow, settings: EvalSettings, timing: dict):
    """``images_for(n)``: the first ``n`` of one sample set; ``timing`` receives how fast it was drawn."""
    cache: dict[int, Tensor] = {}

    def images_for(n: int):
        # One sample set serves every protocol: the Inception protocol scores its first n.
        if not cache or max(cache) < n:
            cache.clear()
            start = time.perf_counter()
            cache[n] = generate(
                flow,
                max(n, settings.n_samples),
                settings.temperature,
                settings.seed,
                denoise=settings.denoise,
                denoise_step=settings.denoise_step,
            )
            seconds = time.perf_counter() - start
            timing.update(
                images=len(cache[n]),
                seconds=round(seconds, 3),
                images_per_second=round(len(cache[n]) / seconds, 2),
                threads=torch.get_num_threads(),
            )
            timing.update(flow.solver_info())
        return cache[max(cache)][:n], None

    return images_for


def _baseline_images(baseline: str, settings: EvalSettings, x_train: Tensor):
    def images_for(n: int):
        if baseline == "gaussian":
            return PixelGaussian(x_train).sample(n, torch.Generator().manual_seed(settings.seed)), None
        test = real_images(settings.data, "test", n, settings.data_dir, seed=0)
        if baseline == "test":
            return test, {"data": settings.data, "split": "test", "n": n, "subset_seed": 0}
        return gaussian_noise(test, settings.noise, torch.Generator().manual_seed(settings.seed)), None

    return images_for


def _noisy_data_bits_per_dim(flow: Flow, arrays, settings: EvalSettings) -> dict:
    """`lgm.flow.Flow.noisy_bits_per_dim` of the test images, for a flow trained with noise: its own metric."""
    x, y = arrays.x_test, arrays.y_test
    if settings.bpd_images:
        x, y = x[: settings.bpd_images], y[: settings.bpd_images]
    torch.manual_seed(settings.seed)
    mean, se = mean_bits_per_dim(flow, x, y if flow.n_classes else None, "noisy-data bits/dim", noisy=True)
    return {
        "value": mean,
        "stderr": se,
        "images": len(x),
        "noise_std": flow.noise_std,
        "meaning": "-log2 p(y) / D + n_bits of the noise-augmented test images y: no bound on the discrete "
        "images' likelihood (that is bpd)",
    }


def _bits_per_dim(flow: Flow | None, arrays, settings: EvalSettings, baseline: str | None) -> dict | None:
    x, y = arrays.x_test, arrays.y_test
    if settings.bpd_images:
        x, y = x[: settings.bpd_images], y[: settings.bpd_images]
    if flow is not None:
        torch.manual_seed(settings.seed)
        mean, se = mean_bits_per_dim(flow, x, y if flow.n_classes else None, desc="test bits/dim")
        bound = f"{flow.dequantization} dequantisation, 1 sample"
        result = {"value": mean, "stderr": se, "images": len(x), "bound": bound}
        if flow.n_classes:  # a class-conditional flow's density of an image given its label
            result["of"] = "log p(x | y), the test images given their labels"
        result.update(flow.likelihood_info())
        return result
    if baseline == "gaussian":
        v = PixelGaussian(arrays.x_train).bits_per_dim(x)
        return {
            "value": v.mean().item(),
            "stderr": (v.std() / math.sqrt(len(v))).item(),
            "images": len(x),
            "bound": "exact",
        }
    return None


@torch.no_grad()
def _flow_diagnostics(flow: Flow, arrays, settings: EvalSettings) -> tuple[dict, dict[str, tuple[str, dict]]]:
    """``(diagnostics, figures)``: numbers for the report, and the material of each figure as
    ``{name: (kind, arguments)}`` for a drawing function (`lgm.viz.report.draw_report_figures`)."""
    figures: dict[str, tuple[str, dict]] = {}
    diagnostics: dict = {}
    g = torch.Generator().manual_seed(settings.seed)
    pick = torch.randperm(len(arrays.x_test), generator=g)
    x_show, y_show = arrays.x_test[pick[:64]], arrays.y_test[pick[:64]]
    labels = y_show if flow.n_classes else None
    torch.manual_seed(settings.seed)
    panels = [(f"T = {t}", generate(flow, 36, t, settings.seed)) for t in settings.figure_temperatures]
    figures["samples_temperatures"] = ("image_panels", {"panels": panels, "size": 3})
    real_and_generated = [
        (f"real ({settings.data} test)", x_show),
        (f"generated (T = {settings.temperature})", generate(flow, 64, settings.temperature, settings.seed)),
    ]
    figures["real_vs_generated"] = ("image_panels", {"panels": real_and_generated})

    x = to_data(x_show)
    back = flow.decode(flow.encode(x, labels), labels)
    diagnostics["reconstruction_max_abs_error"] = (back - x).abs().max().item()
    reconstructions = [("test images", x[:32]), ("decode(encode(x))", back[:32].clamp(0, 1))]
    figures["reconstructions"] = ("image_panels", {"panels": reconstructions, "nrow": 8})

    xa, xb = x[:6], x[6:12]
    levels = flow.capabilities.latent_levels
    labels_ab = y_show[:6] if flow.n_classes else None  # x_a's classes, for families whose bijection takes them
    for k in range(1, levels + 1):
        name = "interpolation" if k == levels else f"interpolation_levels{k}"
        what = "all levels" if k == levels else f"the first {k} (finest) latent(s) only"
        frames = flow.interpolate(xa, xb, steps=9, levels=k, labels=labels_ab)
        figures[name] = (
            "interpolations",
            {"frames": frames, "title": "latent interpolation" + (f", {what}" if levels > 1 else "")},
        )

    if "bpd" not in settings.metrics:
        # The figures below measure likelihoods (an ODE solve per image for continuous flows): they come
        # with the likelihood metric only.
        return diagnostics, figures
    n_norm = min(2000, len(arrays.x_test))
    # Dequantised as in training: under a perfect model these latents follow the prior exactly.
    eps = torch.cat(
        [
            standardized_latents(
                flow,
                dequantize_images(arrays.x_test[i : i + 500], flow.n_bits),
                arrays.y_test[i : i + 500] if flow.n_classes else None,
            )
            for i in range(0, n_norm, 500)
        ]
    )
    norms, dof = eps.norm(dim=1), eps.shape[1]
    diagnostics["latent_norms"] = {"test_mean": norms.mean().item(), "dimensions": dof, "chi_mean": chi_mean(dof)}
    figures["latent_norms"] = ("latent_norms", {"norms": norms, "dof": dof})

    log_scale = flow.per_dimension_log_scale()
    if log_scale is not None:
        side = math.isqrt(len(log_scale) // flow.shape[0])
        image = log_scale.cpu().reshape(flow.shape[0], side, side)[0]
        figures["log_scales"] = (
            "scales",
            {"log_scale": image, "title": f"{type(flow).__name__} log-scales per dimension"},
        )

    x_corrupt, y_corrupt = arrays.x_test[pick[:500]], arrays.y_test[pick[:500]]
    torch.manual_seed(settings.seed)
    curves = corrupted_likelihoods(flow, x_corrupt, y_corrupt if flow.n_classes else None, seed=settings.seed)
    diagnostics["corruption"] = {**curves, "images": len(x_corrupt)}
    figures["corruption"] = ("corruption", {"curves": curves})
    return diagnostics, figures


def _json(report: dict) -> str:
    return json.dumps(report, indent=2, default=str) + "\n"
