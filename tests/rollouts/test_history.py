"""RolloutHistory: the one per-prompt record behind the env's observation, the trainer and the allocators."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

from rankrl.rollouts import history as history_module
from rankrl.rollouts.history import NEVER, RolloutHistory


def test_history_features_track_outcomes():
    hist = RolloutHistory(4)
    hist.record(np.array([1, 3]), [np.array([1.0, 0.0, 1.0, 1.0]), np.array([0.0, 0.0])], round_idx=2)
    assert hist.trials.tolist() == [0, 4, 0, 2] and hist.successes.tolist() == [0, 3, 0, 0]
    assert hist.last_frac[1] == 0.75 and hist.last_seen[3] == 2


def test_keyed_updates_and_population_records_are_one_record():
    by_pairs = RolloutHistory()
    by_pairs.update(["b", "a", "b", "a", "a"], [1, 0, 0, 1, 1], round_idx=4)  # a key may repeat within a round
    by_groups = RolloutHistory()
    by_groups.record(["b", "a"], [np.array([1, 0]), np.array([0, 1, 1])], round_idx=4)
    for h in (by_pairs, by_groups):
        assert h.keys() == ["b", "a"] and h.rows(["a", "b"]).tolist() == [1, 0]
        assert h.trials.tolist() == [2, 3] and h.successes.tolist() == [1, 2] and h.last_seen.tolist() == [4, 4]
        assert h.counts("a") == (2, 3) and h.total("a") == 3 and h.outcomes("a") == [0, 1, 1]
        np.testing.assert_allclose(h.success_rates(["a", "b", "new"]), [3 / 5, 2 / 4, 1 / 2])
    with pytest.raises(ValueError, match="distinct"):
        by_groups.record(["a", "a"], [np.ones(2), np.ones(2)], round_idx=5)


def test_window_caps_the_estimate_not_the_aggregates():
    h = RolloutHistory(2, window=2)
    h.record(np.array([0]), [np.array([1.0, 1.0, 0.0])], round_idx=0)
    h.update([0, 0], [False, False])  # no round given: last_seen keeps round 0
    assert h.outcomes(0) == [0, 0] and h.counts(0) == (0, 2) and h.total(0) == 5
    assert h.trials[0] == 5 and h.successes[0] == 2 and h.last_frac[0] == 0 and h.last_seen[0] == 0
    assert h.last_seen[1] == NEVER and 1 not in h and len(h) == 1
    assert h.rows(["x"]).tolist() == [2] and h.trials.size == 3 and h.last_seen[2] == NEVER


def test_history_doctests():
    assert doctest.testmod(history_module).failed == 0
