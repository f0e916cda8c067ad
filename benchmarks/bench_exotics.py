"""Exotic Monte Carlo under Black-Scholes: ours against QuantLib's MC engines at equal standard error.

1. Down-and-out call, continuously monitored, 252 daily steps: both sides weight each step by the
   Brownian-bridge probability that the path crossed the barrier between grid dates (ours
   :func:`pricing.mc_exotics.bs_barrier`, plain and with antithetic variates plus the European
   control variate; QuantLib ``MCBarrierEngine(isBiased=False)``, plain and antithetic). Bias
   against the closed form (:func:`pricing.analytic_barrier.barrier_price`).
2. Arithmetic-average Asian call, 12 monthly fixings: ours :func:`pricing.mc_exotics.bs_asian`
   (plain, and with the geometric Asian as control variate) against QuantLib
   ``MCDiscreteArithmeticAPEngine`` (plain, with its geometric control variate, and with that
   control and antithetic variates). No closed form: every estimate is compared with QuantLib's
   control-variate one (within 3 combined standard errors).

Work to reach a standard error is ``seconds * std_error^2``; the speed-up at equal standard error
is QuantLib's work over ours (each side's best configuration for the headline). Both sides run on
one thread (``torch.set_num_threads(1)``), best of a few repeats.

Run: ``.venv/bin/python benchmarks/bench_exotics.py [--quick]``; the last line is JSON.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from _common import emit

from pricing import mc_exotics
from pricing import quantlib as qlib
from pricing.analytic_barrier import barrier_price

MARKET = {"spot": 100.0, "volatility": 0.25, "rate": 0.05, "dividend": 0.02}
BARRIER = {"strike": 100.0, "barrier": 90.0, "barrier_type": "down_out", "maturity": 1.0}
FIXINGS = [round(365 * i / 12) / 365 for i in range(1, 13)]  # whole days (QuantLib's dates)
STEPS = 252
K_SE = 3.0


def _ours(fn, repeats: int, **kwargs) -> dict:
    """Best wall time of ``fn(**kwargs)`` and its price and standard error."""
    best, result = math.inf, None
    for i in range(repeats):
        start = time.perf_counter()
        result = fn(**kwargs, generator=torch.Generator().manual_seed(7 + i))
        best = min(best, time.perf_counter() - start)
    return {"seconds": best, "price": float(result.price), "std_error": float(result.std_error)}


def _quantlib(fn, repeats: int, **kwargs) -> dict:
    runs = [fn(**kwargs, seed=42 + i) for i in range(repeats)]
    best = min(runs, key=lambda r: r.seconds)
    return {"seconds": best.seconds, "price": best.price, "std_error": best.std_error}


def _rows(cases: dict[str, dict], reference: float, reference_name: str) -> dict[str, dict]:
    for row in cases.values():
        row["work"] = row["seconds"] * row["std_error"] ** 2
        combined = row["std_error"] ** 2 + (0.0 if reference_name == "analytic" else
                                            cases[reference_name]["std_error"] ** 2)  # fmt: skip
        row["z_vs_reference"] = (row["price"] - reference) / math.sqrt(combined or 1e-300)
    return cases


def _speedups(rows: dict[str, dict]) -> dict[str, float]:
    ql_best = min(r["work"] for name, r in rows.items() if name.startswith("quantlib"))
    ours_best = min(r["work"] for name, r in rows.items() if name.startswith("ours"))
    return {"speedup_equal_se": ql_best / ours_best,
            "max_abs_z": max(abs(r["z_vs_reference"]) for r in rows.values())}  # fmt: skip


def bench_barrier(n_paths: int, n_ql: int, repeats: int) -> dict:
    common = {**MARKET, **BARRIER}
    exact = float(barrier_price(**common))
    kw = {**common, "n_paths": n_paths, "n_steps": STEPS}
    cases = {
        "ours plain": _ours(mc_exotics.bs_barrier, repeats, **kw),
        "ours antithetic + control": _ours(
            mc_exotics.bs_barrier, repeats, **kw, antithetic=True, control=True
        ),
        "quantlib": _quantlib(
            qlib.bs_barrier_mc_price, repeats, **common, n_paths=n_ql, n_steps=STEPS
        ),
        "quantlib antithetic": _quantlib(
            qlib.bs_barrier_mc_price,
            repeats,
            **common,
            n_paths=n_ql,
            n_steps=STEPS,
            antithetic=True,
        ),
    }
    rows = _rows(cases, exact, "analytic")
    return {"exact": exact, "rows": rows, **_speedups(rows)}


def bench_asian(n_paths: int, n_ql: int, repeats: int) -> dict:
    kw = {**MARKET, "strike": 100.0, "maturity": FIXINGS[-1], "fixing_times": FIXINGS,
          "n_paths": n_paths}  # fmt: skip
    ql_kw = {**MARKET, "strike": 100.0, "fixing_times": FIXINGS, "n_paths": n_ql}
    cases = {
        "ours plain": _ours(mc_exotics.bs_asian, repeats, **kw),
        "ours control": _ours(mc_exotics.bs_asian, repeats, **kw, control=True),
        "quantlib": _quantlib(qlib.bs_asian_mc_price, repeats, **ql_kw),
        "quantlib control": _quantlib(qlib.bs_asian_mc_price, repeats, **ql_kw, control=True),
        "quantlib antithetic + control": _quantlib(
            qlib.bs_asian_mc_price, repeats, **ql_kw, control=True, antithetic=True
        ),
    }
    reference = cases["quantlib control"]["price"]
    rows = _rows(cases, reference, "quantlib control")
    rows["quantlib control"]["z_vs_reference"] = 0.0
    return {"reference": reference, "rows": rows, **_speedups(rows)}


def _print(title: str, part: dict) -> None:
    print(f"\n{title}")
    print(f"{'engine':28s} {'price':>9s} {'SE':>9s} {'seconds':>8s} {'work':>10s} {'z':>6s}")
    for name, r in part["rows"].items():
        print(f"{name:28s} {r['price']:9.4f} {r['std_error']:9.5f} {r['seconds']:8.3f} "
              f"{r['work']:10.3e} {r['z_vs_reference']:6.2f}")  # fmt: skip
    print(f"speed-up at equal SE (best vs best): {part['speedup_equal_se']:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small path counts (smoke test)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    n_paths, n_ql, repeats = (16_384, 4_000, 1) if args.quick else (262_144, 50_000, 3)
    barrier = bench_barrier(n_paths, n_ql, repeats)
    _print(f"Down-and-out call, continuous, {STEPS} steps (closed form {barrier['exact']:.4f})",
           barrier)  # fmt: skip
    asian = bench_asian(n_paths, n_ql, repeats)
    _print(f"Arithmetic Asian call, {len(FIXINGS)} monthly fixings (reference: QuantLib control)",
           asian)  # fmt: skip
    summary = {
        "quick": args.quick,
        "barrier_speedup_equal_se": barrier["speedup_equal_se"],
        "barrier_max_abs_z": barrier["max_abs_z"],
        "asian_speedup_equal_se": asian["speedup_equal_se"],
        "asian_max_abs_z": asian["max_abs_z"],
        "within_k_se": max(barrier["max_abs_z"], asian["max_abs_z"]) <= K_SE,
        "barrier": barrier,
        "asian": asian,
        "threads": torch.get_num_threads(),
    }
    emit("exotics", [], summary)


if __name__ == "__main__":
    main()
