"""An interrupted ``generate`` resumes: its plan is recorded before the first shard is written.

A dataset in the making is a directory of shards and ``generation.json``, the plan (model, engine,
seed, size, shard layout, domains, compilation) that fixes every shard: shard ``i`` is a pure
function of it. ``metadata.json`` replaces the plan once every shard is written, in one rename:
a folder holds the plan (unfinished) or the metadata (finished), never both. A resumed
generation must have the same plan; the shards already there are kept when they hold what the plan
says (shards are written atomically, so a killed run leaves whole shards or none), the others are
made again, and the dataset is the one an uninterrupted run would have written.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pricing._atomic import replace_atomically
from pricing._validation import read_json

__all__ = ["METADATA_FILE", "PLAN_FILE", "discard", "finish", "kept_shards", "start"]

PLAN_FILE = "generation.json"
METADATA_FILE = "metadata.json"
_LABELS = ("implied_vol", "price", "maturity", "log_moneyness")


def start(path: Path, plan: dict[str, Any], resume: bool) -> None:
    """Record ``plan`` in ``path`` (an existing directory), or with ``resume`` check it against
    the recorded one.

    Raises:
        FileExistsError: without ``resume``, ``path`` holds an unfinished generation.
        FileNotFoundError: with ``resume``, ``path`` holds no unfinished generation.
        ValueError: with ``resume``, the plan differs from the recorded one (names the fields).
    """
    recorded = path / PLAN_FILE
    plan = json.loads(json.dumps(plan))  # as read back: tuples become lists
    if not resume:
        if recorded.exists():
            raise FileExistsError(f"{path} holds an unfinished generation: --resume continues it "
                                  "(with the same options), or choose another --out")  # fmt: skip
        replace_atomically(recorded, lambda f: f.write(json.dumps(plan, indent=2).encode()))
        return
    if not recorded.is_file():
        raise FileNotFoundError(f"{path} holds no unfinished generation to resume "
                                f"(no {PLAN_FILE})")  # fmt: skip
    before = read_json(recorded, f"remove {path} and start again")
    if not isinstance(before, dict):  # an edited plan: an AttributeError before
        raise ValueError(f"{recorded} is not a generation plan (a JSON object): remove {path} "
                         "and start again")  # fmt: skip
    changed = [key for key in plan if before.get(key) != plan[key]]
    if changed:
        was = "; ".join(f"{key} {before.get(key)!r}, not {plan[key]!r}" for key in changed)
        raise ValueError(f"{path} was started with {was}: resume with the options it was "
                         "started with")  # fmt: skip


def kept_shards(
    path: Path,
    names: Sequence[str],
    ranges: Sequence[range],
    points: Callable[[range], pd.DataFrame],
) -> dict[int, int]:
    """The shards already in ``path`` that hold what the plan says, as ``{index: unlabelled
    rows}``: shard ``i`` (file ``names[i]``) must read as Parquet with the label columns,
    ``sample_index`` exactly ``ranges[i]`` and the plan's points ``points(ranges[i])`` (a shard
    of another seed or domain was kept, and mixed into the dataset). Others (absent, unreadable,
    cut, foreign) are to be made. The temporary files of writes cut short by a kill (of a shard
    or of the plan) are removed."""
    _remove_temporaries(path, [PLAN_FILE, *names])
    kept = {}
    for index, (name, rows) in enumerate(zip(names, ranges, strict=True)):
        file = path / name
        if not file.is_file():
            continue
        try:
            frame = pd.read_parquet(file)
        except Exception:  # any unreadable file is made again
            continue
        if _holds(frame, rows, points(rows)):
            kept[index] = int(frame["implied_vol"].isna().sum())
    return kept


def _remove_temporaries(path: Path, names: Iterable[str]) -> None:
    """Remove the temporaries ``.NAME.XXXXXXXX.tmp`` of :func:`replace_atomically`'s writes of
    ``names`` in ``path``: a run killed (SIGKILL) mid-write left a shard-sized hidden file, which
    stayed in the finished dataset after ``--resume``."""
    for name in names:
        for leftover in path.glob(f".{glob.escape(name)}.*.tmp"):
            leftover.unlink(missing_ok=True)


def _holds(frame: pd.DataFrame, rows: range, points: pd.DataFrame) -> bool:
    """Whether a shard read back has the labels and exactly the given rows and points."""
    if not ({*_LABELS, "sample_index", *points.columns} <= set(frame.columns)):
        return False
    if not np.array_equal(frame["sample_index"].to_numpy(), np.asarray(rows)):
        return False
    return all(np.array_equal(frame[c].to_numpy(), points[c].to_numpy()) for c in points.columns)


def finish(path: Path, meta: dict[str, Any]) -> None:
    """The generation is complete: ``meta`` becomes ``metadata.json`` and the plan goes, at once.

    ``meta`` first replaces the plan's content, then the plan file is renamed to
    ``metadata.json`` (an atomic rename). Written as two files (the metadata, then the plan
    removed), a run killed in between left a finished dataset beside its plan, a folder both
    unfinished (to a reader of the plan) and finished (to ``load_dataset``). ``meta`` holds the
    plan's fields with the same values, so that a run killed between the two steps resumes.
    """
    plan = path / PLAN_FILE
    replace_atomically(plan, lambda f: f.write(json.dumps(meta, indent=2).encode()))
    os.replace(plan, path / METADATA_FILE)


def discard(path: Path) -> None:
    """The generation is abandoned before any shard was written: the plan goes."""
    (path / PLAN_FILE).unlink(missing_ok=True)
