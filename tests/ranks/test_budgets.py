"""Budgets: validation, feasibility, greedy allocation and projection checked against brute force (pure numpy)."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest

from rankrl.ranks.budgets import Budget, budget_metrics, check_grid, feasible, pow2_grid, total_costs, violations
from rankrl.ranks.costs import Channel, allocation_cost, params_for_uniform, uniform_ranks
from rankrl.ranks.rounding import UTILITIES, allocate_by_scores, allocate_by_shares, project

GRID = (0, 1, 2, 4, 8, 16)


def _row(name: str, fin: int, fout: int) -> SimpleNamespace:
    return SimpleNamespace(name=name, in_features=fin, out_features=fout, max_rank=min(fin, fout))


TARGETS = [_row("q", 64, 64), _row("up", 64, 256), _row("down", 256, 64), _row("small", 16, 32)]


def _objective(ranks: dict, weights: dict, utility: str = "log1p") -> float:
    g = UTILITIES[utility]
    return float(sum(weights[n] * g(np.float64(r)) for n, r in ranks.items()))


def _brute(targets, budget, grid, upper=None):
    """Every feasible allocation on the grid (capped componentwise by ``upper``)."""
    choices = [[r for r in grid if upper is None or r <= upper[t.name]] for t in targets]
    for combo in itertools.product(*choices):
        ranks = {t.name: r for t, r in zip(targets, combo, strict=True)}
        if feasible(targets, ranks, budget):
            yield ranks


def _max_step_gain(targets, weights, grid, utility="log1p"):
    g = UTILITIES[utility](np.asarray(grid, dtype=float))
    return max(weights[t.name] for t in targets) * float(np.max(np.diff(g))) if len(grid) > 1 else 0.0


def _can_raise(targets, ranks, budget, grid, upper=None):
    """Names of modules that could go one grid step up (toward ``upper``) and stay within budget."""
    out = []
    for t in targets:
        above = [r for r in grid if r > ranks[t.name] and (upper is None or r <= upper[t.name])]
        if above and feasible(targets, {**ranks, t.name: min(above)}, budget):
            out.append(t.name)
    return out


# -------------------------------------------------------------------------------------------- Budget
def test_budget_validation_names_the_fix():
    with pytest.raises(ValueError, match="max_params must be a finite number > 0"):
        Budget(max_params=0)
    with pytest.raises(ValueError, match="max_flops must be a finite number > 0"):
        Budget(max_flops=float("nan"))
    with pytest.raises(TypeError, match="max_params must be an integer"):
        Budget(max_params=10.5)
    with pytest.raises(ValueError, match="needs a channel"):
        Budget(max_tx_seconds=1.0)
    with pytest.raises(ValueError, match="precision_bits must be one of"):
        Budget(max_params=10, precision_bits=12)
    with pytest.raises(ValueError, match="unknown optimizer"):
        Budget(max_params=10, optimizer="adam")
    assert Budget().caps == {}
    assert list(Budget(max_bits=5, max_params=3).caps) == ["params", "bits"]


def test_uniform_equivalent_is_the_cost_of_uniform_rank():
    ch = Channel(bandwidth_hz=1e6, snr_db=10.0)
    b = Budget.uniform_equivalent(TARGETS, 4, flops=True, bits=True, optimizer_bytes=True, tx_seconds=True,
                                  precision_bits=16, channel=ch)  # fmt: skip
    uni = uniform_ranks(TARGETS, 4)
    cost = allocation_cost(TARGETS, uni, precision_bits=16)
    assert b.max_params == params_for_uniform(TARGETS, 4) == cost.params
    assert (b.max_flops, b.max_bits, b.max_optimizer_bytes) == (cost.flops, cost.bits, cost.optimizer_bytes)
    assert b.max_tx_seconds == pytest.approx(ch.transmit_seconds(cost.bits))
    assert feasible(TARGETS, uni, b)  # exactly on every cap
    assert not feasible(TARGETS, {**uni, "q": 8}, b)
    with pytest.raises(ValueError, match="at least one quantity"):
        Budget.uniform_equivalent(TARGETS, 4, params=False)
    mean = Budget.mean_rank(TARGETS, 2.5)
    assert mean.max_params == int(2.5 * sum(t.in_features + t.out_features for t in TARGETS))


def test_violations_and_metrics():
    b = Budget(max_params=1000, max_flops=6000.0)
    ranks = {"q": 8, "up": 0, "down": 0, "small": 0}  # 8 * 128 = 1024 params, 6144 flops
    assert total_costs(TARGETS, ranks, b) == {"params": 1024.0, "flops": 6144.0}
    v = violations(TARGETS, ranks, b)
    assert v == pytest.approx({"params": 0.024, "flops": 0.024})
    m = budget_metrics(TARGETS, ranks, b)
    assert m["budget/violation"] == pytest.approx(0.024) and m["budget/used_params"] == pytest.approx(1.024)
    ok = {**ranks, "q": 4}
    assert feasible(TARGETS, ok, b) and budget_metrics(TARGETS, ok, b)["budget/violation"] == 0.0
    with pytest.raises(ValueError, match="exceeds its max_rank"):  # ranks are validated by costs.py
        violations(TARGETS, {**ranks, "small": 17}, b)


# ---------------------------------------------------------------------------------------------- grid
def test_grid_errors_match_messages():
    rows = [_row("a", 64, 64), _row("M", 16, 64)]
    assert check_grid(rows, [4, 0, 2, 2]) == (0, 2, 4)
    with pytest.raises(ValueError, match=r"grid rank 32 exceeds min\(in, out\)=16 of module M; drop it"):
        check_grid(rows, (0, 8, 32))
    with pytest.raises(ValueError, match="grid rank 16 exceeds r_max=8; drop it or raise r_max"):
        check_grid(rows, (0, 16), r_max=8)
    with pytest.raises(ValueError, match="grid is empty"):
        check_grid(rows, ())
    with pytest.raises(ValueError, match="grid rank -1 is negative"):
        check_grid(rows, (-1, 2))
    with pytest.raises(TypeError, match="integers"):
        check_grid(rows, (0, 2.5))
    assert pow2_grid(16) == GRID and pow2_grid(12) == (0, 1, 2, 4, 8, 12)


def test_budget_below_the_grid_minimum_is_an_error_naming_the_fix():
    b = Budget(max_params=500)  # every module at rank 2 costs 2 * (128 + 320 + 320 + 48) = 1632
    with pytest.raises(ValueError, match=r"max_params=500 is below the minimum 1632 .*raise it or allow rank 0"):
        allocate_by_scores(TARGETS, [1, 1, 1, 1], b, (2, 4, 8))
    with pytest.raises(ValueError, match="below the minimum"):
        project(TARGETS, [8, 8, 8, 8], b, (2, 4, 8))
    assert set(allocate_by_scores(TARGETS, [1, 1, 1, 1], b, (0, 2, 4, 8)).values()) <= {0, 2, 4, 8}


def test_scores_and_desired_are_validated():
    b = Budget(max_params=1000)
    with pytest.raises(ValueError, match="unknown modules"):
        allocate_by_scores(TARGETS, {"q": 1, "up": 1, "down": 1, "small": 1, "typo": 1}, b, GRID)
    with pytest.raises(ValueError, match="miss modules"):
        project(TARGETS, {"q": 1}, b, GRID)
    with pytest.raises(ValueError, match="finite and >= 0"):
        allocate_by_scores(TARGETS, [1, -1, 1, 1], b, GRID)
    with pytest.raises(ValueError, match="one value per target module"):
        project(TARGETS, [1, 2], b, GRID)
    with pytest.raises(ValueError, match="unknown utility"):
        allocate_by_scores(TARGETS, [1, 1, 1, 1], b, GRID, utility="linear")


# ------------------------------------------------------------------------------- allocate_by_scores
@pytest.mark.parametrize("utility", ["log1p", "sqrt"])
def test_allocate_by_scores_is_near_optimal_against_brute_force(utility):
    rng = np.random.default_rng(0)
    exact = 0
    trials = 60
    for _ in range(trials):
        n = int(rng.integers(3, 5))
        rows = [_row(f"m{i}", int(rng.choice([16, 32, 64])), int(rng.choice([16, 32, 64, 128]))) for i in range(n)]
        grid = tuple(sorted(rng.choice([0, 1, 2, 4, 8, 12, 16], size=int(rng.integers(2, 6)), replace=False)))
        scores = {t.name: float(rng.choice([0.0, rng.uniform(0, 3)], p=[0.15, 0.85])) for t in rows}
        total = sum(t.in_features + t.out_features for t in rows)
        budget = Budget(max_params=int(rng.uniform(0.1, 10) * total) + 1)
        if min(grid) > 0 and not feasible(rows, {t.name: min(grid) for t in rows}, budget):
            continue
        got = allocate_by_scores(rows, scores, budget, grid, utility=utility)
        assert feasible(rows, got, budget) and set(got.values()) <= set(grid)
        assert _can_raise(rows, got, budget, grid) == []  # leftover budget was spent where it fits
        best = max(_objective(r, scores, utility) for r in _brute(rows, budget, grid))
        value = _objective(got, scores, utility)
        assert value >= best - _max_step_gain(rows, scores, grid, utility) - 1e-9  # documented bound
        exact += value >= best - 1e-9
    assert exact >= trials * 0.6  # usually exactly optimal


def test_allocate_by_scores_follows_scores_and_breaks_ties_deterministically():
    rows = [_row(f"m{i}", 64, 64) for i in range(4)]
    b = Budget.uniform_equivalent(rows, 4)
    got = allocate_by_scores(rows, [4.0, 2.0, 1.0, 0.5], b, GRID)
    ranks = [got[f"m{i}"] for i in range(4)]
    assert ranks == sorted(ranks, reverse=True) and ranks[0] > ranks[-1]
    assert sum(r * 128 for r in ranks) <= b.max_params
    # equal scores and shapes: round-robin by grid step, earlier module first on a tie
    even = allocate_by_scores(rows, [1, 1, 1, 1], Budget(max_params=128 * 14), GRID)
    assert list(even.values()) == [4, 4, 4, 2]
    assert allocate_by_scores(rows, [1, 1, 1, 1], Budget(max_params=128 * 14), GRID) == even
    # zero-score modules get the leftovers only after every positive gain
    zero = allocate_by_scores(rows, [1, 0, 0, 0], Budget(max_params=128 * 20), GRID)
    assert zero["m0"] == 16 and sum(zero.values()) == 20


def test_unconstrained_budget_and_multiple_caps():
    assert set(allocate_by_scores(TARGETS, [1, 1, 1, 1], Budget(), GRID).values()) == {16}
    ch = Channel(bandwidth_hz=2e5, snr_db=5.0)
    b = Budget(max_params=4000, max_flops=20_000.0, max_tx_seconds=0.05, precision_bits=8, channel=ch)
    got = allocate_by_scores(TARGETS, [1, 2, 3, 4], b, GRID)
    assert feasible(TARGETS, got, b) and _can_raise(TARGETS, got, b, GRID) == []
    assert max(budget_metrics(TARGETS, got, b)[f"budget/used_{k}"] for k in b.caps) <= 1.0


# ------------------------------------------------------------------------------------------ project
def test_project_keeps_feasible_proposals_and_snaps_to_the_grid():
    b = Budget.uniform_equivalent(TARGETS, 8)
    assert project(TARGETS, {"q": 7, "up": 2.9, "down": 3, "small": 0.4}, b, GRID) == {
        "q": 8, "up": 2, "down": 2, "small": 0}  # fmt: skip  # 3 is halfway between 2 and 4: the lower wins
    assert project(TARGETS, [100, 0, 0, 0], b, GRID)["q"] == 16  # above the grid: its top


def test_project_is_as_close_as_possible_against_brute_force():
    rng = np.random.default_rng(1)
    exact = 0
    trials = 60
    for _ in range(trials):
        n = int(rng.integers(3, 5))
        rows = [_row(f"m{i}", int(rng.choice([16, 32, 64])), int(rng.choice([16, 32, 64]))) for i in range(n)]
        grid = (0, 1, 2, 4, 8, 16)
        desired = {t.name: int(rng.choice(grid)) for t in rows}
        budget = Budget.mean_rank(rows, float(rng.uniform(0.5, 6)))
        got = project(rows, desired, budget, grid)
        assert feasible(rows, got, budget)
        assert all(got[k] <= desired[k] for k in desired)  # never raised above the proposal
        assert _can_raise(rows, got, budget, grid, upper=desired) == []  # maximal
        if feasible(rows, desired, budget):
            assert got == desired
        # "closest": least value lost, value = desired rank (importance) x log1p(rank)
        best = max(_objective(r, desired) for r in _brute(rows, budget, grid, upper=desired))
        value = _objective(got, desired)
        assert value >= best - _max_step_gain(rows, desired, grid) - 1e-9
        exact += value >= best - 1e-9
    assert exact >= trials * 0.6


def test_project_prefers_cutting_what_the_proposal_valued_least():
    rows = [_row("a", 64, 64), _row("b", 64, 64)]
    b = Budget(max_params=128 * 12)
    got = project(rows, {"a": 16, "b": 4}, b, GRID)
    assert got == {"a": 8, "b": 4}
    # an explicit importance overrides the default (desired rank) weighting
    assert project(rows, {"a": 16, "b": 4}, b, GRID, importance={"a": 0.0, "b": 1.0}) == {"a": 8, "b": 4}
    assert project(rows, {"a": 16, "b": 16}, b, GRID, importance={"a": 1.0, "b": 0.0})["b"] <= 4


def test_shares_are_rounded_to_ranks_that_spend_the_cap_and_only_round():
    """allocate_by_shares: feasible; share 0 stays rank 0; after it no further grid step of an on module fits (so
    the cap is spent up to one step); proportions are kept."""
    rng = np.random.default_rng(0)
    grid = (0, 1, 2, 4, 8)
    for _ in range(300):
        shares = rng.dirichlet(np.full(len(TARGETS), 0.7)) * (rng.random(len(TARGETS)) > 0.25)
        if shares.sum() == 0:
            continue
        budget = Budget(max_params=int(rng.integers(80, 2500)), max_flops=float(rng.integers(600, 20000)))
        got = allocate_by_shares(TARGETS, shares, budget, grid)
        assert feasible(TARGETS, got, budget)
        on = [t for t, w in zip(TARGETS, shares, strict=True) if w > 0]
        assert all(got[t.name] == 0 for t, w in zip(TARGETS, shares, strict=True) if w == 0)
        for t in on:  # maximal among the modules that asked: no on module can go one step up
            r = got[t.name]
            if r < grid[-1]:
                assert not feasible(TARGETS, {**got, t.name: grid[grid.index(r) + 1]}, budget)
    # one module wanting a lot, cheap ones nearly nothing: proportions, not an even split
    width = np.array([t.in_features + t.out_features for t in TARGETS], dtype=float)
    got = allocate_by_shares(TARGETS, [0.97, 0.01, 0.01, 0.01], Budget(max_params=int(4 * width.sum())), grid)
    assert got["q"] == 8 and sum(got.values()) < 8 * 4
    # equal cost shares: rank ~ 1 / cost (the cheap 48-wide module gets the most), and the whole cap is used
    cap = int(2 * width.sum())
    got = allocate_by_shares(TARGETS, [1.0] * 4, Budget(max_params=cap), grid)
    assert got["small"] >= got["q"] >= got["up"] and got["up"] == got["down"]
    assert total_costs(TARGETS, got, Budget(max_params=cap))["params"] >= 0.9 * cap
    with pytest.raises(ValueError, match="all 0"):
        allocate_by_shares(TARGETS, [0, 0, 0, 0], Budget(max_params=1000), grid)
    with pytest.raises(ValueError, match="shares must be finite"):
        allocate_by_shares(TARGETS, [1, -1, 0, 0], Budget(max_params=1000), grid)
