"""rankrl/AttentionRank-v0 on a tiny causal LM: check_env clean, budgets respected, rewards rank allocations."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import rankrl  # noqa: F401 - registers the envs
from rankrl.compress.allocate import greedy_energy, ranks_flops, uniform
from rankrl.compress.env import AttentionRankEnv


@pytest.fixture(scope="module")
def env():
    # random tiny weights: perplexity differences are noise, closeness to the dense model's states is not
    return AttentionRankEnv(model="tiny-llama", texts="arith", batch_size=8, max_length=16, max_modules=16,
                            budget_range=(0.3, 0.7), quality="embedding")  # fmt: skip


def test_check_env_and_registration(env):
    from gymnasium.utils.env_checker import check_env

    check_env(env, skip_render_check=True)
    made = gym.make("rankrl/AttentionRank-v0", model="tiny-llama", texts="arith", batch_size=4, max_length=16,
                    max_modules=16)  # fmt: skip
    assert made.unwrapped.quality == "perplexity"
    made.reset(seed=0)
    info = made.step(np.zeros(16, np.float32))[4]
    assert np.isfinite(info["perplexity"]) and info["dense_perplexity"] > 1


def test_decisions_fit_the_budget_and_the_budget_is_observed(env):
    obs_lo, _ = env.reset(options={"budget": 0.3})
    obs_hi, _ = env.reset(options={"budget": 0.7})
    assert obs_lo["globals"][0] == pytest.approx(0.3) and obs_hi["globals"][0] == pytest.approx(0.7)
    for b in (0.3, 0.7):
        env.reset(options={"budget": b})
        ranks = env.decode_action(np.zeros(16, np.float32))
        assert ranks_flops(env.modules, ranks) <= env.budget
        _, reward, terminated, truncated, info = env.step(np.zeros(16, np.float32))
        assert terminated and not truncated and info["flops_fraction"] <= b + 1e-9 and reward <= 0
    with pytest.raises(ValueError, match="only 'budget'"):
        env.reset(options={"bugdet": 0.5})


def test_more_flops_keep_more_quality(env):
    env.reset(options={"budget": 0.25})
    low = env.step_ranks(greedy_energy(env.modules, env.budget))[1]
    env.reset(options={"budget": 0.9})
    high = env.step_ranks(greedy_energy(env.modules, env.budget))[1]
    assert high > low
    env.reset(options={"budget": 0.3})
    with pytest.raises(ValueError, match="> the budget"):
        env.step_ranks(uniform(env.modules, int(env.budget * 3)))
