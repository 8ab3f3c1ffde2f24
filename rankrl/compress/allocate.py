"""Ranks for every factorized projection under a FLOP budget: the rounding a policy's shares go through, and the
baselines it is measured against at equal FLOPs.

The budget is a fraction of the dense FLOPs of the chosen projections. Every rank is at least 1 (a projection
cannot be removed) and at most the module's break-even rank (above it the dense projection is cheaper and is
kept). Ranks cost ``2 (in + out)`` FLOPs per token each, so every rule below is a knapsack over directions.

* :func:`ranks_from_shares` - a policy's shares of the budget -> ranks: each module gets ``floor`` of its share
  in directions, the rest of the budget goes by largest remainder. It only rounds: a module asking for nothing
  gets the minimum rank 1, and no module gets more than its share rounded up.
* :func:`uniform` - the largest common rank that fits.
* :func:`energy_threshold` - the same kept share of spectral energy in every module (bisection on the share).
* :func:`greedy_energy` - directions taken in order of captured (optionally activation-weighted, ASVD) energy per
  FLOP; the energy of a module's next direction never rises, so the greedy is the knapsack's optimum up to one item.
* :func:`random_shares` - random shares through the same rounding.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["Module", "budget_flops", "energy_threshold", "greedy_energy", "random_shares", "ranks_flops",
           "ranks_from_shares", "uniform"]  # fmt: skip


class Module:
    """What the allocators need of a module: its shape, break-even rank and normalised singular values."""

    __slots__ = ("break_even", "in_features", "name", "out_features", "sv2")

    def __init__(self, name: str, in_features: int, out_features: int, break_even: int, sv2: np.ndarray) -> None:
        self.name, self.in_features, self.out_features, self.break_even = name, in_features, out_features, break_even
        self.sv2 = np.asarray(sv2, dtype=float) / max(float(np.sum(sv2)), 1e-30)

    @classmethod
    def from_svd(cls, svd) -> Module:  # a rankrl.compress.factorize.ModuleSVD
        return cls(svd.name, svd.in_features, svd.out_features, svd.break_even_rank, (svd.S.double() ** 2).numpy())

    @property
    def unit(self) -> int:
        """FLOPs per token of one direction."""
        return 2 * (self.in_features + self.out_features)

    @property
    def dense(self) -> int:
        return 2 * self.in_features * self.out_features

    def flops(self, rank: int) -> int:
        return self.dense if rank > self.break_even else rank * self.unit


def ranks_flops(modules: Sequence[Module], ranks: Mapping[str, int]) -> int:
    """Counted FLOPs per token of an allocation."""
    return sum(m.flops(int(ranks[m.name])) for m in modules)


def budget_flops(modules: Sequence[Module], fraction: float) -> int:
    """The FLOP budget of ``fraction`` of the dense projections; refused when even rank 1 everywhere exceeds it."""
    if not 0 < fraction <= 1:
        raise ValueError(f"--budget must be a fraction of the dense FLOPs in (0, 1], got {fraction}")
    budget = int(fraction * sum(m.dense for m in modules))
    floor = sum(m.unit for m in modules) / sum(m.dense for m in modules)
    if budget < floor * sum(m.dense for m in modules):
        raise ValueError(f"--budget {fraction:g} is below rank 1 everywhere ({floor:.4f} of the dense FLOPs); raise it")
    return budget


def _check(modules: Sequence[Module], budget: int) -> None:
    if budget < sum(m.unit for m in modules):
        raise ValueError(f"a budget of {budget:,} FLOPs/token is below rank 1 everywhere")


def ranks_from_shares(modules: Sequence[Module], shares: Sequence[float], budget: int) -> dict[str, int]:
    """Each module's share of the budget (non-negative, normalised here) -> ranks in [1, break_even] that spend
    the budget as far as whole directions allow: starting from rank 1 everywhere, the next direction always goes to
    the module furthest below its share (in directions), i.e. floors first, then the largest remainders; when a
    module reaches its cap its remaining share is left to the others in the same proportions. A module whose share
    is 0 stays at rank 1."""
    _check(modules, budget)
    s = np.clip(np.asarray(shares, dtype=float), 0.0, None)
    if s.shape != (len(modules),) or not np.all(np.isfinite(s)):
        raise ValueError(f"need {len(modules)} finite shares, got {np.asarray(shares).shape}")
    s = s / s.sum() if s.sum() > 0 else np.full(len(modules), 1 / len(modules))
    ranks = [1] * len(modules)
    spent = sum(m.unit for m in modules)
    heap = [(-(s[i] * budget / m.unit - 1), i) for i, m in enumerate(modules) if s[i] > 0 and m.break_even > 1]
    heapq.heapify(heap)
    while heap:
        neg, i = heapq.heappop(heap)
        m = modules[i]
        if spent + m.unit > budget:
            continue  # this module's next direction no longer fits; a cheaper one may
        ranks[i] += 1
        spent += m.unit
        if ranks[i] < m.break_even:
            heapq.heappush(heap, (neg + 1, i))
    return {m.name: ranks[i] for i, m in enumerate(modules)}


def uniform(modules: Sequence[Module], budget: int) -> dict[str, int]:
    """The largest rank ``r`` with ``rank min(r, break_even)`` everywhere within the budget."""
    _check(modules, budget)
    r = 1
    while r < max(m.break_even for m in modules):
        nxt = {m.name: min(r + 1, m.break_even) for m in modules}
        if ranks_flops(modules, nxt) > budget:
            break
        r += 1
    return {m.name: min(r, m.break_even) for m in modules}


def _energy_ranks(modules: Sequence[Module], share: float) -> dict[str, int]:
    out = {}
    for m in modules:
        k = int(np.searchsorted(np.cumsum(m.sv2), share - 1e-12) + 1)
        out[m.name] = int(min(max(k, 1), max(m.break_even, 1)))
    return out


def energy_threshold(modules: Sequence[Module], budget: int, iters: int = 40) -> dict[str, int]:
    """Keep the same share of spectral energy in every module: the largest share whose ranks fit (bisection)."""
    _check(modules, budget)
    lo, hi = 0.0, 1.0
    for _ in range(iters):
        mid = (lo + hi) / 2
        if ranks_flops(modules, _energy_ranks(modules, mid)) <= budget:
            lo = mid
        else:
            hi = mid
    return _energy_ranks(modules, lo)


def greedy_energy(modules: Sequence[Module], budget: int, weights: Mapping[str, float] | None = None) -> dict[str, int]:
    """Directions by (weighted) captured energy per FLOP until the budget is spent; ``weights`` scale each
    module's energy (e.g. its share of the output norm); with ASVD spectra this is activation-weighted importance."""
    _check(modules, budget)
    ranks = {m.name: 1 for m in modules}
    spent = sum(m.unit for m in modules)
    heap = []
    for i, m in enumerate(modules):
        if m.break_even > 1:
            w = 1.0 if weights is None else float(weights[m.name])
            heapq.heappush(heap, (-w * m.sv2[1] / m.unit, i, w))
    while heap:
        _, i, w = heapq.heappop(heap)
        m = modules[i]
        if spent + m.unit > budget:
            continue
        ranks[m.name] += 1
        spent += m.unit
        r = ranks[m.name]
        if r < m.break_even and r < len(m.sv2):
            heapq.heappush(heap, (-w * m.sv2[r] / m.unit, i, w))
    return ranks


def random_shares(modules: Sequence[Module], budget: int, seed: int) -> dict[str, int]:
    """Dirichlet(1) shares through :func:`ranks_from_shares`."""
    shares = np.random.default_rng(seed).dirichlet(np.ones(len(modules)))
    return ranks_from_shares(modules, shares, budget)
