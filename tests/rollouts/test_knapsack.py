"""Unit tests for the Knapsack RL rollout allocator (pure numpy, no torch)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rankrl.rollouts import knapsack
from rankrl.rollouts.knapsack import (
    allocate,
    allocate_uniform,
    estimate_success_rate,
    expected_effective_rollout_ratio,
    expected_nonzero_groups,
    nonzero_group_probability,
    rollout_value,
    success_rates_from_history,
    total_value,
)

REPO = Path(__file__).resolve().parents[2]


def _brute_force(p: np.ndarray, budget: int, lo: np.ndarray, hi: np.ndarray) -> float:
    """Best objective over every integer allocation with lo <= N <= hi and sum(N) == budget."""
    grids = np.meshgrid(*[np.arange(a, b + 1) for a, b in zip(lo, hi, strict=True)], indexing="ij")
    alloc = np.stack([g.ravel() for g in grids], axis=1)
    alloc = alloc[alloc.sum(axis=1) == budget]
    return float(rollout_value(alloc, p[None, :]).sum(axis=1).max())


def _dp_reference(p: np.ndarray, budget: int, lo: np.ndarray, hi: np.ndarray) -> float:
    """Plain knapsack DP over (prompt, rollouts used), independent of the allocator's code paths."""
    best = np.full(budget + 1, -np.inf)
    best[0] = 0.0
    for pi, a, b in zip(p, lo, hi, strict=True):
        new = np.full(budget + 1, -np.inf)
        for n in range(a, min(b, budget) + 1):
            new[n:] = np.maximum(new[n:], best[: budget + 1 - n] + rollout_value(n, pi))
        best = new
    return float(best[budget])


def test_import_does_not_load_torch():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    code = "import rankrl.rollouts.knapsack, sys; assert 'torch' not in sys.modules, 'torch was imported'"
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_value_spot_checks():
    assert rollout_value(2, 0.5) == pytest.approx(0.0625)  # (1 - .25 - .25) * .5 * .25
    # p = 0.25, N = 3: (1 - 1/64 - 27/64) * 0.25 * 0.5625
    assert rollout_value(3, 0.25) == pytest.approx((36 / 64) * 0.25 * 0.5625)
    assert rollout_value(4, 0.9) == pytest.approx((1 - 0.9**4 - 0.1**4) * 0.9 * 0.01)
    # a group of one (or none) never has a non-zero advantage; p in {0, 1} never does either
    np.testing.assert_array_equal(rollout_value(np.array([0, 1]), np.array([0.3, 0.7])), [0.0, 0.0])
    np.testing.assert_array_equal(rollout_value(np.array([5, 5]), np.array([0.0, 1.0])), [0.0, 0.0])
    assert nonzero_group_probability(2, 0.5) == pytest.approx(0.5)
    # vectorised: broadcast an (N,) column against (P,) rates
    table = rollout_value(np.arange(1, 9)[:, None], np.array([0.1, 0.5, 0.9]))
    assert table.shape == (8, 3)


def test_marginal_gains_are_non_increasing_from_one():
    # delta(N) = w (q p^N + p q^N): the property that makes greedy exact for N >= 1
    p = np.linspace(0.0, 1.0, 101)[:, None]
    values = rollout_value(np.arange(1, 80)[None, :], p)
    gains = np.diff(values, axis=1)
    assert (gains >= 0).all()
    assert (np.diff(gains, axis=1) <= 1e-15).all()
    q = 1 - p
    n = np.arange(1, 79)[None, :]
    np.testing.assert_allclose(gains, p * q**2 * (q * p**n + p * q**n), atol=1e-15)


@pytest.mark.parametrize("max_nodes", [64, 1], ids=["branch-and-bound", "dp-fallback"])
def test_matches_brute_force_on_random_small_instances(monkeypatch, max_nodes):
    # max_nodes=1 sends every instance the root cannot settle to the exact DP fallback
    monkeypatch.setattr(knapsack, "_MAX_NODES", max_nodes)
    rng = np.random.default_rng(1234)
    special = np.array([0.0, 1.0, 0.5, 1 / 3])
    for trial in range(300):
        size = int(rng.integers(2, 6))
        p = rng.random(size) if trial % 3 else np.round(rng.random(size), 1)  # rounding makes exact ties
        p = np.where(rng.random(size) < 0.35, rng.choice(special, size), p)  # exact 0/1 and ties
        lo = rng.integers(0, 3, size)  # n_min = 0 exercises the non-concave start (DP path)
        hi = lo + rng.integers(0, 5, size)
        budget = int(rng.integers(lo.sum(), hi.sum() + 1))
        n = allocate(p, budget, n_min=lo, n_max=hi)
        assert n.dtype == np.int64 and n.sum() == budget, trial
        assert (n >= lo).all() and (n <= hi).all(), trial
        assert total_value(p, n) == pytest.approx(_brute_force(p, budget, lo, hi), abs=1e-12), trial


def test_matches_dp_on_medium_instances():
    rng = np.random.default_rng(7)
    for n_min in (2, 1, 0):
        p = rng.beta(0.5, 0.5, 40)
        p[:3] = [0.0, 1.0, 0.5]
        budget = 40 * 5
        n = allocate(p, budget, n_min=n_min, n_max=12)
        assert n.sum() == budget
        best = _dp_reference(p, budget, np.full(40, n_min), np.full(40, 12))
        assert total_value(p, n) == pytest.approx(best)


def test_nonconcave_start_is_solved_exactly():
    # value(0) = value(1) = 0: splitting 1 + 1 is worthless, 2 + 0 is not
    n = allocate([0.5, 0.5], budget=2, n_min=0, n_max=4)
    assert sorted(n.tolist()) == [0, 2]
    n = allocate([0.5, 0.4, 0.3], budget=5, n_min=0, n_max=[4, 4, 1])
    assert total_value([0.5, 0.4, 0.3], n) == pytest.approx(
        _brute_force(np.array([0.5, 0.4, 0.3]), 5, np.zeros(3, int), np.array([4, 4, 1]))
    )


def test_leftover_budget_goes_to_unsolved_prompts_then_round_robin():
    # all gains are zero: p == 0 prompts first (as the official code), evenly, remainder to the lower index
    assert allocate([1.0, 0.0, 0.0], budget=10, n_min=2, n_max=10).tolist() == [2, 4, 4]
    assert allocate([1.0, 0.0, 0.0], budget=9, n_min=2, n_max=10).tolist() == [2, 4, 3]
    # once p == 0 prompts are full, the rest go round-robin
    assert allocate([1.0, 0.0, 1.0], budget=12, n_min=2, n_max=4).tolist() == [4, 4, 4]
    assert allocate([1.0, 0.0, 1.0], budget=9, n_min=2, n_max=4).tolist() == [3, 4, 2]


def test_deterministic_and_budget_exact_at_scale():
    rng = np.random.default_rng(0)
    p = rng.beta(0.5, 0.5, 1000)
    a = allocate(p, 8000, n_min=2, n_max=64)
    b = allocate(p, 8000, n_min=2, n_max=64)
    np.testing.assert_array_equal(a, b)
    assert a.sum() == 8000 and a.min() >= 2 and a.max() <= 64
    # exact => never worse than the uniform split it is compared to
    assert total_value(p, a) >= total_value(p, allocate_uniform(1000, 8000, n_min=2, n_max=64))


def test_knapsack_moves_budget_to_mixed_prompts():
    p = np.array([0.001, 0.999, 0.5, 0.5])
    uniform = allocate_uniform(4, 16, n_min=2, n_max=16)
    knap = allocate(p, 16, n_min=2, n_max=16)
    assert uniform.tolist() == [4, 4, 4, 4]
    assert knap.tolist() == [2, 2, 6, 6]
    assert expected_nonzero_groups(p, knap) > expected_nonzero_groups(p, uniform)
    assert expected_effective_rollout_ratio(p, knap) > expected_effective_rollout_ratio(p, uniform)
    assert total_value(p, knap) > total_value(p, uniform)


def test_uniform_baseline():
    assert allocate_uniform(3, 10).tolist() == [4, 3, 3]
    assert allocate_uniform(4, 8, n_min=2, n_max=8).tolist() == [2, 2, 2, 2]
    # tight bounds clip the common level; the remainder goes to the first prompts with room
    assert allocate_uniform(3, 10, n_min=[5, 0, 0], n_max=[6, 1, 10]).tolist() == [5, 1, 4]
    assert allocate_uniform(0, 0).tolist() == []


def test_metrics_by_hand():
    p = np.array([0.5, 0.0])
    n = np.array([2, 4])
    assert expected_nonzero_groups(p, n) == pytest.approx(0.5)
    assert expected_effective_rollout_ratio(p, n) == pytest.approx(2 * 0.5 / 6)


def test_success_rate_estimates():
    np.testing.assert_allclose(estimate_success_rate([0, 3, 2], [0, 4, 2]), [0.5, 4 / 6, 0.75])
    assert estimate_success_rate(1, 2, prior_alpha=2.0, prior_beta=2.0) == pytest.approx(0.5)
    np.testing.assert_allclose(success_rates_from_history([[1, 0, 1], [], [0.5, 0.5]]), [0.6, 0.5, 0.5])
    with pytest.raises(ValueError, match="must lie in \\[0, 1\\]"):
        success_rates_from_history([[1, 2]])
    with pytest.raises(ValueError, match="successes <= trials"):
        estimate_success_rate([3], [2])
    with pytest.raises(ValueError, match="prior_alpha"):
        estimate_success_rate([1], [2], prior_alpha=0.0)


def test_infeasible_budget_messages():
    with pytest.raises(ValueError, match=r"\[6, 24\]\. Raise the budget to >= 6 or lower n_min"):
        allocate([0.5, 0.5, 0.5], budget=5, n_min=2, n_max=8)
    with pytest.raises(ValueError, match=r"\[6, 24\]\. Lower the budget to <= 24 or raise n_max"):
        allocate([0.5, 0.5, 0.5], budget=25, n_min=2, n_max=8)
    with pytest.raises(ValueError, match="Raise the budget"):
        allocate_uniform(3, 5, n_min=2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"p": [0.5, 1.5], "budget": 4}, r"p\[1\] = 1.5 .* must lie in \[0, 1\]"),
        ({"p": [0.5, float("nan")], "budget": 4}, r"p\[1\] = nan .*not be NaN"),
        ({"p": [[0.5]], "budget": 2}, "1-D"),
        ({"p": [0.5], "budget": -1}, "budget must be >= 0"),
        ({"p": [0.5], "budget": 4.5}, "budget must be an integer"),
        ({"p": [0.5], "budget": True}, "budget must be an integer"),
        ({"p": [0.5, 0.5], "budget": 8, "n_min": [2, 5], "n_max": 4}, r"n_min\[1\] = 5 > n_max\[1\] = 4"),
        ({"p": [0.5], "budget": 4, "n_min": 1.5}, "n_min must be integers"),
        ({"p": [0.5], "budget": 4, "n_min": -1}, "n_min must be >= 0"),
        ({"p": [0.5, 0.5], "budget": 4, "n_max": [4, 4, 4]}, r"shape \(2,\)"),
    ],
)
def test_validation_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        allocate(**kwargs)


def test_empty_and_default_bounds():
    assert allocate([], budget=0).tolist() == []
    n = allocate([0.2, 0.5], budget=30)  # n_min=2, no cap
    assert n.sum() == 30 and (n >= 2).all()
