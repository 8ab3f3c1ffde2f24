"""Calibrating the RolloutBudget sim to live runs: Beta recovery, learn-rate recovery, a tiny live end-to-end run."""

from __future__ import annotations

import numpy as np
import pytest

from rankrl.rollouts.calibrate import (
    calibrate_sim,
    collect_live_outcomes,
    fit_difficulty,
    fit_sim_config,
    register_mix,
)
from rankrl.rollouts.config import DIFFICULTY_MIXES, SimConfig


def test_fit_recovers_beta_parameters():
    rng = np.random.default_rng(0)
    n = rng.integers(8, 17, 1000)
    k = rng.binomial(n, rng.beta(0.7, 3.0, n.size))
    # first visits at round 0, later visits must be ignored by the difficulty fit
    outcomes = {i: [(3, int(n[i]), int(n[i])), (0, int(k[i]), int(n[i]))] for i in range(n.size)}
    ((w, a, b),) = fit_difficulty(outcomes, max_components=1)
    assert w == 1.0 and a == pytest.approx(0.7, rel=0.3) and b == pytest.approx(3.0, rel=0.3)
    cfg = fit_sim_config(outcomes, n.size, learn_rate=0.01, transfer_rate=0.02)  # only difficulty (+ drift) fitted
    assert register_mix(DIFFICULTY_MIXES[cfg.difficulty]) == cfg.difficulty  # idempotent
    (_, a2, b2), *_ = DIFFICULTY_MIXES[cfg.difficulty]  # 1 or 2 components
    assert cfg.difficulty.startswith("calibrated-") and a2 > 0 and b2 > 0


@pytest.mark.parametrize("learn_rate", [0.02, 0.08])
def test_fit_recovers_sim_learn_rate(learn_rate):
    sim = dict(n_prompts=256, difficulty="hard", learn_rate=learn_rate, transfer_rate=0.0, drift_std=0.03)
    outcomes = collect_live_outcomes({**sim, "prompts_per_round": 32, "rollouts_per_prompt": 8, "history_rounds": 0},
                                     rounds=24, seed=1, env_id="rankrl/RolloutBudget-Sim-v0")  # fmt: skip
    assert sum(len(v) for v in outcomes.values()) == 24 * 32
    assert all(n == 8 and 0 <= k <= 8 for obs in outcomes.values() for _, k, n in obs)
    cfg = fit_sim_config(outcomes, 256, transfer_rate=0.0)
    assert learn_rate / 2 <= cfg.learn_rate <= learn_rate * 2
    assert cfg.transfer_rate == 0.0 and cfg.n_prompts == 256


def test_register_mix_is_idempotent_and_validated():
    name = register_mix(((1.0, 0.5, 2.0),))
    assert register_mix(((1.0, 0.5, 2.0),)) == name and SimConfig(difficulty=name).difficulty == name
    with pytest.raises(ValueError, match="triples"):
        register_mix(((1.0, -1.0, 2.0),))
    with pytest.raises(ValueError, match="unknown SimConfig"):
        fit_sim_config({0: [(0, 1, 2)]}, 4, lr=0.1)
    with pytest.raises(ValueError, match="prompt ids"):
        fit_sim_config({7: [(0, 1, 2)]}, 4)


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")
def test_calibrate_sim_end_to_end_on_tiny_live_env():
    pytest.importorskip("trl")
    kwargs = dict(model="tiny-qwen", task="arith", n_prompts=8, prompts_per_round=2, rollouts_per_prompt=4)
    cfg = calibrate_sim(kwargs, rounds=3, seed=0)
    assert isinstance(cfg, SimConfig) and cfg.n_prompts == 8
    mix = DIFFICULTY_MIXES[cfg.difficulty]
    assert all(w > 0 and a > 0 and b > 0 for w, a, b in mix)
    assert cfg.learn_rate >= 0 and cfg.transfer_rate >= 0 and cfg.drift_std >= 0
