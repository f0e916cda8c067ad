"""Checkpoint I/O: atomic writes, integrity checks, ``weights_only`` loads and RNG states.

A checkpoint is a ``torch.save`` zip archive of plain types and tensors only, so that it can be
read with ``torch.load(..., weights_only=True)``: RNG states are stored as tensors and lists,
never as pickled objects. Every archive member carries a CRC-32, which :func:`load_checkpoint`
verifies before unpickling, so truncated or altered files are reported by name.
"""

from __future__ import annotations

import os
import pickle
import random
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pricing._atomic import replace_atomically

__all__ = [
    "FORMAT",
    "CheckpointError",
    "ModelFileError",
    "archive_problem",
    "damage_summary",
    "get_rng_state",
    "link_checkpoint",
    "load_checkpoint",
    "load_error_summary",
    "load_verified",
    "replace_atomically",
    "save_atomically",
    "save_checkpoint",
    "set_rng_state",
    "write_text_atomically",
]

FORMAT = "qfnet.training.checkpoint"
VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read: missing, truncated, corrupted, tampered with or unsafe.

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     bad = Path(tmp) / "ck.pt"
        ...     _ = bad.write_bytes(b"not a checkpoint")
        ...     load_checkpoint(bad)
        Traceback (most recent call last):
        ...
        qfnet.training.checkpoint.CheckpointError: checkpoint ...ck.pt: ...
    """


class ModelFileError(ValueError):
    """A model file (a surrogate, the calibration network, a trained hedging model) that cannot be
    read: cut, damaged, of another format or field layout, or a directory in its place. The
    message leads with the file's path (``path``): a command prints it as it is, where other
    errors are put under the name of the input file they are about.

    Examples:
        >>> error = ModelFileError(Path("net.pt"), "net.pt is not a readable network: cut short")
        >>> error.path, isinstance(error, ValueError)
        (PosixPath('net.pt'), True)
    """

    def __init__(self, path: str | Path, message: str) -> None:
        self.path = Path(path)
        super().__init__(message)

    def __reduce__(self) -> tuple[type, tuple[Path, str]]:
        """Pickled with its fields (its message alone did not rebuild it: across processes)."""
        return (type(self), (self.path, str(self)))


def damage_summary(exc: BaseException) -> str:
    """Why a loaded model file's fields did not build its network, for an error message: a
    missing field by name (a KeyError's repr was ``KeyError('state_dict')``), else
    :func:`load_error_summary` (``load_state_dict``'s repr carried its ``\\n\\t``).

    Examples:
        >>> damage_summary(KeyError("state_dict"))
        "no field 'state_dict'"
        >>> damage_summary(RuntimeError("Error(s) in loading state_dict for Net:\\n\\t"
        ...     'Missing key(s) in state_dict: "lower". '))
        'Error(s) in loading state_dict for Net: Missing key(s) in state_dict: "lower".'
    """
    if isinstance(exc, KeyError):
        return f"no field {exc}"
    return load_error_summary(exc)


def _loadable(value: Any) -> Any:
    """``value`` with numpy scalars and arrays made Python numbers and tensors, which the
    ``weights_only`` loader accepts (a callback's ``np.float64`` made every checkpoint of a run
    unloadable)."""
    if isinstance(value, dict):
        return {k: _loadable(v) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a named tuple
        return type(value)(*(_loadable(v) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(_loadable(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    return value


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file in the same folder + rename).

    A reader never sees a half-written file: either the old checkpoint or the new one.

    Args:
        state: Plain types and tensors only (checked on load with ``weights_only=True``).
        path: Destination; parent folders are created.

    Returns:
        The destination path.

    Examples:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "ck.pt"
        >>> _ = save_checkpoint({"w": torch.ones(2)}, p)
        >>> load_checkpoint(p)["w"]
        tensor([1., 1.])
    """
    return save_atomically({"format": FORMAT, "version": VERSION, **_loadable(state)}, path)


def save_atomically(payload: Any, path: str | Path) -> Path:
    """``torch.save(payload)`` to ``path`` through a temporary file in the same folder, flushed
    to disk and renamed: a reader sees the old file or the new one, never half of one, and a
    failed write leaves no temporary behind. Parent folders are created.

    Examples:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "net.pt"
        >>> save_atomically({"w": torch.zeros(1)}, p) == p, sorted(x.name for x in p.parent.iterdir())
        (True, ['net.pt'])
    """
    return replace_atomically(path, lambda f: torch.save(payload, f))


def write_text_atomically(text: str, path: str | Path) -> Path:
    """Write ``text`` (UTF-8) to ``path`` as :func:`save_atomically` writes a payload: an
    interrupted write leaves the previous file whole (a run's JSON files and CSV rows were
    written in place, and a failure cut them short).

    Examples:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "report.json"
        >>> write_text_atomically("{}\\n", p).read_text()
        '{}\\n'
    """
    return replace_atomically(path, lambda f: f.write(text.encode("utf-8")))


def link_checkpoint(source: str | Path, path: str | Path) -> Path:
    """Make ``path`` an atomic hard link to ``source`` (a copy where links are not supported).

    Later atomic replacements of ``source`` leave ``path`` unchanged.

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     last = save_checkpoint({"step": 1}, Path(tmp) / "last.pt")
        ...     best = link_checkpoint(last, Path(tmp) / "best.pt")
        ...     _ = save_checkpoint({"step": 2}, last)  # replaces last.pt, not best.pt
        ...     load_checkpoint(best)["step"], load_checkpoint(last)["step"]
        (1, 2)
    """
    source, path = Path(source), Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, safely.

    Args:
        path: The checkpoint file.
        map_location: Passed to ``torch.load``.

    Returns:
        The state dictionary (without the format header).

    Raises:
        CheckpointError: Naming the file, if it is missing, truncated, corrupted (CRC mismatch),
            not a qfnet checkpoint, or carries a pickled object that ``weights_only`` refuses.

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = save_checkpoint({"w": torch.zeros(3), "epoch": 4}, Path(tmp) / "ck.pt")
        ...     state = load_checkpoint(path)
        >>> sorted(state), state["w"].shape
        (['epoch', 'w'], torch.Size([3]))
        >>> load_checkpoint("missing.pt")
        Traceback (most recent call last):
        ...
        qfnet.training.checkpoint.CheckpointError: checkpoint missing.pt: file not found
    """
    path = Path(path)
    if path.is_dir():  # "file not found" for a folder that is there sent users looking for it
        raise CheckpointError(f"checkpoint {path}: a folder, not a checkpoint file (give the "
                              "file itself, e.g. last.pt in it)")  # fmt: skip
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: file not found")
    _verify_archive(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"checkpoint {path}: refused, it carries a pickled object that is not plain data "
            f"or tensors (weights_only load): {load_error_summary(exc)}"
        ) from exc
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path}: unreadable ({load_error_summary(exc)})") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path}: not a qfnet training checkpoint")
    version = state.get("version")
    if type(version) is not int or version != VERSION:  # True (== 1) passed the != test
        raise CheckpointError(f"checkpoint {path}: format version {version!r} is not {VERSION}")
    del state["format"], state["version"]
    return state


def _verify_archive(path: Path) -> None:
    problem = archive_problem(path)
    if problem is not None:
        raise CheckpointError(f"checkpoint {path}: {problem}")


def archive_problem(path: str | Path) -> str | None:
    """Why ``path`` is not an intact ``torch.save`` zip archive, or None when it is.

    ``torch.load`` checks none of the members' CRC-32s: a file with a flipped bit in a tensor
    loaded without a word, with another weight. Every loader of a ``.pt`` file of qfnet checks
    them first.

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = Path(tmp) / "cut.pt"
        ...     _ = path.write_bytes(b"PK")
        ...     archive_problem(path)
        'truncated or corrupted, not a valid archive (File is not a zip file)'
    """
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        return f"truncated or corrupted, not a valid archive ({exc})"
    except Exception as exc:  # zlib and struct errors on damaged headers
        return f"corrupted archive ({exc})"
    if bad is not None:
        return f"corrupted or tampered with, CRC mismatch in member {bad!r}"
    return None


def load_verified(path: str | Path, what: str) -> Any:
    """``torch.load`` of a ``.pt`` file to the CPU with ``weights_only=True``, its CRCs checked
    first (:func:`archive_problem`); a :class:`ModelFileError` ``"{path} is not a readable
    {what}: why"`` where it is damaged, cut or refused by the unpickler, or a directory.

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = Path(tmp) / "net.pt"
        ...     _ = path.write_bytes(b"PK")
        ...     load_verified(path, "network")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        qfnet.training.checkpoint.ModelFileError: .../net.pt is not a readable network: ...
    """
    if Path(path).is_dir():  # "truncated or corrupted, not a valid archive (Is a directory)"
        raise ModelFileError(path, f"{path} is a directory, not a {what} file")
    problem = archive_problem(path)
    if problem is not None:
        raise ModelFileError(path, f"{path} is not a readable {what}: {problem}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for damaged or unsafe files
        reason = load_error_summary(exc)
        raise ModelFileError(path, f"{path} is not a readable {what}: {reason}") from exc


def load_error_summary(exc: BaseException) -> str:
    """One line saying why ``torch.load`` failed, for an error message.

    For a ``weights_only`` refusal, the unpickler's reason (``Unsupported global: GLOBAL
    datetime.datetime was not an allowed global by default``): torch's first lines advise
    loading with ``weights_only=False``, which would run the file's code. Otherwise the first line,
    with the next where it ends in a colon (``load_state_dict``'s names the mismatch below it).

    Examples:
        >>> import pickle
        >>> load_error_summary(pickle.UnpicklingError("Weights only load failed. Re-run..."
        ...     "\\n\\tWeightsUnpickler error: Unsupported global: GLOBAL os.system. Please use..."))
        'Unsupported global: GLOBAL os.system'
        >>> load_error_summary(EOFError())
        'EOFError'
        >>> load_error_summary(RuntimeError("Error(s) in loading state_dict for Net:\\n\\t"
        ...     'Unexpected key(s) in state_dict: "head.bias". '))
        'Error(s) in loading state_dict for Net: Unexpected key(s) in state_dict: "head.bias".'
    """
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    for line in lines:
        if line.startswith("WeightsUnpickler error:"):
            return line.removeprefix("WeightsUnpickler error:").split(". ")[0].strip()
    if len(lines) > 1 and lines[0].endswith(":"):  # the header alone named no key
        return f"{lines[0]} {lines[1]}"
    return lines[0] if lines else type(exc).__name__


def get_rng_state() -> dict[str, Any]:
    """Every global RNG state (python, numpy, torch, CUDA) as tensors and plain types.

    Examples:
        >>> s = get_rng_state(); a = torch.rand(1); set_rng_state(s)
        >>> bool(torch.rand(1) == a)
        True
    """
    version, py_state, gauss = random.getstate()
    key, np_state, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    state: dict[str, Any] = {
        "python": {
            "version": version,
            "state": torch.tensor(py_state, dtype=torch.int64),
            "gauss_next": gauss,
        },
        "numpy": {
            "key": key,
            "state": torch.from_numpy(np_state.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states captured by :func:`get_rng_state`.

    Examples:
        >>> state = get_rng_state()
        >>> first = (random.random(), float(np.random.rand()), float(torch.rand(())))
        >>> set_rng_state(state)
        >>> (random.random(), float(np.random.rand()), float(torch.rand(()))) == first
        True
    """
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss_next"]))
    nps = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            nps["key"],
            nps["state"].cpu().numpy().astype(np.uint32),
            nps["pos"],
            nps["has_gauss"],
            nps["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        cuda = [s.cpu() for s in state["cuda"]][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(cuda)
