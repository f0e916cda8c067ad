"""Shared fixtures: reference-data loading, the device fixture (CUDA skipped when absent), one
torch thread for small simulations, torch warnings every time (for tests that expect none) and
the autograd-against-central-difference check of a pricer's scalar argument."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch

DATA_DIR = Path(__file__).parent / "data"


def _devices() -> list:
    cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
    return ["cpu", pytest.param("cuda", marks=[cuda, pytest.mark.cuda])]


@pytest.fixture(params=_devices())
def device(request) -> torch.device:
    """Every test using this fixture runs on the CPU and, where present, on CUDA."""
    return torch.device(request.param)


@pytest.fixture(scope="session")
def reference_table():
    """Load a reference CSV from tests/data by file name."""

    def load(name: str) -> pd.DataFrame:
        return pd.read_csv(DATA_DIR / name)

    return load


@pytest.fixture()
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread for the test (modules of small simulations opt in with ``pytestmark``):
    their tensors are small, so threads do not help, and on a busy machine OpenMP barriers across
    descheduled threads slow them down tenfold."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture()
def torch_warns_always() -> Iterator[None]:
    """Torch's warnings each time, not once per process (a test that expects none would pass
    where an earlier test had already triggered it)."""
    previous = torch.is_warn_always_enabled()
    torch.set_warn_always(True)
    yield
    torch.set_warn_always(previous)


@pytest.fixture(scope="session")
def gradient_matches_central_difference() -> Callable[..., None]:
    """``check(pricer, args, name)``: the gradient of ``pricer(**args, spot=...)`` in ``args[name]``
    given as a tensor that requires grad, beside a spot requiring grad too, is not lost (None)
    and equals a central difference (``rtol=atol=1e-7``)."""

    def check(pricer: Callable[..., torch.Tensor], args: dict, name: str) -> None:
        spot = torch.tensor(100.0, dtype=torch.float64, requires_grad=True)
        value = torch.tensor(args[name], dtype=torch.float64, requires_grad=True)
        pricer(**{**args, name: value}, spot=spot).backward()
        h = 1e-6
        bumped = [float(pricer(**{**args, name: args[name] + d}, spot=100.0)) for d in (h, -h)]
        assert value.grad is not None
        torch.testing.assert_close(value.grad.item(), (bumped[0] - bumped[1]) / (2 * h),
                                   rtol=1e-7, atol=1e-7)  # fmt: skip

    return check


@pytest.fixture()
def fill_the_disk(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """``fill_the_disk()``: from then on ``Figure.savefig`` writes a PNG's first 4 bytes and
    fails as a full disk does (``OSError`` 28), into a file object or a path alike; for the
    tests that a plot writer keeps its previous file and leaves no temporary."""
    from matplotlib.figure import Figure

    def disk_full(self, target, **kwargs) -> None:
        if hasattr(target, "write"):
            target.write(b"\x89PNG")
        else:
            with open(target, "wb") as f:
                f.write(b"\x89PNG")
        raise OSError(28, "No space left on device")

    return lambda: monkeypatch.setattr(Figure, "savefig", disk_full)


@pytest.fixture(scope="session")
def damage_model_file() -> Callable[..., None]:
    """``damage(path, damage, weight)``: a saved model file at ``path`` damaged one way:
    ``"cut"`` (its first 300 bytes), ``"no_state_dict"`` (that field left out),
    ``"missing_weight"`` (its ``state_dict`` without the entry ``weight``) or ``"directory"``
    (a folder in its place)."""

    def damage(path: Path, how: str, weight: str) -> None:
        payload = torch.load(path, weights_only=True)
        if how == "cut":
            path.write_bytes(path.read_bytes()[:300])
        elif how == "no_state_dict":
            torch.save({k: v for k, v in payload.items() if k != "state_dict"}, path)
        elif how == "missing_weight":
            state = {k: v for k, v in payload["state_dict"].items() if k != weight}
            torch.save({**payload, "state_dict": state}, path)
        else:
            path.unlink()
            path.mkdir()

    return damage
