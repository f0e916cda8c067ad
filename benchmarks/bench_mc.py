"""Monte Carlo benchmark: our Heston engine vs QuantLib's MCEuropeanHestonEngine, and float32
path-steps per second against the machine's normal-random-number limit.

1. Heston European call, 252 steps, float64. Work to reach a given standard error is
   ``seconds * std_error^2`` (variance times time); the speed-up at equal standard error is
   QuantLib's work over ours. QuantLib runs plain and antithetic (QE-martingale scheme, pseudo-random);
   the headline compares our best configuration (of those within 2 standard errors of the
   semi-analytic price, :func:`pricing.heston.price`) with QuantLib's best. Ours run eager and
   with the compiled QE step (``compile=True``, compiled before the timing). Both
   sides: the fastest of the same number of runs (QuantLib's times cover ``NPV()`` only).
2. float32 Heston QE path simulation (two normals per step) in path-steps per second, as a fraction
   of ``torch.randn`` throughput / 2 measured in the same run (interleaved repeats); eager and
   ``compile=True``, streaming the chunks as the pricer does (``reuse_buffers``: each chunk
   written into the memory of the one before); compiled with fresh memory per chunk (the default
   of :func:`pricing.simulate.heston_chunks`) is reported too. The limit is the faster of
   ``torch.randn`` into a reused buffer (the generator alone) and into fresh tensors (which adds
   the page faults of new memory); the fraction of the fresh-tensor rate is printed too. Runs once
   per ``--rng-threads`` setting (default 1 and 2 torch threads; ``torch.randn`` measured again
   under each): the CPU generator is one stream whatever the threads, and with two or more the
   simulator draws the next slab's normals in a background thread while the compiled step (one
   thread, GIL released) simulates the current one. Each setting also reports its rate per thread
   against the limit (the limit of one core).

Usage: ``.venv/bin/python benchmarks/bench_mc.py [--quick] [--threads N] [--rng-threads 1,2]``.
Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable

import torch
from _common import machine_info

from pricing import heston, monte_carlo, simulate
from pricing import quantlib as qlib

PARAMS = {"spot": 100.0, "v0": 0.04, "kappa": 1.5, "theta": 0.04, "sigma": 0.5, "rho": -0.7,
          "rate": 0.03, "dividend": 0.01, "maturity": 1.0}  # fmt: skip
STRIKE, STEPS = 100.0, 252
TARGET_SPEEDUP, TARGET_FRACTION = 10.0, 0.5


def _best_of(repeats: int, fn: Callable[[], object]) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def _quantlib_rows(n_paths: int, repeats: int) -> list[dict]:
    """QuantLib's runs, each the fastest of ``repeats`` (same seed: same price), as ours are."""
    rows = []
    for antithetic in (False, True):
        runs = [qlib.heston_mc_price(strike=STRIKE, **PARAMS, n_paths=n_paths, n_steps=STEPS,
                                     antithetic=antithetic) for _ in range(repeats)]  # fmt: skip
        res = min(runs, key=lambda run: run.seconds)
        rows.append({"engine": "quantlib" + (" antithetic" if antithetic else ""),
                     "seconds": res.seconds, "price": res.price, "std_error": res.std_error,
                     "n_paths": n_paths})  # fmt: skip
    return rows


def _our_rows(n_paths: int, repeats: int) -> list[dict]:
    configs = {
        "qfnet plain": {},
        "qfnet antithetic+cv": {"antithetic": True, "control": True},
        "qfnet plain compiled": {"compile": True},
        "qfnet antithetic+cv compiled": {"antithetic": True, "control": True, "compile": True},
        "qfnet conditional+antithetic+cv": {"antithetic": True, "control": True,
                                            "conditional": True},
    }  # fmt: skip
    rows = []
    for name, extra in configs.items():

        def run(extra: dict = extra) -> monte_carlo.MCResult:
            return monte_carlo.heston_european(
                strike=STRIKE, **PARAMS, n_paths=n_paths, n_steps=STEPS, progress=False,
                generator=torch.Generator().manual_seed(1), **extra,
            )  # fmt: skip

        if extra.get("compile"):
            run()  # compile (both chunk sizes) outside the timing
        seconds, res = _best_of(repeats, run)
        rows.append({"engine": name, "seconds": seconds, "price": res.price.item(),
                     "std_error": res.std_error.item(), "n_paths": n_paths})  # fmt: skip
    return rows


def heston_vs_quantlib(quick: bool) -> dict:
    analytic = heston.price(strike=STRIKE, **PARAMS).item()
    repeats = 1 if quick else 2
    rows = _quantlib_rows(4_000 if quick else 20_000, repeats) + _our_rows(
        8_192 if quick else 65_536, repeats
    )
    for row in rows:
        row["path_steps_per_s"] = row["n_paths"] * STEPS / row["seconds"]
        row["work"] = row["seconds"] * row["std_error"] ** 2
        row["bias_z"] = (row["price"] - analytic) / row["std_error"]
    ql_best = min((r for r in rows if r["engine"].startswith("quantlib")), key=lambda r: r["work"])
    ql_plain = rows[0]
    print(f"Heston European call K={STRIKE}, {STEPS} steps, analytic {analytic:.6f}")
    print(f"{'engine':34s} {'paths':>7s} {'sec':>7s} {'Mpath-steps/s':>13s} {'price':>9s} "
          f"{'se':>8s} {'z':>5s} {'x QL best':>9s} {'x QL plain':>10s}")  # fmt: skip
    for r in rows:
        r["speedup_vs_ql_best"] = ql_best["work"] / r["work"]
        r["speedup_vs_ql_plain"] = ql_plain["work"] / r["work"]
        speedups = f"{r['speedup_vs_ql_best']:9.1f} {r['speedup_vs_ql_plain']:10.1f}"
        print(f"{r['engine']:34s} {r['n_paths']:7d} {r['seconds']:7.2f} "
              f"{r['path_steps_per_s'] / 1e6:13.2f} {r['price']:9.4f} {r['std_error']:8.5f} "
              f"{r['bias_z']:5.1f} {speedups}")  # fmt: skip
    ours = [r for r in rows if r["engine"].startswith("qfnet")]
    # a speed-up with a biased price does not count (as in bench_gpu): the best within 2 SE
    unbiased = [r for r in ours if abs(r["bias_z"]) <= 2.0] or ours
    best = max(unbiased, key=lambda r: r["speedup_vs_ql_best"])
    return {"analytic": analytic, "rows": rows, "best": best["engine"],
            "speedup": best["speedup_vs_ql_best"], "bias_z": best["bias_z"],
            "plain_speedup": ours[0]["speedup_vs_ql_plain"]}  # fmt: skip


def float32_rng_fraction(quick: bool, repeats: int) -> dict:
    n_paths = 65_536 if quick else 262_144
    chunk = 65_536
    steps = 64 if quick else STEPS
    model = {k: v for k, v in PARAMS.items() if k != "maturity"}
    buffer = torch.empty((steps, 2, chunk), dtype=torch.float32)

    def randn(into_buffer: bool) -> None:
        for _ in range(n_paths // chunk):
            torch.randn((steps, 2, chunk), dtype=torch.float32, out=buffer if into_buffer else None)

    def simulate_paths(compile: bool, reuse: bool = True) -> None:
        # reuse_buffers: each chunk into the memory of the one before, as the pricers stream them
        for _ in simulate.heston_chunks(n_paths, steps, **model, maturity=1.0, dtype=torch.float32,
                                        chunk_size=chunk, compile=compile, reuse_buffers=reuse,
                                        generator=torch.Generator().manual_seed(2)):  # fmt: skip
            pass

    simulate_paths(True)  # compile outside the timing
    names = ("randn_fresh", "randn_buffer", "eager", "compiled", "compiled_fresh_buffers")
    times = dict.fromkeys(names, float("inf"))
    runs = {"randn_fresh": lambda: randn(False), "randn_buffer": lambda: randn(True),
            "eager": lambda: simulate_paths(False), "compiled": lambda: simulate_paths(True),
            "compiled_fresh_buffers": lambda: simulate_paths(True, reuse=False)}  # fmt: skip
    for _ in range(repeats):  # interleaved, so that load changes hit all runs alike
        for name, fn in runs.items():
            times[name] = min(times[name], _best_of(1, fn)[0])
    work = n_paths * steps  # path-steps; the limit counts two normals per path-step
    # the strict limit: the generator alone (into a reused buffer), without page faults
    limit = work / min(times["randn_fresh"], times["randn_buffer"])
    out = {"normals_per_s": 2 * limit, "limit_path_steps_per_s": limit,
           "limit_fresh_path_steps_per_s": work / times["randn_fresh"],
           "eager_path_steps_per_s": work / times["eager"],
           "compiled_path_steps_per_s": work / times["compiled"],
           "compiled_fresh_buffers_path_steps_per_s": work / times["compiled_fresh_buffers"]}  # fmt: skip
    out["eager_fraction"] = out["eager_path_steps_per_s"] / limit
    out["compiled_fraction"] = out["compiled_path_steps_per_s"] / limit
    out["compiled_fresh_buffers_fraction"] = out["compiled_fresh_buffers_path_steps_per_s"] / limit
    out["compiled_fraction_of_fresh_randn"] = (
        out["compiled_path_steps_per_s"] / out["limit_fresh_path_steps_per_s"]
    )
    # torch.randn is one stream at any thread count; per thread, against one core's limit
    out["compiled_fraction_per_thread"] = out["compiled_fraction"] / torch.get_num_threads()
    print(f"\nfloat32 Heston QE, {n_paths} paths x {steps} steps, chunks of {chunk}, "
          f"{torch.get_num_threads()} torch threads")  # fmt: skip
    print(f"torch.randn into a buffer: {2 * limit / 1e6:.1f} M normals/s -> limit "
          f"{limit / 1e6:.1f} M path-steps/s (fresh tensors: "
          f"{out['limit_fresh_path_steps_per_s'] / 1e6:.1f})")  # fmt: skip
    print(f"eager:    {out['eager_path_steps_per_s'] / 1e6:7.1f} M path-steps/s "
          f"({out['eager_fraction']:.0%} of limit)")  # fmt: skip
    print(f"compiled: {out['compiled_path_steps_per_s'] / 1e6:7.1f} M path-steps/s "
          f"({out['compiled_fraction']:.0%} of limit, "
          f"{out['compiled_fraction_of_fresh_randn']:.0%} of fresh-tensor randn, "
          f"{out['compiled_fraction_per_thread']:.0%} per thread; fresh chunk buffers: "
          f"{out['compiled_fresh_buffers_fraction']:.0%})")  # fmt: skip
    return out


def _thp_setting() -> str:
    """The kernel's transparent-huge-page mode (the simulators' outputs ask for huge pages)."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return f.read().split("[")[1].split("]")[0]
    except (OSError, IndexError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for part 1 (QuantLib runs on one)")  # fmt: skip
    parser.add_argument("--rng-threads", default="1,2",
                        help="torch thread counts for part 2, comma-separated (2+ prefetches)")  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    heston_part = heston_vs_quantlib(args.quick)
    rng_parts = {}
    for n in sorted({min(int(t), os.cpu_count() or 1) for t in args.rng_threads.split(",")}):
        torch.set_num_threads(n)
        rng_parts[n] = float32_rng_fraction(args.quick, 2 if args.quick else 3)
    torch.set_num_threads(args.threads)  # the recorded machine's threads: those of part 1
    best_threads = max(rng_parts, key=lambda n: rng_parts[n]["compiled_fraction"])
    rng_part = rng_parts[best_threads]
    fraction = max(rng_part["eager_fraction"], rng_part["compiled_fraction"])
    summary = {
        "benchmark": "bench_mc",
        "quick": args.quick,
        "heston_best_engine": heston_part["best"],
        "heston_speedup_vs_quantlib_equal_se": heston_part["speedup"],
        "heston_speedup_target": TARGET_SPEEDUP,
        "heston_speedup_ratio_to_target": heston_part["speedup"] / TARGET_SPEEDUP,
        "heston_best_bias_z": heston_part["bias_z"],
        "heston_bias_within_2se": abs(heston_part["bias_z"]) <= 2.0,
        "heston_plain_speedup_vs_quantlib_plain": heston_part["plain_speedup"],
        "heston_rows": heston_part["rows"],
        "float32_fraction_of_rng_limit": fraction,
        "float32_best_threads": best_threads,
        "float32_eager_fraction": rng_part["eager_fraction"],
        "float32_compiled_fraction": rng_part["compiled_fraction"],
        "float32_fraction_target": TARGET_FRACTION,
        "float32_ratio_to_target": fraction / TARGET_FRACTION,
        "float32_compiled_fraction_of_fresh_randn": rng_part["compiled_fraction_of_fresh_randn"],
        "float32_by_threads": rng_parts,
        "normals_per_s": rng_part["normals_per_s"],
        "threads": args.threads,
        "rng_threads": sorted(rng_parts),
        "transparent_hugepage": _thp_setting(),
        "machine": machine_info(),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
