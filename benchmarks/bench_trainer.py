"""Per-step overhead of the shared Trainer against a bare hand-written five-step loop.

Same MLP, same data, same optimizer (Adam), same process, runs interleaved. The Trainer runs
with its defaults for a run directory: CSV and TensorBoard logging, ``last.pt``/``best.pt``
checkpoints every epoch, LR monitor, NaN guard and the global gradient norm at every step.
Its per-step time runs from the start of the first epoch to the end of the last (per-epoch
logging and checkpointing included; the one-time setup and the final plot are reported apart
as the whole ``fit`` time). Wall-clock and process CPU time are both reported: CPU time is less
disturbed by other processes on a shared machine, wall time includes the checkpoint fsyncs.
Each figure is the minimum over repeats; the median of the ratios of interleaved pairs is
printed too (robust to slow changes of a shared machine's load).

Two networks: the project's surrogate MLP (8 inputs, 4 x 128 SiLU, float64; batch 1024, a
quarter of the surrogate default), on which the 5% target is judged, and a tiny MLP
(8-32-32-1, batch 256) whose step is so short that it shows the absolute overhead per step.

Usage: ``python benchmarks/bench_trainer.py [--quick] [--threads N] [--repeats R]``; the last
line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass

import torch
from _common import machine_info
from torch import nn
from torch.utils.data import TensorDataset

from qfnet.training import Trainer, TrainerConfig

TARGET_OVERHEAD = 0.05
FEATURES = 8


@dataclass(frozen=True)
class Case:
    name: str
    hidden: tuple[int, ...]
    batch: int
    samples: int
    epochs: int = 3


def _data(n: int) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, FEATURES, generator=g, dtype=torch.float64)  # (N, F)
    y = torch.sin(x).sum(dim=1, keepdim=True)  # (N, 1)
    return TensorDataset(x, y)


def _model(hidden: tuple[int, ...]) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    width = FEATURES
    for h in hidden:
        layers += [nn.Linear(width, h), nn.SiLU()]
        width = h
    return nn.Sequential(*layers, nn.Linear(width, 1)).double()


def bare_loop(data: TensorDataset, case: Case) -> tuple[float, float]:
    """(wall, CPU) seconds per step of zero_grad / forward / loss / backward / step."""
    x, y = data.tensors
    model = _model(case.hidden)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.MSELoss()
    g = torch.Generator().manual_seed(0)
    steps = 0
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(case.epochs):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), case.batch):
            idx = order[i : i + case.batch]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            steps += 1
    return (time.perf_counter() - start) / steps, (time.process_time() - cpu) / steps


class _Clock:
    """Times the epochs: from the first epoch start to the end of the last epoch."""

    def on_train_epoch_start(self, trainer: Trainer) -> None:
        if trainer.epoch == 0:
            self.start = (time.perf_counter(), time.process_time())

    def on_epoch_end(self, trainer: Trainer) -> None:
        self.end = (time.perf_counter(), time.process_time())


def trainer_loop(data: TensorDataset, case: Case, epochs: int | None = None) -> tuple:
    """(wall, CPU) seconds per step inside the epochs, and wall seconds of the whole fit."""
    clock = _Clock()
    with tempfile.TemporaryDirectory() as run_dir:
        config = TrainerConfig(
            max_epochs=epochs or case.epochs,
            batch_size=case.batch,
            optimizer="adam",
            lr=1e-3,
            run_dir=run_dir,
            progress_bar=False,
        )
        trainer = Trainer(_model(case.hidden), loss=nn.MSELoss(), config=config, callbacks=[clock])
        start = time.perf_counter()
        trainer.fit(data)
        total = time.perf_counter() - start
    steps = trainer.global_step
    wall = (clock.end[0] - clock.start[0]) / steps
    return wall, (clock.end[1] - clock.start[1]) / steps, total


def run_case(case: Case, repeats: int) -> dict:
    data = _data(case.samples)
    trainer_loop(data, case, epochs=1)  # warm-up: lazy imports, allocator
    bare, ours, fits = [], [], []
    for _ in range(repeats):
        bare.append(bare_loop(data, case))
        wall, cpu, total = trainer_loop(data, case)
        ours.append((wall, cpu))
        fits.append(total)
    # ratios of interleaved (bare, Trainer) pairs: robust to slow drifts of the machine's load
    paired_wall = statistics.median(o[0] / b[0] for o, b in zip(ours, bare, strict=True)) - 1
    paired_cpu = statistics.median(o[1] / b[1] for o, b in zip(ours, bare, strict=True)) - 1
    bare_wall, bare_cpu = min(b[0] for b in bare), min(b[1] for b in bare)
    our_wall, our_cpu = min(o[0] for o in ours), min(o[1] for o in ours)
    steps_per_epoch = -(-case.samples // case.batch)
    return {
        "model": f"MLP {FEATURES}-{'-'.join(map(str, case.hidden))}-1 float64, Adam",
        "batch_size": case.batch,
        "steps": case.epochs * steps_per_epoch,
        "steps_per_epoch": steps_per_epoch,
        "bare_us_per_step": bare_wall * 1e6,
        "trainer_us_per_step": our_wall * 1e6,
        "overhead": our_wall / bare_wall - 1.0,
        "bare_cpu_us_per_step": bare_cpu * 1e6,
        "trainer_cpu_us_per_step": our_cpu * 1e6,
        "overhead_cpu": our_cpu / bare_cpu - 1.0,
        "overhead_cpu_us_per_step": (our_cpu - bare_cpu) * 1e6,
        "overhead_paired_median": paired_wall,
        "overhead_cpu_paired_median": paired_cpu,
        "fit_seconds_total": min(fits),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples and repeats")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed repeats (default 7, --quick 3)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    scale, repeats = (4, 3) if args.quick else (1, 7)
    repeats = args.repeats or repeats
    cases = [
        Case("surrogate MLP", hidden=(128,) * 4, batch=1024, samples=65536 // scale),
        Case("tiny MLP", hidden=(32, 32), batch=256, samples=65536 // scale),
    ]
    results = {case.name: run_case(case, repeats) for case in cases}
    header = f"{'network':<16}{'loop':<10}{'wall us/step':>14}{'CPU us/step':>14}"
    print(header)
    for name, r in results.items():
        print(
            f"{name:<16}{'bare':<10}{r['bare_us_per_step']:>14.1f}{r['bare_cpu_us_per_step']:>14.1f}"
        )
        print(
            f"{'':<16}{'Trainer':<10}{r['trainer_us_per_step']:>14.1f}"
            f"{r['trainer_cpu_us_per_step']:>14.1f}"
        )
        print(f"{'':<16}{'overhead':<10}{r['overhead']:>+14.2%}{r['overhead_cpu']:>+14.2%}")
        print(
            f"{'':<16}{'(paired)':<10}{r['overhead_paired_median']:>+14.2%}"
            f"{r['overhead_cpu_paired_median']:>+14.2%}"
        )
    main_case = results["surrogate MLP"]
    print(f"target: surrogate MLP overhead <= {TARGET_OVERHEAD:.0%}")
    summary = {
        "benchmark": "trainer_overhead",
        "cases": results,
        "overhead": main_case["overhead"],
        "overhead_cpu": main_case["overhead_cpu"],
        "target_overhead": TARGET_OVERHEAD,
        "ratio_vs_target": main_case["overhead"] / TARGET_OVERHEAD,
        "ratio_vs_target_cpu": main_case["overhead_cpu"] / TARGET_OVERHEAD,
        "meets_target": main_case["overhead"] <= TARGET_OVERHEAD,
        "repeats": repeats,
        "threads": args.threads,
        "load_average_1min": os.getloadavg()[0],
        "machine": machine_info(),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
