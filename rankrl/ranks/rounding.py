"""Rounding requests onto the feasible set of a :class:`~rankrl.ranks.budgets.Budget`: the greedy allocation by
scores (baselines), the projection of a desired allocation (never above the request), and the rounding of a policy's
budget shares into grid ranks that spend the cap. See :mod:`rankrl.ranks.budgets` for why each problem is a
single-constraint separable concave knapsack, so the greedy is exact up to one step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from rankrl.ranks.budgets import RTOL, Budget, check_grid, unit_costs

if TYPE_CHECKING:  # rankrl.targets imports torch; only its row type is needed here
    from rankrl.targets import TargetModule

__all__ = ["UTILITIES", "allocate_by_scores", "allocate_by_shares", "project"]

#: concave utilities ``g(r)`` of a rank, by name (see module docstring)
UTILITIES: dict[str, Callable[[np.ndarray], np.ndarray]] = {"log1p": np.log1p, "sqrt": np.sqrt}


# ------------------------------------------------------------------------------------------- allocation
def allocate_by_scores(
    targets: Sequence[TargetModule],
    scores: Mapping[str, float] | Sequence[float] | np.ndarray,
    budget: Budget,
    grid: Sequence[int],
    *,
    r_max: int | None = None,
    utility: str = "log1p",
) -> dict[str, int]:
    """The allocation on ``grid`` maximising ``sum_i scores_i * g(r_i)`` within ``budget`` (greedy, see module
    docstring: within one largest step gain of optimal, usually exact). Leftover budget after every
    positive-gain step still goes to zero-score modules, so the budget is used as fully as the grid allows.

    Args:
        targets: the adaptable modules.
        scores: a nonnegative importance per module (mapping by name, or a sequence in target order).
        budget: the caps.
        grid: allowed ranks, e.g. ``(0, 1, 2, 4, 8, 16)``.
        r_max: optional extra bound on the grid (the live run's allocated directions).
        utility: ``"log1p"`` (default) or ``"sqrt"``.

    Raises:
        ValueError: bad grid or scores, or a budget below the grid's minimum allocation.
    """
    levels = np.asarray(check_grid(targets, grid, r_max), dtype=np.float64)
    weights = _per_module(targets, scores, "scores")
    hi = np.full(len(targets), len(levels) - 1)
    return _to_ranks(targets, levels, _greedy(targets, budget, levels, hi, weights, utility))


def project(
    targets: Sequence[TargetModule],
    desired: Mapping[str, float] | Sequence[float] | np.ndarray,
    budget: Budget,
    grid: Sequence[int],
    *,
    importance: Mapping[str, float] | Sequence[float] | np.ndarray | None = None,
    r_max: int | None = None,
    utility: str = "log1p",
) -> dict[str, int]:
    """The feasible allocation closest to ``desired``: never above it, losing the least value.

    Each desired rank (any real >= 0, e.g. a decoded continuous action) is first snapped to the nearest grid
    rank (ties to the lower one; above the grid to its top). If that fits, it is returned as is: a proposal
    under budget is respected, never inflated. Otherwise ranks are lowered grid step by grid step, always
    where the value lost per unit of cost saved is smallest, value being ``importance_i * g(r_i)``. By default
    the importance of a module is its desired rank (its share of the proposal), so a module the policy
    wanted large is cut proportionally less. Finally every module that can go back up toward its desired rank
    within budget does so, so the result is maximal (no module can be raised one step without a violation).

    Args:
        targets: the adaptable modules.
        desired: desired rank per module (mapping by name, or a sequence in target order).
        budget: the caps.
        grid: allowed ranks.
        importance: nonnegative weights; default: ``desired``.
        r_max: optional extra bound on the grid.
        utility: ``"log1p"`` (default) or ``"sqrt"``.

    Raises:
        ValueError: bad grid or desired ranks, or a budget below the grid's minimum allocation.
    """
    levels = np.asarray(check_grid(targets, grid, r_max), dtype=np.float64)
    wanted = _per_module(targets, desired, "desired ranks")
    weights = wanted if importance is None else _per_module(targets, importance, "importance")
    # nearest grid rank, ties to the lower: argmin returns the first (lower) of two equal distances
    hi = np.abs(wanted[:, None] - levels[None, :]).argmin(axis=1)
    return _to_ranks(targets, levels, _greedy(targets, budget, levels, hi, weights, utility))


def allocate_by_shares(
    targets: Sequence[TargetModule],
    shares: Mapping[str, float] | Sequence[float] | np.ndarray,
    budget: Budget,
    grid: Sequence[int],
    *,
    r_max: int | None = None,
) -> dict[str, int]:
    """Grid ranks that spend ``budget`` in the proportions ``shares`` (a policy's action), by rounding only.

    The rule, in three steps (every cap is a multiple of ``r (in + out)``, so one normalised unit cost per module,
    the largest share of any cap one rank unit uses, measures the budget):

    1. *Targets.* Module ``i`` gets the continuous rank ``rho_i = share_i / unit_i`` (shares normalised to sum
       1 over the modules with ``share > 0``): exactly the cap, split as asked. A target above the grid's top is
       cut there and its excess re-split over the others in proportion to their shares (water-filling), so the
       cap is still what is split.
    2. *Floor.* Each module gets the largest grid rank ``<= rho_i``.
    3. *Fill.* While some grid step fits, the on module (``share > 0``) whose next step is most wanted goes up one
       step: the largest ``(rho_i - r_i) / (next_i - r_i)``, i.e. largest remainder first, then the modules
       furthest below (or least above) their targets relative to the step; ties go to the earlier module.

    The rounding never chooses what was not asked for: a module with share 0 keeps rank 0, and the order in
    which leftover budget is handed out is the order of the shares' remainders. The result spends the cap up
    to less than one grid step of some on module not at the top (or every on module is at the top).

    >>> from types import SimpleNamespace as Row
    >>> t = [Row(name=n, in_features=32, out_features=32, max_rank=32) for n in "abc"]
    >>> allocate_by_shares(t, [0.5, 0.5, 0.0], Budget(max_params=8 * 64), (0, 1, 2, 4, 8))
    {'a': 4, 'b': 4, 'c': 0}

    Raises:
        ValueError: bad grid or shares, all shares 0, or a budget below the grid's minimum allocation.
    """
    levels = np.asarray(check_grid(targets, grid, r_max), dtype=np.float64)
    w = _per_module(targets, shares, "shares")
    if not w.sum() > 0:
        raise ValueError("shares are all 0: give at least one module a positive share")
    caps = np.array(list(budget.caps.values()), dtype=np.float64)
    units = unit_costs(targets, budget)
    C = np.stack([units[name] for name in budget.caps]) if len(caps) else np.zeros((0, len(targets)))
    used = C @ np.full(len(targets), levels[0])
    if np.any(used > caps * (1 + RTOL)):
        k = int(np.argmax(used / caps))
        raise ValueError(f"budget max_{list(budget.caps)[k]}={caps[k]:g} is below the minimum {used[k]:g} (every "
                         f"module at the grid's smallest rank {int(levels[0])}); raise it or allow rank 0")  # fmt: skip
    on, top = w > 0, levels[-1]
    idx = np.zeros(len(targets), dtype=np.int64)
    if not len(caps):  # uncapped: every module that asked for anything gets the top rank
        idx[on] = len(levels) - 1
        return _to_ranks(targets, levels, idx)
    unit = (C / caps[:, None]).max(axis=0)  # share of the binding cap one rank unit of the module uses
    rho = np.zeros(len(targets))
    free, left = on.copy(), 1.0
    while free.any() and left > 1e-12:  # water-filling: saturated modules hand their excess to the others
        want = w * free / (w * free).sum() * left / np.where(unit > 0, unit, np.inf)
        over = free & (rho + want >= top)
        if not over.any():
            rho = rho + want
            break
        left -= float((unit[over] * (top - rho[over])).sum())
        rho[over], free = top, free & ~over
    rho[on & (unit == 0)] = top  # a module that costs nothing under these caps
    idx = np.where(on, np.searchsorted(levels, rho + 1e-9, side="right") - 1, 0).clip(0, len(levels) - 1)
    used = C @ levels[idx]
    while True:  # largest remainder first, then further steps toward the shares, while any step fits
        cand = np.flatnonzero(on & (idx < len(levels) - 1))
        if not len(cand):
            break
        nxt = levels[idx[cand] + 1]
        priority = (rho[cand] - levels[idx[cand]]) / (nxt - levels[idx[cand]])
        fits = np.all(used[:, None] + C[:, cand] * (nxt - levels[idx[cand]]) <= caps[:, None] * (1 + RTOL), axis=0)
        if not fits.any():
            break
        best = cand[fits][np.argmax(priority[fits])]  # argmax: the first (earliest) of equal priorities
        used = used + C[:, best] * (levels[idx[best] + 1] - levels[idx[best]])
        idx[best] += 1
    return _to_ranks(targets, levels, idx)


def _greedy(
    targets: Sequence[TargetModule],
    budget: Budget,
    levels: np.ndarray,
    hi: np.ndarray,
    weights: np.ndarray,
    utility: str,
) -> np.ndarray:
    """Grid index per module: ratio-ordered greedy from the grid's minimum up to ``hi`` (module docstring)."""
    if utility not in UTILITIES:
        raise ValueError(f"unknown utility {utility!r}; choose from {sorted(UTILITIES)}")
    g = UTILITIES[utility](levels)
    units = unit_costs(targets, budget)
    caps = np.array(list(budget.caps.values()), dtype=np.float64)
    C = np.stack([units[name] for name in budget.caps]) if len(caps) else np.zeros((0, len(targets)))
    idx = np.zeros(len(targets), dtype=np.int64)
    used = C @ np.full(len(targets), levels[0])
    if np.any(used > caps * (1 + RTOL)):
        k = int(np.argmax(used / caps))
        name = list(budget.caps)[k]
        raise ValueError(
            f"budget max_{name}={caps[k]:g} is below the minimum {used[k]:g} (every module at the grid's smallest "
            f"rank {int(levels[0])}); raise it or allow rank 0 in the grid"
        )
    norm = C / caps[:, None] if len(caps) else C  # share of each cap one rank unit uses
    unit = norm.max(axis=0) if len(caps) else np.zeros(len(targets))
    steps = []
    for i in range(len(targets)):
        for j in range(1, int(hi[i]) + 1):
            gain = weights[i] * (g[j] - g[j - 1])
            cost = unit[i] * (levels[j] - levels[j - 1])
            ratio = math.inf if cost == 0 else gain / cost
            steps.append((-ratio, j, i))
    steps.sort()  # best ratio first; ties: lower grid step, then earlier module
    blocked = np.zeros(len(targets), dtype=bool)
    for _, j, i in steps:
        if blocked[i] or j != idx[i] + 1:  # concavity keeps each module's steps in order; guard anyway
            blocked[i] = True
            continue
        delta = C[:, i] * (levels[j] - levels[j - 1])
        if np.all(used + delta <= caps * (1 + RTOL)):
            used = used + delta
            idx[i] = j
        else:
            blocked[i] = True  # its next steps are no cheaper, and a module cannot skip a step
    return idx


def _per_module(
    targets: Sequence[TargetModule], values: Mapping[str, float] | Sequence[float] | np.ndarray, what: str
) -> np.ndarray:
    names = [t.name for t in targets]
    if isinstance(values, Mapping):
        if unknown := sorted(set(values) - set(names)):
            raise ValueError(f"{what} name unknown modules {unknown[:3]}; valid names look like {names[:2]}")
        if missing := [n for n in names if n not in values]:
            raise ValueError(f"{what} miss modules {missing[:3]}; give one value per target module")
        arr = np.array([values[n] for n in names], dtype=np.float64)
    else:
        arr = np.asarray(values, dtype=np.float64)
        if arr.shape != (len(names),):
            raise ValueError(f"{what} must have one value per target module ({len(names)}), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        i = int(np.flatnonzero(~(np.isfinite(arr) & (arr >= 0)))[0])
        raise ValueError(f"{what} must be finite and >= 0; {names[i]} has {arr[i]}")
    return arr


def _to_ranks(targets: Sequence[TargetModule], levels: np.ndarray, idx: np.ndarray) -> dict[str, int]:
    return {t.name: int(levels[j]) for t, j in zip(targets, idx, strict=True)}
