"""Heston calibration network: speed and accuracy of the one-pass calibration (issue 6, part 3).

Fresh clean synthetic surfaces (scrambled Sobol parameters from the network's box, a seed never
used in training; exact Heston vols on the 6 x 11 grid) are calibrated in one batched forward
pass; figures: ms per surface (min over repeats) and the fraction of surfaces whose five
parameters are all within 5% of the truth (targets: < 1 ms per surface, >= 90%). Reference, in
the same process: ``calibrate(method="direct")`` (exact pricer, Levenberg-Marquardt) on a few
of the same surfaces, for the speed ratio.

Usage: ``.venv/bin/python benchmarks/bench_calibration_network.py [--quick]``.
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch
from _common import best_time, emit

import qfnet.calibration_network_method  # noqa: F401  (direct's global start, as qfnet runs it)
from pricing.calibration import calibrate
from qfnet.calibration_network import (
    GRID_LOG_MONEYNESS,
    GRID_MATURITY,
    NAMES,
    accuracy,
    load_network,
    make_dataset,
    predict,
)

TARGET_MS = 1.0
TARGET_WITHIN = 0.90


def _direct_seconds(vols: torch.Tensor) -> float:
    """Mean seconds of ``calibrate(method="direct")`` per surface, as qfnet runs it (with the
    network's global start) and warm (the first call's imports and caches outside the timing:
    they had been averaged into 2 surfaces, 184 ms each)."""
    tables = [pd.DataFrame({"strike": 100.0 * torch.exp(GRID_LOG_MONEYNESS).numpy(),
                            "maturity": GRID_MATURITY.numpy(), "forward": 100.0,
                            "discount": 1.0, "implied_vol": surface.numpy()})
              for surface in vols]  # fmt: skip
    calibrate("heston", tables[0], method="direct")  # warm-up
    total = 0.0
    for table in tables:
        start = time.perf_counter()
        calibrate("heston", table, method="direct")
        total += time.perf_counter() - start
    return total / len(tables)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="200 surfaces, not 1,000")
    args = parser.parse_args()
    torch.set_num_threads(1)
    n = 200 if args.quick else 1000
    net = load_network()
    params, vols = make_dataset(n, seed=777)
    seconds = best_time(lambda: predict(net, vols), repeats=5 if args.quick else 20)
    ms = 1e3 * seconds / len(vols)
    scores = accuracy(net, params, vols)
    direct_ms = 1e3 * _direct_seconds(vols[: 2 if args.quick else 5])
    rows = [{"parameter": name, "within_5pct": scores[f"{name}_within_5pct"]} for name in NAMES]
    rows.append({"parameter": "all five", "within_5pct": scores["all_within_5pct"]})
    print(f"network: {ms:.4f} ms/surface over {len(vols)} surfaces; direct: {direct_ms:.1f} ms")
    emit("calibration_network", rows, {
        "surfaces": len(vols), "ms_per_surface": ms, "direct_ms_per_surface": direct_ms,
        "speedup_vs_direct": direct_ms / ms, "ms_ratio_vs_target": ms / TARGET_MS,
        **scores, "within_ratio_vs_target": scores["all_within_5pct"] / TARGET_WITHIN,
        "threads": torch.get_num_threads(),
    })  # fmt: skip


if __name__ == "__main__":
    main()
