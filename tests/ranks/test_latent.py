"""`train-policy --algo diffusion`: PPO on a coarse latent with the DDIM refiner in the loop; one pickle-free policy
folder that `rankrl apply`'s loader and allocation accept; the refiner is refit from what PPO's rollouts earned."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rankrl.ranks.budgets import BudgetSpec
from rankrl.ranks.diffusion import DiffusionConfig
from rankrl.ranks.env import LoRARankConfig
from rankrl.ranks.finetune import FineTuneConfig
from rankrl.ranks.latent import train_diffusion_policy
from rankrl.ranks.latent_policy import REFINER_FILE, LatentRefinerPolicy
from rankrl.ranks.policy import PolicyLayoutError, allocate, load_policy, widen_policy
from rankrl.ranks.sim import SimCalibration
from rankrl.ranks.train import TrainPolicyConfig


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("diffusion") / "run"
    run = FineTuneConfig(model="tiny-bert", steps=40, batch_size=8, max_eval=16, max_train=128, threads=1)
    env = LoRARankConfig(run=run, decisions=1, max_modules=16, budget_rank_range=(0.5, 8.0), w_params=0.0, w_tx=0.0)
    refiner = DiffusionConfig(num_train_timesteps=100, num_inference_steps=5, hidden=32)
    config = TrainPolicyConfig(env=env, timesteps=128, n_steps=64, ppo_batch_size=64, n_epochs=2, out=str(out),
                               wandb=False, progress=False, algo="diffusion", refit_steps=20, diffusion=refiner)
    cal = SimCalibration.synthetic(r_max=8, run_steps=40)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RANKRL_CACHE", str(tmp_path_factory.mktemp("cache")))
        summary = train_diffusion_policy(config, calibration=cal)
    return out, summary, cal


def test_one_folder_holds_both_parts_and_loads_without_pickle(trained):
    out, summary, cal = trained
    assert summary["timesteps"] >= 128 and np.isfinite(summary["diffusion_loss"])
    assert {p.name for p in out.iterdir()} >= {"policy.json", "policy.safetensors", REFINER_FILE}
    assert not list(out.glob("*.zip")) and not list(out.glob("*.pt"))
    meta = json.loads((out / "policy.json").read_text())
    assert meta["algo"] == "diffusion" and meta["diffusion"]["config"]["num_inference_steps"] == 5
    loaded = load_policy(out)
    assert isinstance(loaded.policy, LatentRefinerPolicy)
    assert set(summary["sim_by_budget"]["1.0"]) == {"diffusion", "uniform"}


def test_apply_allocates_with_a_diffusion_policy_within_budget_and_by_budget(trained):
    out, _, cal = trained
    loaded = load_policy(out)
    allocs = {r: allocate(loaded, cal.targets, cal.static, BudgetSpec(rank=r)) for r in (1.0, 4.0)}
    for a in allocs.values():
        assert a.metrics["budget/violation"] == 0.0 and a.metrics["budget/used_params"] > 0.9
    assert allocs[1.0].ranks != allocs[4.0].ranks
    with pytest.raises(PolicyLayoutError, match="--env.max_modules 40"):
        widen_policy(loaded.policy, 40)


def test_diffusion_config_flags_are_checked():
    with pytest.raises(ValueError, match="--algo must be"):
        TrainPolicyConfig(algo="ddpm")
    with pytest.raises(ValueError, match="--resume is not supported with --algo diffusion"):
        TrainPolicyConfig(algo="diffusion", resume=True)
