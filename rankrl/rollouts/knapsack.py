"""Knapsack rollout allocation for GRPO: an exact split of a rollout budget over prompts (pure numpy).

Li et al. 2025, "Knapsack RL: Unlocking Exploration of LLMs via Optimizing Budget Allocation"
(liziniu/KnapsackRL). GRPO learns nothing from a prompt whose N rollouts all succeed or all fail, so a fixed
budget is better spent where groups are likely to be mixed. The value of N rollouts for a prompt with success
rate p is the official code's (``verl/trainer/ppo/exploration_utils.py``)::

    value(N, p) = (1 - p**N - (1 - p)**N) * p * (1 - p)**2

the probability of a non-zero-advantage group times a gradient-magnitude weight p(1-p)^2 (largest at p = 1/3,
so hard-but-solvable prompts are favoured). :func:`allocate` maximises ``sum_i value(N_i, p_i)`` subject to
``sum_i N_i == budget`` and ``n_min_i <= N_i <= n_max_i``.

Why greedy is exact. With q = 1 - p and w = p q^2 the marginal gain of one more rollout is, for N >= 1,

    delta(N) = value(N + 1) - value(N) = w * (q * p**N + p * q**N),

a sum of two strictly decreasing geometric terms when 0 < p < 1 (identically 0 when p is 0 or 1). Every
prompt's value is therefore concave on N >= 1 and taking the ``budget - sum(n_min)`` largest marginal gains is
optimal (separable concave resource allocation). They are taken with one ``np.partition`` of a
prompts x steps gain matrix, not a heap loop over budget units: ~4 ms for 1,000 prompts and 8,000 rollouts.

The one non-concave spot is N = 0. Zero rollouts form no group, so value(0) = 0 (the formula would give -w),
and value(1) = 0 too since a group of one always has zero advantage: delta(0) = 0 < delta(1) = 2 w p q. Only
prompts with ``n_min == 0``, ``n_max >= 2`` and 0 < p < 1 see it (never in the paper's setting, min_n = 2).
For them the greedy runs on the concave envelope (b, b, b, delta(3), ... with b = w p q, since value(2) = 2b
and delta(2) = b), an upper bound that is exact unless such a prompt is left at exactly one rollout; branch
and bound on that prompt (N <= 1 vs N >= 2, both concave) settles it, usually at the root. If many exact ties
need more than ``_MAX_NODES`` nodes, an exact DP over those prompts, merged with the greedy curve of the rest,
takes over (O(#such prompts x budget x n_max): ~0.9 s at 1,000 x 8,000 x 64).

Leftover budget. The budget is a hard total, so once every positive gain is taken (prompts with p in {0, 1},
or all others at ``n_max``) zero-gain rollouts are still handed out: first to prompts with p == 0, as the
official code gives spare budget to ``success_rate == 0`` states (more samples are the only way to see a first
success), then round-robin by the resulting N, lower prompt index first. The same order breaks exact ties
between equal positive gains, so the result is deterministic. The dynamic program keeps its own deterministic
tie order (fewest rollouts to the non-concave prompts); the objective is optimal either way.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np

__all__ = [
    "allocate",
    "allocate_uniform",
    "estimate_success_rate",
    "expected_effective_rollout_ratio",
    "expected_nonzero_groups",
    "nonzero_group_probability",
    "rollout_value",
    "success_rates_from_history",
    "total_value",
]


# ---------------------------------------------------------------------------------------------- validation
def _as_rates(p: object, name: str = "p", one_d: bool = False) -> np.ndarray:
    try:
        arr = np.asarray(p, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be numeric success rates in [0, 1], got {p!r}") from err
    if one_d and arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array, one success rate per prompt; got shape {arr.shape}")
    bad = ~((arr >= 0.0) & (arr <= 1.0))  # written this way so NaN counts as bad
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        where = f"{name}[{', '.join(map(str, idx))}]" if idx else name
        raise ValueError(
            f"{where} = {float(arr[idx])} is not a success rate: rates must lie in [0, 1] and not be NaN. "
            "Estimate them with estimate_success_rate() or clip them to [0, 1]."
        )
    return arr


def _as_budget(budget: object) -> int:
    if isinstance(budget, bool) or not isinstance(budget, numbers.Integral):
        raise ValueError(
            f"budget must be an integer number of rollouts, got {budget!r} ({type(budget).__name__}); "
            "round it first, e.g. budget=int(round(x))."
        )
    if budget < 0:
        raise ValueError(f"budget must be >= 0 rollouts, got {budget}.")
    return int(budget)


def _as_counts(x: object, name: str, size: int) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must be integers (a scalar or one per prompt), got {x!r} ({arr.dtype}).")
    if arr.ndim == 0:
        arr = np.full(size, int(arr), dtype=np.int64)
    elif arr.shape != (size,):
        raise ValueError(f"{name} must be a scalar or have shape ({size},), one per prompt; got {arr.shape}.")
    arr = arr.astype(np.int64)
    if (arr < 0).any():
        i = int(np.flatnonzero(arr < 0)[0])
        raise ValueError(f"{name} must be >= 0, got {name}[{i}] = {arr[i]}.")
    return arr


def _as_bounds(n_min: object, n_max: object, size: int, budget: int) -> tuple[np.ndarray, np.ndarray]:
    lo = _as_counts(n_min, "n_min", size)
    if n_max is None:
        # "no cap": nobody can take more than the rollouts left after every n_min is served
        hi = lo + max(budget - int(lo.sum()), 0)
    else:
        hi = _as_counts(n_max, "n_max", size)
    if (lo > hi).any():
        i = int(np.flatnonzero(lo > hi)[0])
        raise ValueError(
            f"n_min[{i}] = {lo[i]} > n_max[{i}] = {hi[i]}; every prompt needs n_min <= n_max "
            "(lower n_min or raise n_max)."
        )
    return lo, hi


def _check_feasible(budget: int, lo: np.ndarray, hi: np.ndarray) -> None:
    low, high = int(lo.sum()), int(hi.sum())
    if budget < low:
        raise ValueError(
            f"budget = {budget} is infeasible for {lo.size} prompts: the total must lie in "
            f"[sum(n_min), sum(n_max)] = [{low}, {high}]. Raise the budget to >= {low} or lower n_min."
        )
    if budget > high:
        raise ValueError(
            f"budget = {budget} is infeasible for {lo.size} prompts: the total must lie in "
            f"[sum(n_min), sum(n_max)] = [{low}, {high}]. Lower the budget to <= {high} or raise n_max."
        )


# ---------------------------------------------------------------------------------------------- the value
def nonzero_group_probability(n: object, p: object) -> np.ndarray:
    """Probability that a group of ``n`` rollouts has mixed rewards (non-zero GRPO advantage).

    ``1 - p**n - (1 - p)**n`` for ``n >= 2`` and 0 for ``n`` in {0, 1}: no group, or a group of one, whose
    advantage is always zero (the formula would give -1 at ``n = 0``).

    Args:
        n: Rollout counts (non-negative integers), broadcast against ``p``.
        p: Success rates in [0, 1].

    Returns:
        Probabilities with the broadcast shape (a numpy scalar for scalar inputs).

    Example:
        >>> float(nonzero_group_probability(2, 0.5))
        0.5
    """
    n_arr = np.asarray(n)
    if n_arr.dtype.kind not in "iu" or (n_arr < 0).any():
        raise ValueError(f"n must be non-negative integer rollout counts, got {n!r}.")
    p_arr = _as_rates(p)
    n_arr, p_arr = np.broadcast_arrays(n_arr, p_arr)
    prob = 1.0 - p_arr**n_arr - (1.0 - p_arr) ** n_arr
    # max(., 0): for p within an ulp of 0 or 1 rounding can leave -1e-17
    return np.where(n_arr >= 2, np.maximum(prob, 0.0), 0.0)[()]


def rollout_value(n: object, p: object) -> np.ndarray:
    """Knapsack RL value of giving ``n`` rollouts to a prompt with success rate ``p``, vectorised.

    ``(1 - p**n - (1 - p)**n) * p * (1 - p)**2`` (liziniu/KnapsackRL), with value 0 for ``n`` in {0, 1}.

    Args:
        n: Rollout counts (non-negative integers), broadcast against ``p``.
        p: Success rates in [0, 1].

    Returns:
        Values with the broadcast shape (a numpy scalar for scalar inputs).

    Example:
        >>> float(rollout_value(2, 0.5))  # (1 - 0.25 - 0.25) * 0.5 * 0.25
        0.0625
    """
    p_arr = _as_rates(p)
    return (nonzero_group_probability(n, p_arr) * p_arr * (1.0 - p_arr) ** 2)[()]


def total_value(p: object, n: object) -> float:
    """Objective of an allocation: ``sum_i rollout_value(n_i, p_i)``.

    Args:
        p: Per-prompt success rates in [0, 1].
        n: Per-prompt rollout counts.

    Returns:
        The summed value.
    """
    return float(np.sum(rollout_value(n, _as_rates(p, one_d=True))))


def _nonconcave(p: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Prompts whose value is not concave on [lo, hi]: N = 0 allowed, N >= 2 allowed, 0 < p < 1."""
    return (lo == 0) & (hi >= 2) & (p > 0.0) & (p < 1.0)


def _marginal_gains(p: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Gain matrix: row i, column j = value(lo_i + j + 1) - value(lo_i + j); -inf past ``hi_i``.

    Rows come out non-increasing. Non-concave rows (:func:`_nonconcave`) get their concave envelope instead,
    b, b, b, delta(3), ... with b = w p q (value(2) = 2b and delta(2) = b): an upper bound on their value.
    """
    width = int((hi - lo).max()) if lo.size else 0
    steps = np.arange(width, dtype=np.int64)
    n = lo[:, None] + steps[None, :]
    pc, qc = p[:, None], 1.0 - p[:, None]
    # closed form delta(N) = w (q p^N + p q^N) instead of value differences: no cancellation for large N
    gains = (pc * qc * qc) * (qc * pc**n + pc * qc**n)
    gains[n == 0] = 0.0  # value(0) = value(1) = 0
    envelope = _nonconcave(p, lo, hi)
    if envelope.any():
        gains[envelope, :3] = (p * p * (1.0 - p) ** 3)[envelope, None]
    # pow() can be off by an ulp; forcing rows non-increasing keeps the top-k a per-row prefix
    np.minimum.accumulate(gains, axis=1, out=gains)
    gains[steps[None, :] >= (hi - lo)[:, None]] = -np.inf
    return gains


def _greedy_extra(p: np.ndarray, lo: np.ndarray, hi: np.ndarray, extra: int) -> tuple[np.ndarray, float]:
    """Rollouts on top of ``lo`` from the ``extra`` largest marginal gains, and the sum of those gains.

    Exact for concave prompts; non-concave ones get their envelope (see :func:`_branch_and_bound`).
    """
    take = np.zeros(p.size, dtype=np.int64)
    if extra == 0:
        return take, 0.0
    gains = _marginal_gains(p, lo, hi)
    flat = gains.ravel()
    kth = flat.size - extra
    threshold = np.partition(flat, kth)[kth]  # the extra-th largest gain; finite since extra <= sum(hi - lo)
    above = gains > threshold
    take += above.sum(axis=1)
    need = extra - int(take.sum())
    if need:
        # ties at the threshold (incl. zero gains): p == 0 prompts first, then round-robin by the resulting N,
        # then prompt index -- see the module docstring. Ordering by N keeps each row's pick a prefix.
        rows, cols = np.nonzero(gains == threshold)
        order = np.lexsort((rows, lo[rows] + cols, p[rows] != 0.0))
        take += np.bincount(rows[order[:need]], minlength=p.size)
    return take, float(gains[above].sum()) + need * float(threshold)


#: branch-and-bound nodes before the exact DP takes over; random p need 1-3, only many exact ties need more
_MAX_NODES = 64


def _branch_and_bound(p: np.ndarray, lo: np.ndarray, hi: np.ndarray, budget: int) -> np.ndarray | None:
    """Exact allocation by branch and bound on the non-concave prompts; None if ``_MAX_NODES`` is not enough.

    Each node runs the greedy on the concave envelope, an upper bound that is attained unless a non-concave
    prompt ends at exactly one rollout (envelope b, value 0). Branching on that prompt, N <= 1 or N >= 2,
    leaves two concave pieces. Concave problems finish at the root.
    """
    best_value, best = -np.inf, None
    stack = [(lo, hi)]
    for _ in range(_MAX_NODES):
        if not stack:
            return best
        lo_, hi_ = stack.pop()
        take, gain = _greedy_extra(p, lo_, hi_, budget - int(lo_.sum()))
        bound = total_value(p, lo_) + gain  # non-concave rows have lo_ = 0, where envelope = value
        if bound <= best_value:
            continue
        alloc = lo_ + take
        value = total_value(p, alloc)
        if value > best_value:
            best_value, best = value, alloc
        split = np.flatnonzero(_nonconcave(p, lo_, hi_) & (alloc == 1))
        if split.size == 0:
            continue  # the envelope bound is attained: this node is solved
        closed, opened = hi_.copy(), lo_.copy()
        closed[split[0]], opened[split[0]] = 1, 2
        if int(opened.sum()) <= budget:
            stack.append((opened, hi_))
        if int(closed.sum()) >= budget:
            stack.append((lo_, closed))
    return best if not stack else None


def _dp_exact(p: np.ndarray, cap_each: np.ndarray, cap: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact DP for prompts with ``n_min = 0``: ``best[s]`` = max value with exactly ``s`` rollouts."""
    best = np.full(cap + 1, -np.inf)
    best[0] = 0.0
    choice = np.zeros((p.size, cap + 1), dtype=np.int32)
    for j in range(p.size):
        k_max = int(min(cap_each[j], cap))
        values = rollout_value(np.arange(k_max + 1), p[j])
        new = best.copy()  # k = 0
        pick = choice[j]
        for k in range(1, k_max + 1):
            cand = best[: cap + 1 - k] + values[k]
            better = cand > new[k:]  # strict: on ties keep the smaller k
            np.copyto(new[k:], cand, where=better)
            np.copyto(pick[k:], k, where=better)
        best = new
    return best, choice


def _allocate_dp(p: np.ndarray, lo: np.ndarray, hi: np.ndarray, extra: int, mask: np.ndarray) -> np.ndarray:
    """Exact allocation when some prompts have the non-concave start (``n_min = 0``, see module docstring)."""
    s_idx, c_idx = np.flatnonzero(mask), np.flatnonzero(~mask)
    lo_c, hi_c = lo[c_idx], hi[c_idx]
    cap_c = int((hi_c - lo_c).sum())
    # best value of t extra rollouts on the concave prompts = sum of their t largest gains
    gains_c = _marginal_gains(p[c_idx], lo_c, hi_c).ravel()
    gains_c = -np.sort(-gains_c[np.isfinite(gains_c)])
    curve_c = np.concatenate(([0.0], np.cumsum(gains_c)))
    cap_s = min(extra, int(hi[s_idx].sum()))
    best_s, choice = _dp_exact(p[s_idx], hi[s_idx], cap_s)
    s = np.arange(cap_s + 1)
    t = extra - s
    ok = (t >= 0) & (t <= cap_c)
    total = np.where(ok, best_s + curve_c[np.clip(t, 0, cap_c)], -np.inf)
    s_star = int(np.argmax(total))
    out = lo.copy()
    out[c_idx] += _greedy_extra(p[c_idx], lo_c, hi_c, extra - s_star)[0]
    for j in range(s_idx.size - 1, -1, -1):  # backtrack the DP
        k = int(choice[j, s_star])
        out[s_idx[j]] = k
        s_star -= k
    return out


# ---------------------------------------------------------------------------------------------- allocators
def allocate(
    p: Sequence[float] | np.ndarray,
    budget: int,
    n_min: int | Sequence[int] | np.ndarray = 2,
    n_max: int | Sequence[int] | np.ndarray | None = None,
) -> np.ndarray:
    """Split ``budget`` rollouts over prompts to maximise ``sum_i rollout_value(N_i, p_i)`` exactly.

    Greedy by marginal gain (exact because gains are non-increasing for N >= 1), with an exact DP for prompts
    allowed ``N = 0`` and a deterministic rule for zero-gain leftovers; see the module docstring.

    Args:
        p: Per-prompt success rates in [0, 1], shape (P,), e.g. from :func:`success_rates_from_history`.
        budget: Total rollouts; the result sums to it exactly.
        n_min: Minimum rollouts per prompt (scalar or shape (P,)). Default 2, the official ``min_n``: GRPO
            needs two rollouts for any advantage signal.
        n_max: Maximum rollouts per prompt (scalar or shape (P,)); None means no per-prompt cap. Memory and
            time grow with P x min(max(n_max - n_min), budget - sum(n_min)).

    Returns:
        int64 array of shape (P,) with ``n_min <= N <= n_max`` and ``N.sum() == budget``.

    Raises:
        ValueError: on rates outside [0, 1] or NaN, a negative or non-integer budget, ``n_min > n_max``, or a
            budget outside ``[sum(n_min), sum(n_max)]`` (the message names the range and the fix).

    Example:
        >>> allocate([0.0, 0.5, 1.0], budget=12, n_min=2, n_max=8).tolist()
        [2, 8, 2]
    """
    rates = _as_rates(p, one_d=True)
    budget = _as_budget(budget)
    lo, hi = _as_bounds(n_min, n_max, rates.size, budget)
    _check_feasible(budget, lo, hi)
    extra = budget - int(lo.sum())
    # no prompt can take more than the spare rollouts: keeps the gain matrix narrow when n_max is loose
    hi = np.minimum(hi, lo + extra)
    alloc = _branch_and_bound(rates, lo, hi, budget)
    if alloc is None:  # many exact ties defeated the bound: the DP is exact at any size, only slower
        alloc = _allocate_dp(rates, lo, hi, extra, _nonconcave(rates, lo, hi))
    return alloc


def allocate_uniform(
    n_prompts: int,
    budget: int,
    n_min: int | Sequence[int] | np.ndarray = 0,
    n_max: int | Sequence[int] | np.ndarray | None = None,
) -> np.ndarray:
    """Baseline: the most even split of ``budget`` over ``n_prompts``, remainder to the first prompts.

    With loose bounds this is ``budget // n_prompts`` each plus one for the first ``budget % n_prompts``
    prompts; tight bounds clip the common level (water-filling), and the remainder goes to the first prompts
    that can still take one more.

    Args:
        n_prompts: Number of prompts P.
        budget: Total rollouts; the result sums to it exactly.
        n_min: Minimum rollouts per prompt (scalar or shape (P,)).
        n_max: Maximum rollouts per prompt (scalar or shape (P,)); None means no cap.

    Returns:
        int64 array of shape (P,).

    Raises:
        ValueError: on invalid counts or a budget outside ``[sum(n_min), sum(n_max)]``.

    Example:
        >>> allocate_uniform(3, 10).tolist()
        [4, 3, 3]
    """
    if isinstance(n_prompts, bool) or not isinstance(n_prompts, numbers.Integral) or n_prompts < 0:
        raise ValueError(f"n_prompts must be a non-negative integer, got {n_prompts!r}.")
    budget = _as_budget(budget)
    lo, hi = _as_bounds(n_min, n_max, int(n_prompts), budget)
    _check_feasible(budget, lo, hi)
    if lo.size == 0:
        return lo
    level_lo, level_hi = 0, int(hi.max())  # largest common level L with sum(clip(L, lo, hi)) <= budget
    while level_lo < level_hi:
        mid = (level_lo + level_hi + 1) // 2
        if int(np.clip(mid, lo, hi).sum()) <= budget:
            level_lo = mid
        else:
            level_hi = mid - 1
    out = np.clip(level_lo, lo, hi)
    rest = budget - int(out.sum())
    if rest:
        out[np.flatnonzero((lo <= level_lo) & (hi > level_lo))[:rest]] += 1
    return out


# ---------------------------------------------------------------------------------------------- p estimates
def estimate_success_rate(
    successes: object, trials: object, prior_alpha: float = 1.0, prior_beta: float = 1.0
) -> np.ndarray:
    """Posterior-mean success rate per prompt under a Beta(prior_alpha, prior_beta) prior.

    ``(successes + alpha) / (trials + alpha + beta)``. Unseen prompts get the prior mean (0.5 by default), so
    the knapsack explores them; the official code instead gives unseen prompts the default uniform n.

    Args:
        successes: Summed rewards per prompt (may be fractional for rewards in [0, 1]).
        trials: Rollouts seen per prompt, ``>= successes``.
        prior_alpha: Beta prior pseudo-successes, > 0.
        prior_beta: Beta prior pseudo-failures, > 0.

    Returns:
        Posterior means in (0, 1), broadcast shape of the inputs.

    Example:
        >>> estimate_success_rate([0, 3], [0, 4]).tolist()
        [0.5, 0.6666666666666666]
    """
    s = np.asarray(successes, dtype=np.float64)
    t = np.asarray(trials, dtype=np.float64)
    if not (np.isfinite(prior_alpha) and np.isfinite(prior_beta) and prior_alpha > 0 and prior_beta > 0):
        raise ValueError(
            f"prior_alpha and prior_beta must be finite and > 0, got {prior_alpha} and {prior_beta}."
        )
    if not (np.isfinite(s).all() and np.isfinite(t).all()):
        raise ValueError("successes and trials must be finite numbers (no NaN/inf).")
    if (s < 0).any() or (s > t).any():
        raise ValueError("need 0 <= successes <= trials for every prompt; check the reward history counts.")
    return ((s + prior_alpha) / (t + prior_alpha + prior_beta))[()]


def success_rates_from_history(
    histories: Sequence[Sequence[float]], prior_alpha: float = 1.0, prior_beta: float = 1.0
) -> np.ndarray:
    """Per-prompt success rates from reward histories (Beta posterior mean, as :func:`estimate_success_rate`).

    Args:
        histories: One list of past rewards per prompt, each in [0, 1] (0/1 correctness or a soft score);
            may be empty.
        prior_alpha: Beta prior pseudo-successes, > 0.
        prior_beta: Beta prior pseudo-failures, > 0.

    Returns:
        float64 array of shape (len(histories),).

    Example:
        >>> success_rates_from_history([[1, 1, 0], []]).tolist()
        [0.6, 0.5]
    """
    successes = np.zeros(len(histories))
    trials = np.zeros(len(histories))
    for i, rewards in enumerate(histories):
        r = np.asarray(rewards, dtype=np.float64).ravel()
        if not ((r >= 0.0) & (r <= 1.0)).all():
            raise ValueError(
                f"rewards of prompt {i} must lie in [0, 1] (no NaN); binarise them (e.g. reward > 0) "
                "or rescale to [0, 1] first."
            )
        successes[i], trials[i] = r.sum(), r.size
    return estimate_success_rate(successes, trials, prior_alpha, prior_beta)


# ---------------------------------------------------------------------------------------------- metrics
def expected_nonzero_groups(p: object, n: object) -> float:
    """Expected number of prompts whose group has non-zero advantage: ``sum_i 1 - p_i**n_i - (1-p_i)**n_i``.

    Args:
        p: Per-prompt success rates in [0, 1].
        n: Per-prompt rollout counts.

    Returns:
        The expected count (``grpo/frac_nonzero_groups`` is this divided by P).
    """
    return float(np.sum(nonzero_group_probability(n, _as_rates(p, one_d=True))))


def expected_effective_rollout_ratio(p: object, n: object) -> float:
    """Expected fraction of rollouts that land in groups with non-zero advantage.

    ``sum_i n_i (1 - p_i**n_i - (1-p_i)**n_i) / sum_i n_i``: the rollouts that carry gradient, the quantity
    Knapsack RL reports as effective.

    Args:
        p: Per-prompt success rates in [0, 1].
        n: Per-prompt rollout counts, not all zero.

    Returns:
        The ratio in [0, 1].
    """
    rates = _as_rates(p, one_d=True)
    prob = nonzero_group_probability(n, rates)
    n_arr = np.broadcast_to(np.asarray(n), rates.shape)
    total = int(n_arr.sum())
    if total == 0:
        raise ValueError("the allocation has no rollouts; the effective-rollout ratio is undefined.")
    return float(np.sum(n_arr * prob) / total)
