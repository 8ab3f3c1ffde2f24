"""RolloutBudgetEnv on the live backend: every step is a real RolloutGRPOTrainer round (tiny-qwen on arith, CPU).

The trainer runs on a background thread; these tests check that the allocation the env chose is the one generated,
that trainer failures surface in ``step()``, and that no trainer thread outlives ``close()``.
"""

from __future__ import annotations

import threading

import gymnasium as gym
import numpy as np
import pytest

pytest.importorskip("trl")

from gymnasium.utils.env_checker import check_env  # noqa: E402

import rankrl  # noqa: E402, F401 - registers rankrl/RolloutBudget-v0
from rankrl.rollouts.config import LiveConfig, RolloutBudgetConfig  # noqa: E402
from rankrl.rollouts.env import RolloutBudgetEnv  # noqa: E402
from rankrl.rollouts.live import LiveBackend  # noqa: E402

# TRL 1.16 calls a method transformers 5 deprecated; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

SMALL = dict(rounds=3, prompts_per_round=2, rollouts_per_prompt=4, max_prompts=8, history_rounds=0)
POOL = 8


def live_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("rankrl-live-grpo")]


def digit_share(completions, **kwargs):
    """A reward in [0, 1] that varies on an untrained model, so groups are mixed."""
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


def test_gym_make_steps_real_grpo_rounds():
    env = gym.make("rankrl/RolloutBudget-v0", n_prompts=POOL, **SMALL)
    base = env.unwrapped
    obs, info = env.reset(seed=0)
    assert len(live_threads()) == 1 and obs["mask"].sum() == 2
    for k in range(3):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        done = base.backend.trainer.last_round  # what the trainer generated this round
        assert [int(key) for key in done.keys] == info["prompt_ids"].tolist()
        assert done.counts == info["allocation"].tolist() and sum(done.counts) == 8
        flat = np.concatenate(done.rewards)
        assert ((flat >= 0) & (flat <= 1)).all() and 0.0 <= reward <= 1.0
        assert not terminated and truncated == (k == 2)
    assert base.backend.trainer.state.global_step == 3 and base.backend.finished
    assert base.history.trials.sum() == 3 * 8  # the env's history got every generated rollout
    env.close()
    assert not live_threads() and base.backend.trainer is None


def test_env_history_is_fed_the_trainers_rewards():
    cfg = RolloutBudgetConfig(**SMALL)
    backend = LiveBackend(cfg, LiveConfig(n_prompts=POOL), reward_funcs=[digit_share])
    env = RolloutBudgetEnv(backend=backend, config=cfg)
    env.reset(seed=3)
    seen = []
    for _ in range(3):
        ids = env.batch.copy()
        env.step_allocation(np.array([6, 2]))
        done = backend.trainer.last_round
        np.testing.assert_allclose(env.history.successes[ids], [sum(r) for r in done.rewards])
        np.testing.assert_allclose(env.history.last_frac[ids], [np.mean(r) for r in done.rewards])
        seen.extend(ids.tolist())
    assert backend.progress() == pytest.approx(env.history.last_frac[np.unique(seen)].mean())
    assert backend.success_rates(env.batch) is None
    env.close()


def test_check_env_on_live_env():
    env = RolloutBudgetEnv(backend="live", rounds=2, prompts_per_round=2, rollouts_per_prompt=2, n_prompts=4,
                           max_completion_length=2)  # fmt: skip
    check_env(env, skip_render_check=True)  # resets (a fresh run each) and steps; seeded runs repeat exactly
    env.close()
    assert not live_threads()


def test_trainer_exception_surfaces_in_step():
    calls = []

    def flaky_reward(completions, **kwargs):
        calls.append(len(completions))
        if len(calls) == 2:
            raise ValueError("reward server down")
        return [0.0] * len(completions)

    cfg = RolloutBudgetConfig(**SMALL)
    env = RolloutBudgetEnv(backend=LiveBackend(cfg, LiveConfig(n_prompts=POOL), reward_funcs=[flaky_reward]),
                           config=cfg)  # fmt: skip
    env.reset(seed=0)
    env.step(np.zeros(8, dtype=np.float32))
    with pytest.raises(RuntimeError, match=r"failed during GRPO round 2/3: ValueError: reward server down") as err:
        env.step(np.zeros(8, dtype=np.float32))
    assert isinstance(err.value.__cause__, ValueError)
    assert not live_threads()
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(8, dtype=np.float32))
    env.close()


def test_close_mid_episode_and_reset_replace_the_run():
    env = gym.make("rankrl/RolloutBudget-v0", n_prompts=POOL, **SMALL)
    env.reset(seed=1)
    env.step(env.action_space.sample())
    first = live_threads()
    assert len(first) == 1
    env.reset(seed=2)  # mid-episode: the old run is stopped, a fresh one starts
    assert len(live_threads()) == 1 and not first[0].is_alive()
    env.close()
    assert not live_threads()
    env.close()  # idempotent


def test_timeout_stops_the_run_with_a_clear_error():
    env = RolloutBudgetEnv(backend="live", n_prompts=POOL, timeout_s=1e-3, **SMALL)
    with pytest.raises(TimeoutError, match=r"sent nothing for 0.001 s during the run's set-up.*LiveConfig.timeout_s"):
        env.reset(seed=0)  # building the first batch takes far longer than 1 ms
    for thread in live_threads():  # told to stop; it ends at its first allocator call
        thread.join(30)
    assert not live_threads() and env.backend.trainer is None
    env.close()


def test_live_config_validation():
    env = gym.make("rankrl/RolloutBudget-v0", n_prompts=POOL, rounds=2, prompts_per_round=2, rollouts_per_prompt=2)
    assert env.unwrapped.config.history_rounds == 0  # the live default: no training-free probe
    assert env.unwrapped.backend.n_prompts == POOL and not live_threads()  # nothing runs before reset
    env.close()
    with pytest.raises(ValueError, match="history_rounds must be 0"):
        RolloutBudgetEnv(backend="live", config=RolloutBudgetConfig(prompts_per_round=2, rollouts_per_prompt=2))
    with pytest.raises(ValueError, match="must equal the env's rounds"):
        RolloutBudgetEnv(backend="live", rounds=3, steps=4)
    with pytest.raises(ValueError, match="another backend"):
        RolloutBudgetEnv(backend="live", difficulty="hard")
    with pytest.raises(ValueError, match="another backend"):
        RolloutBudgetEnv(backend="sim", lora_r=4)
    with pytest.raises(ValueError, match="report_to"):
        LiveConfig(report_to="tensorboard")
    with pytest.raises(ValueError, match="timeout_s"):
        LiveConfig(timeout_s=0)
    cfg = RolloutBudgetConfig(**SMALL)
    with pytest.raises(ValueError, match="built for"):
        RolloutBudgetEnv(backend=LiveBackend(cfg, LiveConfig(n_prompts=POOL)), rounds=4, history_rounds=0,
                         prompts_per_round=2, rollouts_per_prompt=4)  # fmt: skip
