"""LoRARankEnv: the sim backend passes both env checkers; budgets are enforced by projection; a short live run on
tiny-bert applies the projected ranks, logs every reward term and survives a NaN; calibration from live probes is
cached and orders allocations by capacity as the probes did."""

from __future__ import annotations

import math
import warnings

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import rankrl  # noqa: F401  (registers the env ids)
from rankrl.ranks import sim as lora_rank_sim
from rankrl.ranks.budgets import Budget, feasible, project
from rankrl.ranks.env import GLOBAL_NAMES, LoRARankConfig, LoRARankEnv
from rankrl.ranks.features import FEATURE_NAMES
from rankrl.ranks.finetune import FineTuneConfig
from rankrl.ranks.sim import SimCalibration, calibrate, lr_area, sim_vs_live_rank_correlation
from rankrl.tracking import Tracker, read_metrics

# threads=1: on a shared 2-core machine torch's default threads oversubscribe and a step takes seconds, not ms
TINY_RUN = dict(model="tiny-bert", task="default", r_max=8, batch_size=8, max_eval=32, max_train=256, lr=3e-3,
                threads=1)  # fmt: skip
REWARD_TERMS = ("reward/quality", "reward/params", "reward/flops", "reward/tx", "reward/nan")


def _sim_env(**kwargs) -> LoRARankEnv:
    kwargs = {"r_max": 8, "steps": 40, "decisions": 4, **kwargs}
    return LoRARankEnv("sim", calibration=SimCalibration.synthetic(r_max=8), **kwargs)


def _check_step(env, obs, reward, info) -> None:
    assert env.observation_space.contains(obs)
    assert reward == pytest.approx(sum(info[k] for k in REWARD_TERMS), abs=1e-12)
    assert info["budget/violation"] == 0.0
    assert env.run.ranks == info["ranks"]


# ------------------------------------------------------------------------------------------------------ sim
def test_sim_env_passes_gymnasium_and_sb3_checkers():
    env = gymnasium.make("rankrl/LoRARank-Sim-v0", calibration=SimCalibration.synthetic(r_max=8), r_max=8, steps=40,
                         max_tx_seconds=0.05, snr_range_db=(0.0, 20.0), bandwidth_range_hz=(5e5, 1e6))  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "rows is not a 1-D vector": by design, the set policy reads it
        gym_check_env(env.unwrapped)
        sb3_check_env(env.unwrapped)
    rows, mask, glob = (env.observation_space[k].shape for k in ("rows", "mask", "globals"))
    assert rows == (64, len(FEATURE_NAMES)) and mask == (64,) and glob == (len(GLOBAL_NAMES),)


@pytest.mark.parametrize("quality", ["loss", "accuracy"])
def test_sim_episode_sums_reward_terms_and_never_violates_budgets(quality):
    env = _sim_env(quality=quality, max_tx_seconds=0.05, max_flops=3e4, w_flops=0.1)
    obs, info = env.reset(seed=3)
    env.action_space.seed(3)
    prev = info
    for d in range(4):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        _check_step(env, obs, reward, info)
        gain = (prev["quality/eval_loss"] - info["quality/eval_loss"]) / env._loss0 if quality == "loss" else (
            info["quality/accuracy"] - prev["quality/accuracy"])  # fmt: skip
        assert info["reward/quality"] == pytest.approx(gain)
        assert terminated == (d == 3) and not truncated
        prev = info
    assert info["reason"] == "finished" and env.run.finished
    with pytest.raises(RuntimeError, match="reset"):
        env.step(env.action_space.sample())


def test_over_budget_action_is_projected_onto_the_feasible_set():
    env = _sim_env(budget_rank=2.0)
    env.reset(seed=0)
    desired = env.decode_action(np.ones(env.action_space.shape, np.float32))
    assert set(desired.values()) == {8}  # score +1 is the grid's top
    budget = env.round_budget()
    assert not feasible(env.targets, desired, budget)
    expected = project(env.targets, desired, budget, env.grid)
    _, _, _, _, info = env.step(np.ones(env.action_space.shape, np.float32))
    assert info["ranks"] == expected and env.run.ranks == expected
    assert feasible(env.targets, expected, budget) and info["budget/violation"] == 0.0
    assert info["budget/raw_violation"] > 0 and info["budget/projected"] == 1.0
    assert info["cost/params"] <= Budget.mean_rank(env.targets, 2.0).max_params


def test_set_channel_fixes_the_round_channel_its_tx_budget_and_observation():
    env = _sim_env(budget_rank=8.0, max_tx_seconds=0.05, snr_range_db=(0.0, 20.0), bandwidth_range_hz=(5e5, 1e6))
    env.reset(seed=0)
    assert env.set_channel() == {"snr_db": 10.0, "bandwidth_hz": 7.5e5}  # the middle of both ranges
    good = env.observation()["globals"].copy()
    tight_good = env.round_budget().max_tx_seconds and env.round_budget().channel.capacity_bps()
    env.set_channel(snr_db=0.0, bandwidth_hz=5e5)
    assert env.channel == {"snr_db": 0.0, "bandwidth_hz": 5e5}
    assert env.round_budget().channel.capacity_bps() < tight_good  # a worse link: fewer bits fit the tx budget
    assert not np.array_equal(env.observation()["globals"], good)  # the policy sees the channel it gets
    with pytest.raises(ValueError, match="positive bandwidth"):
        env.set_channel(bandwidth_hz=0.0)


def test_synthetic_calibration_round_trips_and_prefers_capacity(tmp_path):
    cal = SimCalibration.synthetic(r_max=8)
    back = SimCalibration.load(cal.save(tmp_path / "cal.json"))
    assert back.to_dict() == cal.to_dict()
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temp file
    low, high = ({t.name: r for t in cal.targets} for r in (1, 8))
    assert cal.capacity(high) > cal.capacity(low)
    assert cal.predict_loss(high, 50) < cal.predict_loss(low, 50) < cal.loss0
    assert lr_area(0, 4, 4) == pytest.approx(2.5)


# ----------------------------------------------------------------------------------------------------- live
def test_short_live_run_applies_projected_ranks_and_logs_reward_terms(tmp_path):
    tracker = Tracker(tmp_path, use_wandb=False)
    env = LoRARankEnv("live", tracker=tracker, **TINY_RUN, steps=6, decisions=2, budget_rank=2.0,
                      max_tx_seconds=0.1, snr_range_db=(0.0, 10.0))  # fmt: skip
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs) and obs["mask"].sum() == len(env.targets) == 12
    env.action_space.seed(0)
    for d in range(2):
        action = env.action_space.sample()
        expected = env.project(env.decode_action(action))
        obs, reward, terminated, truncated, info = env.step(action)
        _check_step(env, obs, reward, info)
        assert info["ranks"] == expected and env.run.lora.ranks == expected
        assert math.isfinite(info["quality/eval_loss"]) and 0 <= info["quality/accuracy"] <= 1
        assert info["cost/tx_seconds"] > 0 and info["rank/total_params"] == info["cost/params"]
        assert env.run.state.step == 3 * (d + 1) and terminated == (d == 1) and not truncated
    tracker.finish()
    rows = read_metrics(tmp_path)
    assert len(rows) == 2 and all(k in rows[-1] for k in (*REWARD_TERMS, "budget/violation", "quality/eval_loss"))


def test_nan_loss_ends_the_episode_with_a_reason():
    env = LoRARankEnv("live", **TINY_RUN, steps=6, decisions=2, nan_penalty=2.0)
    env.reset(seed=0)
    layer = env.run.model.base_model.model.get_submodule(env.targets[0].name)
    with torch.no_grad():
        layer.lora_B["default"].weight.fill_(float("inf"))
    obs, reward, terminated, truncated, info = env.step(np.ones(env.action_space.shape, np.float32))
    assert terminated and not truncated and info["reason"] == "nan_loss"
    assert info["reward/nan"] == -2.0 and info["reward/tx"] == 0.0
    assert reward == pytest.approx(sum(info[k] for k in REWARD_TERMS))
    assert env.observation_space.contains(obs)


def test_calibration_from_live_probes_is_cached_and_orders_by_capacity(tmp_path, monkeypatch):
    config = LoRARankConfig(run=FineTuneConfig(**TINY_RUN, steps=40), decisions=2)
    cal = calibrate(config, n_probes=3, probe_steps=4, probe_evals=1, cache_dir=tmp_path)
    assert len(cal.probes) == 3 and len(list(tmp_path.glob("calibration-*.json"))) == 1
    high, low = cal.probes[0], cal.probes[1]  # uniform at the grid's top, then at its lowest non-zero rank
    assert set(high.ranks) == {8} and set(low.ranks) == {1} and high.steps == (0, 4)
    pred_high, pred_low = (cal.predict_loss(p.ranks, 40) for p in (high, low))
    assert pred_high <= pred_low  # never worse with more capacity ...
    if high.losses[-1] < low.losses[-1]:  # ... and strictly better when the probes said so
        assert pred_high < pred_low
        assert cal.predict_loss(high.ranks, 4) < cal.predict_loss(low.ranks, 4)
    rho = sim_vs_live_rank_correlation(cal, [p.ranks for p in cal.probes], cal.probes)
    assert math.isnan(rho) or -1.0 <= rho <= 1.0

    def no_probes(*args, **kwargs):
        raise AssertionError("a cached calibration must not run probes")

    monkeypatch.setattr(lora_rank_sim, "_probe", no_probes)
    again = calibrate(config, n_probes=3, probe_steps=4, probe_evals=1, cache_dir=tmp_path, cache_only=True)
    assert again.to_dict() == cal.to_dict()
    with pytest.raises(FileNotFoundError, match="without cache_only"):  # other settings: not cached, no probing
        calibrate(config, n_probes=2, probe_steps=4, probe_evals=1, cache_dir=tmp_path, cache_only=True)
    env = LoRARankEnv("sim", config=config, calibration=again)  # the sim env runs on the fitted surrogate
    env.reset(seed=0)
    obs, reward, *_ = env.step(env.action_space.sample())
    assert env.observation_space.contains(obs) and math.isfinite(reward)


# --------------------------------------------------------------------------------------------------- errors
def test_bad_grids_and_infeasible_budgets_fail_with_the_fix():
    with pytest.raises(ValueError, match="exceeds run.r_max"):
        _sim_env(rank_grid=(0, 4, 16))
    with pytest.raises(ValueError, match=r"min\(in, out\)"):  # a 4-wide model cannot hold rank 8
        LoRARankEnv("sim", calibration=SimCalibration.synthetic(hidden=4, intermediate=8, r_max=8), r_max=8)
    with pytest.raises(ValueError, match=r"min\(in, out\)"):  # tiny-bert is 64 wide
        LoRARankEnv("live", **{**TINY_RUN, "r_max": 128}, steps=6)
    with pytest.raises(ValueError, match="allow rank 0"):  # every module at rank 2 is over a mean-rank-1 cap
        _sim_env(rank_grid=(2, 4, 8), budget_rank=1.0)
    with pytest.raises(ValueError, match="max_tx_seconds"):  # too slow at the worst SNR of the range
        _sim_env(rank_grid=(1, 2, 4), budget_rank=None, max_tx_seconds=1e-6)
    with pytest.raises(ValueError, match="r_max=8"):
        _sim_env(r_max=16)
    with pytest.raises(ValueError, match="unknown LoRARankEnv arguments"):
        _sim_env(rank_budget=4)
    with pytest.raises(ValueError, match="quality"):
        LoRARankConfig(quality="f1")
