"""Shared helpers for the benchmarks: machine description, timing, and the final JSON line."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable

import torch

__all__ = ["best_time", "emit", "machine_info"]


def machine_info() -> dict[str, object]:
    """What ran the benchmark: CPU, core count, torch threads and versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            names = [
                line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")
            ]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def best_time(fn: Callable[[], object], *, repeats: int = 5, min_seconds: float = 0.0) -> float:
    """Minimum wall time of ``fn()`` over ``repeats`` runs (the least disturbed measurement)."""
    best = float("inf")
    start_all = time.perf_counter()
    runs = 0
    while runs < repeats or time.perf_counter() - start_all < min_seconds:
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
        runs += 1
    return best


def emit(name: str, rows: list[dict[str, object]], summary: dict[str, object]) -> None:
    """Print a plain table of ``rows`` and, as the last line, one JSON object with the summary."""
    if rows:
        keys = list(rows[0])
        widths = {k: max(len(k), *(len(_fmt(r[k])) for r in rows)) for k in keys}
        print(f"== {name} ==")
        print("  ".join(k.ljust(widths[k]) for k in keys))
        for row in rows:
            print("  ".join(_fmt(row[k]).ljust(widths[k]) for k in keys))
    print(json.dumps({"benchmark": name, **summary, "machine": machine_info()}, default=float))


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
