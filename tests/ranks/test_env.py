"""LoRARankEnv: the sim backend passes both env checkers; budgets are enforced by projection; a short live run on
tiny-bert applies the projected ranks, logs every reward term and survives a NaN; calibration from live probes is
cached and orders allocations by capacity as the probes did."""

from __future__ import annotations

import doctest
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
from rankrl.ranks.budgets import Budget, feasible
from rankrl.ranks.env import GLOBAL_NAMES, LoRARankConfig, LoRARankEnv
from rankrl.ranks.features import FEATURE_NAMES, STATIC_FEATURE_NAMES
from rankrl.ranks.finetune import FineTuneConfig
from rankrl.ranks.rounding import allocate_by_shares, project
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
    env = gymnasium.make("rankrl/LoRARank-Sim-v1", calibration=SimCalibration.synthetic(r_max=8), r_max=8, steps=40,
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


@pytest.mark.parametrize("mean_rank", [0.5, 1.0, 2.0, 3.0, 6.0])
def test_share_actions_spend_the_cap_and_off_modules_stay_off(mean_rank):
    env = LoRARankEnv("sim", calibration=SimCalibration.synthetic(num_layers=4, r_max=8), r_max=8, steps=40,
                      budget_rank=mean_rank)  # fmt: skip
    env.reset(seed=0)
    cap = env.round_budget().max_params
    rng = np.random.default_rng(int(mean_rank * 10))
    for _ in range(5):  # any action asking for every module spends >= 95% of the cap, never more
        action = rng.uniform(-0.3, 0.3, env.action_space.shape).astype(np.float32)
        ranks = env.decode_action(action)
        used = sum(r * (t.in_features + t.out_features) for t, r in zip(env.targets, ranks.values(), strict=True))
        assert 0.95 * cap <= used <= cap, (used, cap)
    action = np.ones(env.action_space.shape, np.float32)
    action[:3] = -1.0  # share e^-6 of the others: switched off, whatever budget is left
    shares = env.action_shares(action)
    assert [shares[t.name] for t in env.targets[:3]] == [0.0] * 3 and sum(shares.values()) == pytest.approx(1.0)
    ranks = env.decode_action(action)
    assert [ranks[t.name] for t in env.targets[:3]] == [0, 0, 0]
    _, _, _, _, info = env.step(action)
    assert info["ranks"] == ranks and info["budget/violation"] == 0.0 and info["budget/projected"] == 0.0


def test_the_spend_entry_decides_how_much_of_the_cap_is_used():
    env = LoRARankEnv("sim", calibration=SimCalibration.synthetic(num_layers=4, r_max=8), r_max=8, steps=40,
                      budget_rank=4.0, spend_action=True)  # fmt: skip
    assert env.action_space.shape == (65,)  # 64 module rows, then the spend
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gym_check_env(env)
    env.reset(seed=0)
    cap = env.round_budget().max_params
    width = np.array([t.in_features + t.out_features for t in env.targets])

    def used(a: float) -> float:
        action = np.zeros(env.action_space.shape, np.float32)
        action[-1] = a
        return float(width @ np.array(list(env.decode_action(action).values()))) / cap

    spent = {a: used(a) for a in (1.0, 0.5, 0.0, -0.5, -1.0)}
    assert spent[1.0] >= 0.95 and all(x <= 1.0 for x in spent.values()), spent
    assert list(spent.values()) == sorted(spent.values(), reverse=True), spent  # less asked, less spent
    assert 0.8 * 0.25 <= spent[0.0] <= 0.25 and spent[-1.0] <= 1 / 16, spent  # 1/16 ** ((1 - a) / 2)
    action = np.zeros(env.action_space.shape, np.float32)
    _, _, _, _, info = env.step(action)
    assert info["budget/spend"] == pytest.approx(0.25) and info["budget/used_params"] == pytest.approx(spent[0.0])
    assert info["budget/violation"] == 0.0 and info["budget/projected"] == 0.0
    with pytest.raises(ValueError, match=r"max_modules \+ 1 = 65 entries"):
        env.decode_action(np.zeros(64, np.float32))
    plain = _sim_env(budget_rank=4.0)
    assert plain.action_space.shape == (64,) and plain.spend_fraction(np.full(64, -1.0)) == 1.0
    with pytest.raises(ValueError, match="min_spend"):
        LoRARankConfig(spend_action=True, min_spend=0.0)


def test_the_observation_states_the_budget_and_each_episode_draws_one():
    env = _sim_env(budget_rank=2.0)
    obs, _ = env.reset(seed=0)
    budget_col, cost_col = GLOBAL_NAMES.index("budget"), FEATURE_NAMES.index("cost_share")
    assert obs["globals"][budget_col] == pytest.approx(2.0 / 8, abs=1e-3)  # cap / params of uniform r_max
    n = len(env.targets)
    width = np.array([t.in_features + t.out_features for t in env.targets], dtype=float)
    assert np.allclose(obs["rows"][:n, cost_col], width / width.mean(), rtol=1e-6)
    seen = set()
    drawn = _sim_env(budget_rank_range=(0.5, 8.0))
    for seed in range(6):
        obs, info = drawn.reset(seed=seed)
        assert 0.5 <= info["budget/mean_rank"] <= 8.0
        assert obs["globals"][budget_col] == pytest.approx(info["budget/mean_rank"] / 8, abs=1e-3)
        seen.add(round(info["budget/mean_rank"], 6))
    assert len(seen) == 6
    with pytest.raises(ValueError, match="budget_rank_range"):
        _sim_env(budget_rank_range=(2.0, 1.0))


def test_an_over_budget_request_is_projected_onto_the_feasible_set():
    env = _sim_env(budget_rank=2.0)
    env.reset(seed=0)
    desired = {t.name: 8 for t in env.targets}
    budget = env.round_budget()
    assert not feasible(env.targets, desired, budget)
    expected = project(env.targets, desired, budget, env.grid)
    _, _, _, _, info = env.step_allocation(desired)
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


def test_calibration_from_live_probes_is_cached_and_fits_them(tmp_path, monkeypatch):
    config = LoRARankConfig(run=FineTuneConfig(**TINY_RUN, steps=40), decisions=2)
    cal = calibrate(config, n_probes=3, probe_steps=4, probe_evals=1, cache_dir=tmp_path)
    assert len(cal.probes) == 3 and len(list(tmp_path.glob("calibration-*.json"))) == 1
    high, low = cal.probes[0], cal.probes[1]  # uniform at the grid's top, then at its lowest non-zero rank
    assert set(high.ranks) == {8} and set(low.ranks) == {1} and high.steps == (0, 4)
    # the fit reproduces what the live probes measured (4 steps of tiny-bert barely move the loss, so whether it
    # orders allocations is tested on probes with a known answer: test_calibration_recovers_a_known_surrogate)
    assert cal.loss0 == pytest.approx(high.losses[0]) and cal.predict_loss(high.ranks, 0) == pytest.approx(cal.loss0)
    for p in cal.probes:
        assert cal.predict_loss(p.ranks, p.steps[-1]) == pytest.approx(p.losses[-1], abs=0.05)

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


def _known_probes(monkeypatch, truth_numbers=None, steps=(0, 2, 4), diverge=False):
    """Replace the live probes by the eval curve of a known surrogate on the same (tiny-bert) targets (``diverge``:
    every eval after step 0 is NaN)."""
    made = {}

    def probe(run, probe_steps, probe_evals):
        if "truth" not in made:
            static = run.features().static
            sens = static[:, list(STATIC_FEATURE_NAMES).index("grad_sens_rel")]
            made["truth"] = SimCalibration(run.targets, static, 8, sensitivity=sens / sens.mean(), run_steps=40,
                                           **(truth_numbers or dict(loss0=0.7, loss_inf=0.35, rate0=0.01, rate1=0.3,
                                                                    floor_decay=0.5)))  # fmt: skip
        truth, ranks = made["truth"], tuple(run.ranks[t.name] for t in run.targets)
        losses = tuple(truth.predict_loss(ranks, s) if s == 0 or not diverge else math.nan for s in steps)
        return lora_rank_sim.ProbeResult(ranks, steps, losses, tuple(0.5 for _ in steps))

    monkeypatch.setattr(lora_rank_sim, "_probe", probe)
    return made


def test_calibration_recovers_a_known_surrogate_and_its_ordering(tmp_path, monkeypatch):
    made = _known_probes(monkeypatch)
    config = LoRARankConfig(run=FineTuneConfig(**TINY_RUN, steps=40), decisions=2)
    cal = calibrate(config, n_probes=6, probe_steps=4, probe_evals=2, cache_dir=tmp_path)
    truth = made["truth"]
    for p in cal.probes:  # the fit goes through the probes it saw ...
        assert cal.predict_loss(p.ranks, 4) == pytest.approx(truth.predict_loss(p.ranks, 4), abs=5e-3)
    high, low = cal.probes[0].ranks, cal.probes[1].ranks
    assert cal.predict_loss(high, 4) < cal.predict_loss(low, 4) - 0.01  # ... more capacity is better, as measured
    rng = np.random.default_rng(5)
    held_out = [tuple(int(r) for r in rng.choice([0, 1, 2, 4, 8], len(truth.targets))) for _ in range(6)]
    live = [truth.predict_loss(a, 4) for a in held_out]
    assert sim_vs_live_rank_correlation(cal, held_out, live, step=4) > 0.8  # ... and it orders unseen allocations


def test_a_concave_calibration_learns_that_a_few_modules_give_most_of_the_gain(tmp_path, monkeypatch):
    # the truth: capacity saturates (power 0.3), as measured live on SmolLM2, where uniform rank 1 beats rank 8
    made = _known_probes(monkeypatch, dict(loss0=0.7, loss_inf=0.35, rate0=0.01, rate1=0.3, floor_decay=0.5,
                                           capacity_power=0.3))  # fmt: skip
    config = LoRARankConfig(run=FineTuneConfig(**TINY_RUN, steps=40), decisions=2)
    linear = calibrate(config, n_probes=4, probe_steps=4, probe_evals=2, cache_dir=tmp_path)
    concave = calibrate(config, n_probes=4, probe_steps=4, probe_evals=2, cache_dir=tmp_path, capacity="concave")
    truth, n = made["truth"], len(made["truth"].targets)
    assert len(list(tmp_path.glob("calibration-*.json"))) == 2  # cached apart
    sparse = concave.probes[2].ranks  # the extra probe: 1 module in 16 at the lowest rank
    assert sorted(set(sparse)) == [0, 1] and sum(sparse) == len(range(0, n, lora_rank_sim.SPARSE_STRIDE))
    assert linear.capacity_power == 1.0 and concave.capacity_power == pytest.approx(0.3, abs=0.1)
    rng = np.random.default_rng(3)  # held-out small updates: 1-3 modules on, ranks 1-4
    held_out = []
    for _ in range(8):
        ranks = np.zeros(n, int)
        on = rng.choice(n, rng.integers(1, 4), replace=False)
        ranks[on] = rng.choice([1, 2, 4], len(on))
        held_out.append(tuple(int(r) for r in ranks))

    def error(cal):
        return max(abs(cal.predict_loss(a, 4) - truth.predict_loss(a, 4)) for a in held_out)

    gain = min(truth.loss0 - truth.predict_loss(a, 4) for a in held_out)
    assert error(concave) < 0.25 * gain < error(linear)  # the linear fit misses most of what a few modules earn
    assert doctest.testmod(lora_rank_sim).failed == 0  # capacity's worked example
    with pytest.raises(ValueError, match="--sim_capacity concave needs --probes >= 3"):
        calibrate(config, n_probes=2, probe_steps=4, cache_dir=tmp_path, capacity="concave")


def test_calibration_without_a_finite_probe_point_is_an_error(tmp_path, monkeypatch):
    _known_probes(monkeypatch, truth_numbers=dict(loss0=0.7, loss_inf=0.35, rate0=0.01, rate1=0.3), diverge=True)
    config = LoRARankConfig(run=FineTuneConfig(**TINY_RUN, steps=40), decisions=2)
    with pytest.raises(RuntimeError, match="no calibration probe has a finite eval loss.*lower --env.run.lr"):
        calibrate(config, n_probes=2, probe_steps=4, probe_evals=2, cache_dir=tmp_path)  # before: start values
    assert not list(tmp_path.glob("calibration-*.json"))  # nothing cached


def test_a_nan_action_is_an_error_not_a_middle_rank():
    env = _sim_env()
    env.reset(seed=0)
    action = np.zeros(env.action_space.shape, np.float32)
    action[3] = np.nan
    with pytest.raises(ValueError, match=rf"NaN for 1 module\(s\) \(e.g. {env.targets[3].name}\).*--ppo_lr"):
        env.step(action)
    action[3] = 0.0
    assert np.allclose(list(env.action_shares(action).values()), 1 / len(env.targets))  # equal scores: even split
    assert env.decode_action(action) == allocate_by_shares(env.targets, [1.0] * len(env.targets), env.round_budget(),
                                                           env.grid)  # fmt: skip


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
