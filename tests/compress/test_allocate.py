"""FLOP-budget allocators for factorized projections: every rule fits the budget, the rounding spends it and
follows the shares, and the greedy captures the most energy."""

from __future__ import annotations

import numpy as np
import pytest

from rankrl.compress.allocate import (
    Module,
    budget_flops,
    energy_threshold,
    greedy_energy,
    random_shares,
    ranks_flops,
    ranks_from_shares,
    uniform,
)


def _modules(n: int = 6, seed: int = 0) -> list[Module]:
    rng = np.random.default_rng(seed)
    mods = []
    for i in range(n):
        sv2 = np.sort(rng.exponential(1.0, 64) ** (1 + i % 3))[::-1]  # some spectra decay fast, some slowly
        mods.append(Module(f"m{i}", 64, 64, 31, sv2))
    return mods


def _energy(mods, ranks):
    return sum(float(m.sv2[: ranks[m.name]].sum()) for m in mods)


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.7])
def test_every_rule_fits_and_the_rounding_spends_the_budget(fraction):
    mods = _modules()
    budget = budget_flops(mods, fraction)
    unit = mods[0].unit
    for ranks in (uniform(mods, budget), energy_threshold(mods, budget), greedy_energy(mods, budget),
                  random_shares(mods, budget, 0), ranks_from_shares(mods, np.ones(6), budget)):  # fmt: skip
        assert ranks_flops(mods, ranks) <= budget and min(ranks.values()) >= 1
        assert max(ranks.values()) <= 31
    spent = ranks_flops(mods, ranks_from_shares(mods, [5, 1, 1, 1, 1, 1], budget))
    assert spent > budget - unit  # spends it to the last whole direction


def test_rounding_follows_the_shares_and_a_zero_share_gets_rank_one():
    mods = _modules()
    budget = budget_flops(mods, 0.3)
    ranks = ranks_from_shares(mods, [0.0, 0.1, 0.2, 0.3, 0.4, 0.0], budget)
    assert ranks["m0"] == ranks["m5"] == 1
    assert ranks["m1"] < ranks["m2"] < ranks["m3"] < ranks["m4"]
    equal = ranks_from_shares(mods, np.ones(6), budget)
    assert max(equal.values()) - min(equal.values()) <= 1


def test_greedy_captures_at_least_the_energy_of_the_other_rules():
    mods = _modules(seed=3)
    budget = budget_flops(mods, 0.4)
    best = _energy(mods, greedy_energy(mods, budget))
    for other in (uniform(mods, budget), energy_threshold(mods, budget), random_shares(mods, budget, 1)):
        assert best >= _energy(mods, other) - 1e-12
    assert best > _energy(mods, uniform(mods, budget)) + 1e-3  # uneven spectra: allocation matters


def test_budget_below_rank_one_is_refused_with_the_flag():
    with pytest.raises(ValueError, match="--budget 0.001 is below rank 1 everywhere"):
        budget_flops(_modules(), 0.001)
    with pytest.raises(ValueError, match="in \\(0, 1\\]"):
        budget_flops(_modules(), 1.5)
