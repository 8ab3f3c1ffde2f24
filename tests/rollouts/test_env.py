"""RolloutBudgetEnv (sim backend): API checks, allocation mapping, rewards, reproducibility, baselines."""

from __future__ import annotations

import itertools

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import rankrl
from rankrl.rollouts.config import RolloutBudgetConfig, SimConfig
from rankrl.rollouts.env import (
    BASELINES,
    RolloutBackend,
    RolloutBudgetEnv,
    allocate_max_effective,
    baseline_allocation,
    scores_to_allocation,
)
from rankrl.rollouts.history import RolloutHistory, effective_rollout_ratio
from rankrl.rollouts.knapsack import expected_effective_rollout_ratio
from rankrl.rollouts.sim import SimBackend


class FixedBackend:
    """Backend returning scripted rewards, to check the reward arithmetic by hand."""

    def __init__(self, rewards: list[np.ndarray], progress_values: list[float]) -> None:
        self.n_prompts = len(rewards)
        self.rewards, self.values = rewards, list(progress_values)

    def reset(self, rng: np.random.Generator) -> None:
        pass

    def draw_batch(self, size: int) -> np.ndarray:
        return np.arange(size)

    def probe(self, prompt_ids: np.ndarray, allocation: np.ndarray) -> list[np.ndarray]:
        return [np.zeros(n) for n in allocation]

    def next_round(self, prompt_ids: np.ndarray, allocation: np.ndarray) -> list[np.ndarray]:
        assert [r.size for r in self.rewards] == list(allocation)
        self.values.pop(0)
        return self.rewards

    def progress(self) -> float:
        return self.values[0]

    def success_rates(self, prompt_ids: np.ndarray) -> None:
        return None


@pytest.mark.filterwarnings("ignore:.*unconventional shape")  # SB3 flags 2-D rows; the set policy handles them
def test_env_checkers_pass():
    env = RolloutBudgetEnv(history_rounds=2, max_prompts=20)
    gym_check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(RolloutBudgetEnv(history_rounds=0), warn=True)


def test_registration_and_kwargs():
    rankrl.register_envs()
    rankrl.register_envs()  # idempotent
    env = gym.make("rankrl/RolloutBudget-Sim-v0", difficulty="hard", history_rounds=1, rounds=3)
    assert env.unwrapped.backend.config.difficulty == "hard" and env.unwrapped.config.rounds == 3
    env.reset(seed=0)
    truncs = [env.step(env.action_space.sample())[3] for _ in range(3)]
    assert truncs == [False, False, True]
    with pytest.raises(ValueError, match="unknown RolloutBudgetEnv arguments"):
        RolloutBudgetEnv(dificulty="hard")
    with pytest.raises(ValueError, match="difficulty"):
        RolloutBudgetEnv(difficulty="medium")
    with pytest.raises(ValueError, match="rollouts_per_prompt"):
        RolloutBudgetConfig(n_min=4, rollouts_per_prompt=3)
    with pytest.raises(ValueError, match="max_prompts"):
        RolloutBudgetConfig(prompts_per_round=8, max_prompts=4)


def test_sim_backend_implements_protocol():
    assert isinstance(SimBackend(), RolloutBackend)


@pytest.mark.parametrize("n,per,n_min,n_max", [(16, 8, 2, 32), (5, 3, 0, 4), (7, 4, 4, 4), (1, 6, 2, 9)])
def test_random_scores_always_give_a_feasible_allocation(n, per, n_min, n_max):
    rng = np.random.default_rng(0)
    budget = n * per
    specials = [np.full(n, 1.0), np.full(n, -1.0), np.full(n, np.nan), np.r_[1.0, -np.ones(n - 1)]]
    draws = [rng.uniform(-1, 1, n) for _ in range(300)] + [rng.normal(0, 5, n) for _ in range(100)] + specials
    for temperature, scores in itertools.product((0.5, 4.0, 50.0), draws):
        alloc = scores_to_allocation(scores, budget, n_min, n_max, temperature)
        assert alloc.sum() == budget and alloc.min() >= n_min and alloc.max() <= n_max


def test_equal_scores_give_uniform_and_higher_scores_never_get_fewer():
    assert scores_to_allocation(np.zeros(4), 32, 2, 32, 4.0).tolist() == [8, 8, 8, 8]
    rng = np.random.default_rng(1)
    for _ in range(100):
        scores = rng.uniform(-1, 1, 10)
        alloc = scores_to_allocation(scores, 80, 2, 24, 4.0)
        order = np.argsort(scores)
        assert (np.diff(alloc[order]) >= 0).all()


def test_env_actions_spend_the_budget():
    env = RolloutBudgetEnv(prompts_per_round=10, max_prompts=16, rounds=50, history_rounds=1)
    env.reset(seed=3)
    for _ in range(50):
        _, _, _, _, info = env.step(env.action_space.sample())
        alloc = info["allocation"]
        assert alloc.shape == (10,) and alloc.sum() == 80 and alloc.min() >= 2 and alloc.max() <= 32


def test_reset_seed_reproducible():
    def trajectory(seed):
        env = RolloutBudgetEnv(history_rounds=2)
        obs, _ = env.reset(seed=seed)
        out = [obs["rows"].copy()]
        for a in np.random.default_rng(0).uniform(-1, 1, (5, env.config.rows)).astype(np.float32):
            obs, r, *_ = env.step(a)
            out += [obs["rows"].copy(), np.array([r])]
        return out

    a, b, c = trajectory(7), trajectory(7), trajectory(8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_reward_is_the_effective_ratio_by_hand():
    rewards = [np.array([1.0, 0.0]), np.array([1.0, 1.0, 1.0]), np.array([0.0, 0.0, 1.0, 0.0])]
    # groups 0 and 2 are mixed: (2 + 4) / 9 rollouts; the backend's progress rises 0.10 -> 0.25
    kwargs = dict(prompts_per_round=3, rollouts_per_prompt=3, n_max=4, history_rounds=0)
    env = RolloutBudgetEnv(FixedBackend(rewards, [0.10, 0.25]), **kwargs)
    env_w = RolloutBudgetEnv(FixedBackend(rewards, [0.10, 0.25]), progress_weight=2.0, **kwargs)
    for e in (env, env_w):
        e.reset(seed=0)
    with pytest.raises(ValueError, match="sum"):
        env.step_allocation(np.array([2, 3, 3]))
    _, r, term, trunc, info = env.step_allocation(np.array([2, 3, 4]))
    assert r == pytest.approx(6 / 9) and info["effective_ratio"] == pytest.approx(6 / 9)
    assert info["frac_nonzero_groups"] == pytest.approx(2 / 3) and not term and not trunc
    assert "expected_effective_ratio" not in info  # live-like backend: no true p
    assert effective_rollout_ratio(rewards) == pytest.approx(6 / 9)
    _, r_w, *_ = env_w.step_allocation(np.array([2, 3, 4]))
    assert r_w == pytest.approx(6 / 9 + 2.0 * 0.15)


def test_sim_learning_raises_p_of_mixed_prompts():
    sim = SimBackend(SimConfig(n_prompts=8, drift_std=0.0, transfer_rate=0.0, learn_rate=0.1))
    sim.reset(np.random.default_rng(0))
    sim.logits[:] = 0.0
    ids = np.arange(8)
    before = sim.success_rates(ids)
    rewards = sim.next_round(ids, np.full(8, 16))
    mixed = np.array([r.var() > 0 for r in rewards])
    after = sim.success_rates(ids)
    assert (after[mixed] > before[mixed]).all() and np.array_equal(after[~mixed], before[~mixed])


def test_allocate_max_effective_is_exact_on_small_instances():
    rng = np.random.default_rng(2)
    for _ in range(5):
        p = rng.uniform(0, 1, 3)
        best = max(
            (expected_effective_rollout_ratio(p, np.array(n)), n)
            for n in itertools.product(range(2, 9), repeat=3)
            if sum(n) == 12
        )
        got = allocate_max_effective(p, 12, 2, 8)
        assert expected_effective_rollout_ratio(p, got) == pytest.approx(best[0])


def test_oracle_beats_knapsack_beats_uniform_in_expectation():
    sim = SimBackend(SimConfig(n_prompts=4096, difficulty="mixed"))
    rng = np.random.default_rng(0)
    sim.reset(rng)
    ids = np.arange(sim.n_prompts)
    hist = RolloutHistory(sim.n_prompts)
    for _ in range(3):
        hist.record(ids, sim.probe(ids, np.full(ids.size, 8)), round_idx=-1)
    means = {name: [] for name in BASELINES}
    for batch in ids.reshape(-1, 16):
        p = sim.success_rates(batch)
        for name in BASELINES:
            alloc = baseline_allocation(
                name, successes=hist.successes[batch], trials=hist.trials[batch], budget=128, n_min=2, n_max=32,
                true_p=p,
            )  # fmt: skip
            means[name].append(expected_effective_rollout_ratio(p, alloc))
    m = {k: float(np.mean(v)) for k, v in means.items()}
    assert m["oracle_ratio"] >= m["oracle"] >= m["knapsack"] >= m["uniform"] * 0.99
    assert m["oracle_ratio"] >= m["knapsack_ratio"]
