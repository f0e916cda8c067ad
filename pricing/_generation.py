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
import math
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pricing._atomic import replace_atomically
from pricing._validation import read_json

__all__ = [
    "METADATA_FILE",
    "PLAN_FILE",
    "ResumeMismatch",
    "discard",
    "finish",
    "kept_shards",
    "start",
]

PLAN_FILE = "generation.json"
METADATA_FILE = "metadata.json"
_LABELS = ("implied_vol", "price", "maturity", "log_moneyness")


def start(path: Path, plan: dict[str, Any], resume: bool) -> None:
    """Record ``plan`` in ``path`` (an existing directory), or with ``resume`` check it against
    the recorded one.

    Raises:
        FileExistsError: without ``resume``, ``path`` holds an unfinished generation.
        FileNotFoundError: with ``resume``, ``path`` holds no unfinished generation.
        ResumeMismatch: with ``resume``, the plan differs from the recorded one (names the
            arguments of :func:`pricing.datasets.generate` that set the differing fields).
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
    changed = {key: (before.get(key), plan[key]) for key in plan if before.get(key) != plan[key]}
    if changed:
        raise ResumeMismatch(path, _as_arguments(changed, plan))


class ResumeMismatch(ValueError):
    """A resumed generation was given other arguments than it was started with.

    Attributes:
        path: the generation's folder.
        changed: the recorded and the given value of each differing argument, by its keyword in
            :func:`pricing.datasets.generate` (a domain as the text of its differing fields).

    Examples:
        >>> error = ResumeMismatch(Path("ds"), {"shard_size": (8, 4)})
        >>> print(error)
        ds was started with shard_size 8, not 4: resume with the values it was started with
        >>> print(error.describe(lambda keyword: "--" + keyword.replace("_", "-")))
        ds was started with --shard-size 8, not 4: resume with the values it was started with
        >>> print(ResumeMismatch(Path("ds"), {"compile": (False, True)}).describe(
        ...     lambda keyword: "--" + keyword, flags=True))
        ds was started without --compile, not with it: resume with the values it was started with
    """

    def __init__(self, path: Path, changed: dict[str, tuple[Any, Any]]) -> None:
        self.path, self.changed = path, changed
        super().__init__(self.describe(lambda keyword: keyword))

    def __reduce__(self) -> tuple[type, tuple[Path, dict[str, tuple[Any, Any]]]]:
        """Pickled with its fields (its message alone did not rebuild it: across processes)."""
        return (type(self), (self.path, self.changed))

    def describe(self, name: Callable[[str], str], *, flags: bool = False) -> str:
        """The message, naming each argument as ``name(keyword)`` (``qfnet generate``: its
        option, ``--shard-size``): a domain printed whole, twice, hid the field that differs.
        With ``flags``, a boolean argument is a command's flag, given or not (``without
        --compile, not with it``; it read ``--compile False, not True``)."""
        parts, prefix = [], "with "  # "with a 1, not 2; b 3, not 4"
        for key, (before, now) in self.changed.items():
            if flags and isinstance(before, bool) and isinstance(now, bool):
                was, given = ("with", "without") if before else ("without", "with")
                parts.append(f"{was} {name(key)}, not {given} it")
                prefix = "with "
            else:
                parts.append(f"{prefix}{name(key)} {_shown(before)}, not {_shown(now)}")
                prefix = ""
        return (f"{self.path} was started {'; '.join(parts)}: resume with the values it was "
                "started with")  # fmt: skip


def _as_arguments(
    changed: dict[str, tuple[Any, Any]], plan: dict[str, Any]
) -> dict[str, tuple[Any, Any]]:
    """The differing plan fields ``changed`` (field -> (recorded, given)) as the arguments that
    set them: ``compiled`` is ``compile``; a domain is the text of the fields that differ; the
    sampling domain is the ``margin`` that widened the domain into it (read back from their
    ``z`` intervals), left out where the margin is the same and the domain differs."""
    out = {}
    for field, (before, now) in changed.items():
        if field == "domain":
            out["domain"] = _domain_difference(before, now)
        elif field != "sampling_domain":
            out["compile" if field == "compiled" else field] = (before, now)
    if "sampling_domain" in changed:
        recorded = changed.get("domain", (plan["domain"],))[0]
        was = _margin(changed["sampling_domain"][0], recorded)
        now = _margin(plan["sampling_domain"], plan["domain"])
        # a margin is unreadable from an edited plan, or from a domain of zero z width (either
        # side: math.isclose of the other's margin and None was a TypeError)
        readable = was is not None and now is not None
        if readable and not math.isclose(was, now, rel_tol=1e-9, abs_tol=1e-12):
            out["margin"] = (was, now)
        elif not readable or "domain" not in changed:  # an edited plan, or the box itself
            out["margin"] = _domain_difference(*changed["sampling_domain"])
    return out


def _margin(sampling: Any, domain: Any) -> float | None:
    """The margin that widened ``domain`` into ``sampling`` (plan dicts), from their ``z``
    intervals (:meth:`pricing.datasets.Domain.expanded`); None if they hold none (an edited
    plan)."""
    try:
        (low, high), (d_low, d_high) = sampling["z"], domain["z"]
        return ((high - low) / (d_high - d_low) - 1) / 2
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None


def _domain_difference(before: Any, now: Any) -> tuple[str, str]:
    """The fields of two domains (plan dicts) that differ, as text for each: ``maturity [0.25,
    30]`` (a parameter's bounds by its name)."""

    def fields(domain: Any) -> dict[str, Any]:
        if not isinstance(domain, dict):
            return {"domain": domain}
        flat = {}
        for key, value in domain.items():  # a parameter's bounds in the place of params
            if key == "params" and isinstance(value, list):
                flat.update({str(p[0]): p[1:] for p in value if isinstance(p, list) and p})
            else:
                flat[key] = value
        return flat

    was, now = fields(before), fields(now)
    keys = [k for k in {**was, **now} if was.get(k) != now.get(k)]
    return tuple(", ".join(f"{k} {_shown(side.get(k))}" for k in keys) for side in (was, now))


def _shown(value: Any) -> str:
    """A plan value as text: floats to 12 significant digits (6 showed maturities 30 and 31 days
    over 365 alike), lists in brackets, text as is."""
    if isinstance(value, float):
        return f"{value:.12g}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(map(_shown, value)) + "]"
    return str(value)


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
