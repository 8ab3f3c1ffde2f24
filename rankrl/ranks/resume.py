"""Resuming a run safely, shared by ``rankrl finetune --resume`` and ``rankrl train-policy --resume``.

* :func:`check_same_settings`: a resumed run must be the run that was checkpointed, so every setting that changes
  what it computes must equal the checkpoint's; the ones that differ are refused by flag name (``--lr:
  checkpoint 0.001 vs now 0.01``) instead of being silently replaced by the checkpoint's or silently mixed in.
* :func:`truncate_metrics`: ``metrics.jsonl`` is cut back to the checkpoint's step before the resumed run appends,
  so rows logged after the checkpoint (and then logged again by the resumed run) never repeat a step.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from rankrl.atomic import atomic_write_text

__all__ = ["check_same_settings", "dotted", "settings_diff", "truncate_metrics"]


def dotted(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"env": {"run": {"lr": 1}}}`` -> ``{"env.run.lr": 1}`` (how the flags name them).

    >>> dotted({"env": {"run": {"lr": 1}}, "out": "x"})
    {'env.run.lr': 1, 'out': 'x'}
    """
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(dotted(v, f"{prefix}{k}.") if isinstance(v, Mapping) else {f"{prefix}{k}": v})
    return out


def settings_diff(saved: Mapping[str, Any], now: Mapping[str, Any],
                  may_change: Iterable[str] = ()) -> dict[str, tuple[Any, Any]]:  # fmt: skip
    """``{flag: (checkpoint's, now)}`` for every setting (dotted) that differs and is not in ``may_change``; both
    sides are compared as JSON (tuples and lists alike).

    >>> settings_diff({"lr": 1e-3, "threads": 1}, {"lr": 1e-2, "threads": 2}, {"threads"})
    {'lr': (0.001, 0.01)}
    """
    keep = set(may_change)
    theirs = dotted(json.loads(json.dumps(dict(saved), default=str)))
    mine = dotted(json.loads(json.dumps(dict(now), default=str)))
    return {k: (theirs.get(k), v) for k, v in mine.items() if k not in keep and theirs.get(k) != v} | {
        k: (v, None) for k, v in theirs.items() if k not in keep and k not in mine}


def check_same_settings(saved: Mapping[str, Any], now: Mapping[str, Any], may_change: Iterable[str], *,
                        out: str | os.PathLike) -> None:  # fmt: skip
    """Refuse (``SystemExit`` naming every differing flag) a resume whose settings differ from the checkpoint's in
    anything but ``may_change``."""
    may_change = sorted(set(may_change))
    if diff := settings_diff(saved, now, may_change):
        shown = ", ".join(f"--{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise SystemExit(f"--resume: settings differ from the checkpoint in {out} ({shown}); pass the checkpoint's "
                         f"values (only {', '.join(may_change)} may change on a resume) or use a new --out")


def truncate_metrics(run_dir: str | os.PathLike, step: int) -> int:
    """Drop the rows of ``run_dir/metrics.jsonl`` logged after ``step`` (atomic rewrite); returns how many.

    A run that died (or was stopped) after its last checkpoint has logged rows the resumed run will log again;
    without this the file would hold two rows for those steps."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return 0
    keep, dropped = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            row_step = json.loads(line).get("step", 0)
        except json.JSONDecodeError:  # a half-written last line of a killed run
            dropped += 1
            continue
        if row_step > step:
            dropped += 1
        else:
            keep.append(line)
    if dropped:
        atomic_write_text(path, "".join(f"{line}\n" for line in keep))
    return dropped
