"""A tiny training run for the subprocess tests (SIGKILL + resume, torchrun DDP).

Run directly or under ``torchrun``; rank 0 saves the final weights to ``--out`` and the history
to ``--out`` with a ``.json`` suffix. ``--hang-after-step N`` writes ``--ready-file`` after
optimizer step N and then sleeps, so that a test can SIGKILL the process mid-epoch.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from qfnet.training import Trainer, TrainerConfig


class Hang:
    def __init__(self, step: int, ready_file: Path) -> None:
        self.step, self.ready_file = step, ready_file

    def on_train_step_end(self, trainer: Trainer) -> None:
        if trainer.global_step == self.step:
            self.ready_file.write_text(str(trainer.global_step))
            time.sleep(300)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--samples", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--checkpoint-every", type=int, default=3)
    parser.add_argument("--hang-after-step", type=int, default=None)
    parser.add_argument("--ready-file", type=Path, default=None)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--device", default="cpu", help="the comparisons are CPU float64 ones")
    args = parser.parse_args()
    torch.set_num_threads(1)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.samples, 4, generator=g, dtype=torch.float64)  # (N, F)
    y = torch.sin(x.sum(dim=1, keepdim=True))  # (N, 1)
    train = TensorDataset(x, y)
    val = TensorDataset(x[:16] + 0.1, y[:16])
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(4, 16), nn.Tanh(), nn.Dropout(args.dropout), nn.Linear(16, 1)
    ).double()
    config = TrainerConfig(
        max_epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer="adam",
        lr=0.01,
        scheduler="cosine",
        seed=5,
        run_dir=args.run_dir,
        checkpoint_every_n_steps=args.checkpoint_every,
        device=args.device,
        progress_bar=False,
    )
    callbacks = []
    if args.hang_after_step is not None:
        callbacks.append(Hang(args.hang_after_step, args.ready_file))
    trainer = Trainer(model, loss=nn.MSELoss(), config=config, callbacks=callbacks)
    history = trainer.fit(train, val, resume=args.resume)
    if trainer.is_global_zero:
        torch.save(model.state_dict(), args.out)
        args.out.with_suffix(".json").write_text(json.dumps(history.records))


if __name__ == "__main__":
    main()
