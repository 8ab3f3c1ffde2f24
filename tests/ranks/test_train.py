"""`rankrl train-policy`: a tiny PPO run on the sim (calibrated from live tiny-bert probes) writes the policy, its
layout record, a checkpoint, heatmaps and metrics, evaluates live against uniform, and `--resume` continues. A
PPO run on a synthetic sim over budget ranges learns: it beats its untrained self at the same seeds, its shares
depend on the budget it observes, it spends the cap, and an even (constant-score) request does not reproduce it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from rankrl.cli import main
from rankrl.models import load_model
from rankrl.ranks.budgets import Budget, BudgetSpec
from rankrl.ranks.env import GLOBAL_NAMES, LoRARankConfig
from rankrl.ranks.features import FEATURE_NAMES
from rankrl.ranks.finetune import FineTuneConfig
from rankrl.ranks.policy import allocate, load_policy
from rankrl.ranks.sim import SimCalibration
from rankrl.ranks.train import TrainPolicyConfig, train_policy
from rankrl.targets import find_target_modules
from rankrl.tracking import read_metrics

# the live runs are tiny-bert for 8 steps; the calibration takes 2 live probes of 4 steps
TINY = ["--env.run.model", "tiny-bert", "--env.run.steps", "8", "--env.decisions", "2", "--env.run.batch_size", "8",
        "--env.run.max_eval", "32", "--env.run.max_train", "256", "--probes", "2", "--probe_steps", "4",
        "--probe_evals", "1", "--n_steps", "32", "--ppo_batch_size", "32", "--n_epochs", "2", "--checkpoint_every",
        "32", "--env.max_modules", "16", "--env.run.threads", "1", "--no_wandb", "--no_progress"]  # fmt: skip


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """The cache of the calibration ``trained`` makes (tests that point RANKRL_CACHE here reuse it)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache):
    """One 64-step run shared by the tests below (they copy it before changing it)."""
    out = tmp_path_factory.mktemp("policy") / "run"
    with pytest.MonkeyPatch.context() as mp:  # module fixtures run before conftest's per-test isolation
        mp.setenv("RANKRL_CACHE", str(cache))
        assert main(["train-policy", *TINY, "--timesteps", "64", "--out", str(out)]) == 0
    return out


def test_train_policy_writes_policy_checkpoint_heatmaps_and_metrics(trained, capsys):
    for name in ("policy.safetensors", "policy.json", "checkpoint.safetensors", "checkpoint_optimizer.pt",
                 "checkpoint.json", "rank_heatmap.png", "rank_heatmap_live.png", "curves.png", "metrics.jsonl",
                 "summary.json"):  # fmt: skip
        assert (trained / name).exists(), name
    assert not list(trained.glob(".*")) and not list(trained.glob("*.zip"))  # no temp files, no pickled SB3 zips
    meta = json.loads((trained / "policy.json").read_text())
    assert meta["observation"]["feature_names"] == list(FEATURE_NAMES)
    assert meta["observation"]["global_names"] == list(GLOBAL_NAMES) and meta["observation"]["max_modules"] == 16
    assert meta["action"] == {"rank_grid": [0, 1, 2, 4, 8], "r_max": 8, "decode": "LoRARankEnv.decode_action",
                              "meaning": "share of the budget", "share_scale": 3.0, "off_share": 0.05}
    assert meta["budgets"]["budget_rank"] == 4.0 and meta["timesteps"] == 64 and meta["layout_version"] == 2
    assert meta["budget_rank_range"] == [0.5, 8.0]  # the default trains on budget ranges
    assert json.loads((trained / "checkpoint.json").read_text())["timesteps_done"] == 64
    rows = read_metrics(trained)
    rollouts = [r for r in rows if "rollout/ep_reward" in r]
    assert [r["step"] for r in rollouts] == [32, 64]
    assert all(f"rollout/ep_reward_{t}" in rollouts[-1] for t in ("quality", "params", "tx"))
    assert any(k.startswith("train/") for k in rollouts[-1])  # SB3's update stats of the previous rollout
    # the budget, checked from the module shapes (not by the env's own projection, which sets budget/violation):
    # every allocation the policy made live fits a mean rank of 4 over tiny-bert's 12 modules
    summary = json.loads((trained / "summary.json").read_text())
    cap = Budget.mean_rank(find_target_modules(load_model("tiny-bert").model), 4.0).max_params
    for who in ("policy", "uniform"):  # the sim-trained policy was evaluated live next to uniform
        assert 0.0 <= summary[f"eval/live_{who}_accuracy"] <= 1.0
        assert 0 < summary[f"eval/live_{who}_params"] <= cap


def test_resume_continues_from_the_checkpoint(trained, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    before = read_metrics(out)
    with (out / "metrics.jsonl").open("a") as f:  # a run that died after its checkpoint had logged step 96 ...
        f.write(json.dumps({"step": 96, "rollout/ep_reward": 0.0}) + "\n")
    assert main(["train-policy", *TINY, "--timesteps", "128", "--out", str(out), "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "resuming from" in printed and "dropped 1 rows" in printed
    assert json.loads((out / "checkpoint.json").read_text())["timesteps_done"] == 128
    rows = read_metrics(out)
    assert rows[: len(before)] == before  # the old log is kept, not restarted
    steps = [r["step"] for r in rows if "rollout/ep_reward" in r]
    assert steps == [32, 64, 96, 128]  # counting went on from 64, and step 96 is there once
    updates = [r["train/n_updates"] for r in rows if "train/n_updates" in r]
    assert updates == sorted(updates) and updates[-1] > updates[0]  # optimizer state continued too
    assert json.loads((out / "policy.json").read_text())["timesteps"] == 128


def test_resume_refuses_other_settings_and_missing_checkpoints(trained, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    flags = list(TINY)
    flags[flags.index("--env.decisions") + 1] = "4"
    with pytest.raises(SystemExit, match="decisions: checkpoint 2 vs now 4"):
        main(["train-policy", *flags, "--timesteps", "128", "--out", str(out), "--resume"])
    with pytest.raises(SystemExit, match="no checkpoint"):
        main(["train-policy", *TINY, "--out", str(tmp_path / "empty"), "--resume"])


def test_an_old_pickle_checkpoint_is_refused_with_the_converter(trained, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    for name in ("checkpoint.safetensors", "checkpoint_optimizer.pt"):
        (out / name).unlink()
    (out / "checkpoint.zip").write_bytes(b"PK not a zip: it must not even be opened")
    with pytest.raises(SystemExit, match=rf"convert-policy --policy {out} --trust"):
        main(["train-policy", *TINY, "--timesteps", "128", "--out", str(out), "--resume"])


def test_sigint_saves_checkpoint_and_policy_exits_130_and_resume_continues(trained, cache, tmp_path, monkeypatch,
                                                                             capsys):  # fmt: skip
    import os
    import signal
    import subprocess
    import sys

    monkeypatch.setenv("RANKRL_CACHE", str(cache))  # the calibration `trained` made: no live probes here
    out = tmp_path / "run"
    args = ["train-policy", *TINY, "--timesteps", "100000", "--out", str(out)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "rankrl.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)  # fmt: skip
    seen = []
    for line in proc.stdout:  # PPO starts learning right after this line
        seen.append(line)
        if "decisions x" in line:
            proc.send_signal(signal.SIGINT)
            break
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, "".join(seen) + rest
    assert "SIGINT: stopped at" in rest
    done = json.loads((out / "checkpoint.json").read_text())["timesteps_done"]
    assert done % 32 == 0 and done < 100000  # the last PPO update: the partial rollout is not counted
    assert json.loads((out / "policy.json").read_text())["timesteps"] == done and (out / "policy.safetensors").exists()
    assert all(r["step"] <= done for r in read_metrics(out)) and not (out / "summary.json").exists()
    assert main(["train-policy", *TINY, "--timesteps", str(done + 64), "--out", str(out), "--resume"]) == 0
    steps = [r["step"] for r in read_metrics(out) if "rollout/ep_reward" in r]
    assert steps == list(range(32, done + 65, 32))  # every rollout once, none repeated, none missing


def test_config_validation():
    with pytest.raises(ValueError, match="env must be one of"):
        TrainPolicyConfig(env_id="rankrl/LoRARank-v9")
    with pytest.raises(ValueError, match="probe_steps"):
        TrainPolicyConfig(env=LoRARankConfig(run=FineTuneConfig(steps=8)), probe_steps=24)
    with pytest.raises(ValueError, match="decisions"):
        TrainPolicyConfig(env=LoRARankConfig(run=FineTuneConfig(steps=4), decisions=8), probe_steps=4)


# ------------------------------------------------------------------------------------------ the policy learns
@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """2,048 PPO steps on a synthetic 12-module sim, one-shot allocations, each episode's budget drawn from mean
    rank 0.5..8; quality is the whole reward (no cost terms), so the reward measures the allocation alone."""
    return _learn(tmp_path_factory, "learned", w_params=0.0)[:3]


def _learn(tmp_path_factory, name: str, **env_kw) -> tuple:
    """2,048 PPO steps on the synthetic 12-module sim (one decision, budgets drawn from mean rank 0.5..8, no transmit
    cost, ``env_kw`` on top): ``(result, loaded policy, calibration, config)``."""
    out = tmp_path_factory.mktemp(name) / "run"
    run = FineTuneConfig(model="tiny-bert", steps=40, batch_size=8, max_eval=16, max_train=128, threads=1)
    env = LoRARankConfig(run=run, decisions=1, max_modules=16, budget_rank_range=(0.5, 8.0), w_tx=0.0, **env_kw)
    config = TrainPolicyConfig(env=env, timesteps=2048, n_steps=128, ppo_batch_size=64, n_epochs=5, out=str(out),
                               wandb=False, progress=False, checkpoint_every=0)  # fmt: skip
    cal = SimCalibration.synthetic(r_max=8, run_steps=40)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RANKRL_CACHE", str(tmp_path_factory.mktemp("cache")))
        result = train_policy(config, calibration=cal)
    return result, load_policy(out), cal, config


def test_ppo_beats_its_untrained_self_on_the_sim_at_the_same_seeds(learned):
    result, _, _ = learned
    table = result.sim_budgets  # deterministic actions, seeds 1..3, every budget of EVAL_BUDGET_RANKS
    gains = {r: row["policy"]["reward"] - row["untrained"]["reward"] for r, row in table.items()}
    assert sum(gains.values()) / len(gains) > 1e-3, gains
    assert sum(g > 0 for g in gains.values()) >= len(gains) - 1, gains


def test_the_trained_allocation_depends_on_the_budget_and_spends_it(learned):
    _, loaded, cal = learned
    allocs = {r: allocate(loaded, cal.targets, cal.static, BudgetSpec(rank=r)) for r in (1.0, 2.0, 4.0)}
    shares = {r: np.array(list(a.shares.values())) for r, a in allocs.items()}
    assert np.abs(shares[1.0] - shares[4.0]).max() > 1e-3  # the policy saw the budget and changed its shares
    assert len({tuple(a.ranks.values()) for a in allocs.values()}) == 3
    for a in allocs.values():
        assert 0.95 <= a.metrics["budget/used_params"] <= 1.0 and a.metrics["budget/violation"] == 0.0


def test_an_even_constant_request_does_not_reproduce_the_trained_allocation(learned):
    from rankrl.ranks.env import LoRARankEnv
    from rankrl.ranks.rounding import allocate_by_shares

    _, loaded, cal = learned
    differs = 0
    for r in (1.0, 2.0, 4.0):
        trained = allocate(loaded, cal.targets, cal.static, BudgetSpec(rank=r))
        env = LoRARankEnv("sim", calibration=cal, r_max=8, steps=40, budget_rank=r)
        even = allocate_by_shares(cal.targets, [1.0] * len(cal.targets), env.round_budget(), env.grid)
        differs += trained.ranks != even
    assert differs >= 2


@pytest.fixture(scope="module")
def learned_spend(tmp_path_factory):
    """The ``learned`` run with ``spend_action`` and the parameter cost on (``w_params`` 0.3 x params / cap): the
    policy also decides how much of each drawn budget to spend. At this weight the best constant spend differs by
    budget on this sim (equal shares: 1/8 of the cap at mean rank 0.5, 1/16 at 1, 1/4 at 2, 1/2 at 4 and 8; at 0.1
    all of it is best everywhere, so the spend would not need to depend on the budget)."""
    return _learn(tmp_path_factory, "learned-spend", w_params=0.3, spend_action=True)


def test_a_spend_policy_decides_its_spend_by_budget_and_beats_its_untrained_self_and_constant_spends(learned_spend):
    from rankrl.ranks.train import sim_budget_table

    result, loaded, cal, config = learned_spend
    allocs = {r: allocate(loaded, cal.targets, cal.static, BudgetSpec(rank=r)) for r in (0.5, 2.0, 8.0)}
    spends = {r: a.spend for r, a in allocs.items()}
    assert max(spends.values()) - min(spends.values()) > 0.05, spends  # the spend follows the observed budget
    top_step = 8 * max(t.in_features + t.out_features for t in cal.targets)  # one module at r_max
    for a in allocs.values():  # the rounding spends what the policy asked for (up to a grid step), never more
        used = a.metrics["budget/used_params"]
        assert used <= a.spend + 1e-9 and a.metrics["budget/violation"] == 0.0
        if a.spend * a.budget.max_params >= top_step:  # an ask below one grid step may round to nothing
            assert used >= 0.9 * a.spend, (a.spend, used)
    assert sum(a.spend * a.budget.max_params >= top_step for a in allocs.values()) >= 1
    table = result.sim_budgets
    mean = {k: np.mean([row[k]["reward"] for row in table.values()]) for k in ("policy", "untrained", "uniform")}
    assert mean["policy"] > mean["untrained"] + 1e-3 and mean["policy"] > mean["uniform"], mean

    def constant(a: float):  # equal shares, one spend entry for every budget
        def act(obs, env):
            action = np.zeros(env.action_space.shape, np.float32)
            action[-1] = a
            return action

        return act

    def policy(obs, _env):
        return loaded.policy.predict(obs, deterministic=True)[0]

    # other episode seeds than training's evaluation; the constant is picked with hindsight on these episodes
    rules = {"policy": policy, **{f"spend{a}": constant(a) for a in (1.0, 0.5, 0.0, -0.5, -1.0)}}
    held = sim_budget_table(config, cal, rules, seeds=(11, 12, 13))
    means = {k: np.mean([row[k]["reward"] for row in held.values()]) for k in rules}
    assert means["policy"] > max(v for k, v in means.items() if k != "policy"), means


def test_no_live_check_skips_the_live_evaluation(tmp_path, monkeypatch, capsys):
    """--no_live_check: trained and evaluated on the sim only; no live env is ever made (a live run would fail)."""
    import rankrl.ranks.train as train_module

    made = []

    def sim_only(config, backend=None, *args, **kwargs):
        made.append(backend or config.backend)
        assert made[-1] != "live", "live_check=False must not build a live env"
        return make_env(config, backend, *args, **kwargs)

    make_env = train_module.make_env
    monkeypatch.setattr(train_module, "make_env", sim_only)
    run = FineTuneConfig(model="tiny-bert", steps=40, batch_size=8, max_eval=16, max_train=128, threads=1)
    env = LoRARankConfig(run=run, decisions=2, max_modules=16, budget_rank_range=(0.5, 8.0))
    out = tmp_path / "run"
    config = TrainPolicyConfig(env=env, timesteps=64, n_steps=32, ppo_batch_size=32, n_epochs=1, out=str(out),
                               wandb=False, progress=False, checkpoint_every=0, live_check=False)  # fmt: skip
    result = train_policy(config, calibration=SimCalibration.synthetic(r_max=8, run_steps=40))
    assert made and set(made) == {"sim"}
    assert result.live == {} and result.sim_budgets and result.sim  # the sim evaluation still ran
    assert all(row["policy"]["bits"] > 0 for row in result.sim_budgets.values())  # bits sent per update
    summary = json.loads((out / "summary.json").read_text())
    assert summary["timesteps_done"] == 64 and any(k.startswith("eval/sim") for k in summary)
    assert not any(k.startswith("eval/live") for k in summary) and not (out / "rank_heatmap_live.png").exists()
    assert "live evaluation skipped" in capsys.readouterr().out
    assert json.loads((out / "policy.json").read_text())["train_config"]["live_check"] is False
