"""What the machine offers: its CPU model and the instruction sets that decide how fast bfloat16 runs.

Speeds are only comparable between runs on the same hardware, so every training run and every
benchmark table records `machine_summary`. Mixed precision pays off only where the hardware has
bf16 matrix units: Intel AMX (``amx_bf16``) or AVX-512 BF16 (``avx512_bf16``) on CPUs, and GPUs of
compute capability 8.0 and later.
"""

from __future__ import annotations

import os
import platform
from functools import cache
from pathlib import Path

import torch

# The CPU flags that matter for our kernels, in the order the tables print them.
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@cache
def _cpuinfo() -> dict[str, str]:
    """The first processor's entry of ``/proc/cpuinfo`` (Linux), else ``{}``."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    entry = text.split("\n\n", 1)[0]
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in entry.splitlines())}


def cpu_model() -> str:
    """The CPU's model name, e.g. ``"Intel(R) Xeon(R) Processor"``."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """Which of `CPU_FLAGS` the CPU has (from ``/proc/cpuinfo``, else from PyTorch's own checks)."""
    flags = _cpuinfo().get("flags")
    if flags is not None:
        present = set(flags.split())
        return [f for f in CPU_FLAGS if f in present]
    checks = {
        "avx2": torch.cpu._is_avx2_supported,
        "avx512f": torch.cpu._is_avx512_supported,
        "avx512_bf16": torch.cpu._is_avx512_bf16_supported,
        "amx_bf16": torch.cpu._is_amx_tile_supported,
    }
    return [f for f in CPU_FLAGS if checks[f]()]


def has_bf16_units(device: str | torch.device = "cpu") -> bool:
    """Whether ``device`` has bf16 matrix units: a CPU with `BF16_CPU_FLAGS`, a GPU of compute capability >= 8."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        return any(f in cpu_flags() for f in BF16_CPU_FLAGS)
    return False


def machine_summary(device: str | torch.device = "cpu") -> dict[str, object]:
    """Where a number was measured: CPU model and flags, threads, cores, torch, and the GPU if ``device`` is one."""
    summary: dict[str, object] = {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "threads": torch.get_num_threads(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch": str(torch.__version__),
    }
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        summary["gpu"] = torch.cuda.get_device_name(device)
    summary["bf16_units"] = has_bf16_units(device)
    return summary


def machine_line(device: str | torch.device = "cpu") -> str:
    """`machine_summary` as one line for a table's caption."""
    s = machine_summary(device)
    gpu = f", GPU {s['gpu']}" if "gpu" in s else ""
    flags = " ".join(s["cpu_flags"]) or "none of " + " ".join(CPU_FLAGS)  # type: ignore[arg-type]
    return f"{s['cpu']} (flags: {flags}), {s['threads']} thread(s) on {s['cores']} core(s){gpu}, torch {s['torch']}"
