"""`rankrl train-policy`: a tiny PPO run on the sim (calibrated from live tiny-bert probes) writes the policy, its
layout record, a checkpoint, heatmaps and metrics, evaluates live against uniform, and `--resume` continues."""

from __future__ import annotations

import json
import shutil

import pytest

from rankrl.cli import main
from rankrl.ranks.env import GLOBAL_NAMES, LoRARankConfig
from rankrl.ranks.features import FEATURE_NAMES
from rankrl.ranks.finetune import FineTuneConfig
from rankrl.ranks.train import TrainPolicyConfig
from rankrl.tracking import read_metrics

# the live runs are tiny-bert for 8 steps; the calibration takes 2 live probes of 4 steps
TINY = ["--env.run.model", "tiny-bert", "--env.run.steps", "8", "--env.decisions", "2", "--env.run.batch_size", "8",
        "--env.run.max_eval", "32", "--env.run.max_train", "256", "--probes", "2", "--probe_steps", "4",
        "--probe_evals", "1", "--n_steps", "32", "--ppo_batch_size", "32", "--n_epochs", "2", "--checkpoint_every",
        "32", "--env.max_modules", "16", "--env.run.threads", "1", "--no_wandb", "--no_progress"]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One 64-step run shared by the tests below (they copy it before changing it)."""
    out = tmp_path_factory.mktemp("policy") / "run"
    with pytest.MonkeyPatch.context() as mp:  # module fixtures run before conftest's per-test isolation
        mp.setenv("RANKRL_CACHE", str(tmp_path_factory.mktemp("cache")))
        assert main(["train-policy", *TINY, "--timesteps", "64", "--out", str(out)]) == 0
    return out


def test_train_policy_writes_policy_checkpoint_heatmaps_and_metrics(trained, capsys):
    for name in ("policy.zip", "policy.json", "checkpoint.zip", "checkpoint.json", "rank_heatmap.png",
                 "rank_heatmap_live.png", "curves.png", "metrics.jsonl", "summary.json"):  # fmt: skip
        assert (trained / name).exists(), name
    assert not list(trained.glob(".*"))  # atomic writes leave no temp files
    meta = json.loads((trained / "policy.json").read_text())
    assert meta["observation"]["feature_names"] == list(FEATURE_NAMES)
    assert meta["observation"]["global_names"] == list(GLOBAL_NAMES) and meta["observation"]["max_modules"] == 16
    assert meta["action"] == {"rank_grid": [0, 1, 2, 4, 8], "r_max": 8, "decode": "LoRARankEnv.decode_action"}
    assert meta["budgets"]["budget_rank"] == 4.0 and meta["timesteps"] == 64
    assert json.loads((trained / "checkpoint.json").read_text())["timesteps_done"] == 64
    rows = read_metrics(trained)
    rollouts = [r for r in rows if "rollout/ep_reward" in r]
    assert [r["step"] for r in rollouts] == [32, 64]
    assert all(f"rollout/ep_reward_{t}" in rollouts[-1] for t in ("quality", "params", "tx"))
    assert all(r["budget/violation"] == 0.0 for r in rollouts)
    assert any(k.startswith("train/") for k in rollouts[-1])  # SB3's update stats of the previous rollout
    summary = json.loads((trained / "summary.json").read_text())
    for who in ("policy", "uniform"):  # the sim-trained policy was evaluated live next to uniform
        assert 0.0 <= summary[f"eval/live_{who}_accuracy"] <= 1.0
        assert summary[f"eval/live_{who}_violation"] == 0.0


def test_resume_continues_from_the_checkpoint(trained, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    before = read_metrics(out)
    assert main(["train-policy", *TINY, "--timesteps", "128", "--out", str(out), "--resume"]) == 0
    assert "resuming from" in capsys.readouterr().out
    assert json.loads((out / "checkpoint.json").read_text())["timesteps_done"] == 128
    rows = read_metrics(out)
    assert rows[: len(before)] == before  # the old log is kept, not restarted
    steps = [r["step"] for r in rows if "rollout/ep_reward" in r]
    assert steps == [32, 64, 96, 128]  # counting went on from 64
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


def test_config_validation():
    with pytest.raises(ValueError, match="env must be one of"):
        TrainPolicyConfig(env_id="rankrl/LoRARank-v9")
    with pytest.raises(ValueError, match="probe_steps"):
        TrainPolicyConfig(env=LoRARankConfig(run=FineTuneConfig(steps=8)), probe_steps=24)
    with pytest.raises(ValueError, match="decisions"):
        TrainPolicyConfig(env=LoRARankConfig(run=FineTuneConfig(steps=4), decisions=8), probe_steps=4)
