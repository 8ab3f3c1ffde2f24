"""`train-policy --algo diffusion`: PPO on a coarse latent with the DDIM refiner in the loop; one pickle-free policy
folder that `rankrl apply`'s loader and allocation accept; the refiner is refit from what PPO's rollouts earned."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from rankrl.ranks.budgets import BudgetSpec
from rankrl.ranks.diffusion import DiffusionConfig
from rankrl.ranks.env import LoRARankConfig
from rankrl.ranks.finetune import FineTuneConfig
from rankrl.ranks.latent import CHECKPOINT_BUFFER, CHECKPOINT_REFINER, train_diffusion_policy
from rankrl.ranks.latent_policy import REFINER_FILE, LatentRefinerPolicy
from rankrl.ranks.policy import PolicyLayoutError, allocate, load_policy, widen_policy
from rankrl.ranks.sim import SimCalibration
from rankrl.ranks.train import TrainPolicyConfig
from rankrl.tracking import read_metrics


def _config(out, **kw) -> TrainPolicyConfig:
    run = FineTuneConfig(model="tiny-bert", steps=40, batch_size=8, max_eval=16, max_train=128, threads=1)
    env = LoRARankConfig(run=run, decisions=1, max_modules=16, budget_rank_range=(0.5, 8.0), w_params=0.0, w_tx=0.0)
    refiner = DiffusionConfig(num_train_timesteps=100, num_inference_steps=5, hidden=32)
    return TrainPolicyConfig(env=env, **{"timesteps": 128, "n_steps": 64, "ppo_batch_size": 64, "n_epochs": 2,
                                         "out": str(out), "wandb": False, "progress": False, "algo": "diffusion",
                                         "refit_steps": 20, "diffusion": refiner, **kw})  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("diffusion") / "run"
    cal = SimCalibration.synthetic(r_max=8, run_steps=40)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RANKRL_CACHE", str(tmp_path_factory.mktemp("cache")))
        summary = train_diffusion_policy(_config(out), calibration=cal)
    return out, summary, cal


def test_one_folder_holds_both_parts_and_loads_without_pickle(trained):
    out, summary, cal = trained
    assert summary["timesteps"] >= 128 and np.isfinite(summary["diffusion_loss"])
    assert {p.name for p in out.iterdir()} >= {"policy.json", "policy.safetensors", REFINER_FILE}
    assert not list(out.glob("*.zip"))
    # the only .pt files are the checkpoint's Adam states, as for PPO: tensors and numbers read with weights_only
    assert {p.name for p in out.glob("*.pt")} == {"checkpoint_optimizer.pt", "checkpoint_refiner_optimizer.pt"}
    assert all(torch.load(p, weights_only=True)["state"] for p in out.glob("*.pt"))
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
    assert TrainPolicyConfig(algo="diffusion", resume=True).resume  # --resume works with --algo diffusion too


def test_both_parts_losses_guidance_and_ranks_are_logged_every_rollout(trained):
    out, _, cal = trained
    rows = [r for r in read_metrics(out) if "train/diffusion_loss" in r]
    assert [r["step"] for r in rows] == [64, 128]
    for r in rows:
        assert np.isfinite(r["train/diffusion_loss"]) and r["train/guidance_scale"] == 1.5
        assert np.isfinite(r["train/ppo_loss"]) and "train/value_loss" in r and "train/policy_gradient_loss" in r
        assert r["rollout/episodes"] == 64 and "tx/lost_rounds" in r  # decisions=1: every step ends an episode
        ranks = [r[f"rank/layer_{i}"] for i in range(len(cal.targets))]
        assert all(0 <= x <= 8 for x in ranks) and max(ranks) > 0
    assert rows[1]["train/replay_size"] == 128
    assert (out / "rank_heatmap_training.png").stat().st_size > 0 and (out / "rank_heatmap.png").exists()


def test_resume_restores_refiner_and_buffer_and_continues_the_metrics(trained, tmp_path):
    src, _, cal = trained
    out = tmp_path / "run"
    shutil.copytree(src, out)
    saved_refiner, saved_buffer = load_file(str(out / CHECKPOINT_REFINER)), load_file(str(out / CHECKPOINT_BUFFER))
    state = json.loads((out / "checkpoint.json").read_text())
    assert state["timesteps_done"] == 128 and state["buffer"]["size"] == 128 and state["draws"] == 128
    with (out / "metrics.jsonl").open("a") as f:  # a run that died after its checkpoint had logged step 192
        f.write(json.dumps({"step": 192, "train/diffusion_loss": 0.0}) + "\n")
    # at the checkpoint's step: nothing is trained, so what it writes back is exactly what it loaded
    summary = train_diffusion_policy(_config(out, resume=True), calibration=cal)
    assert summary["timesteps"] == 128
    for name, saved in ((CHECKPOINT_REFINER, saved_refiner), ("refiner.safetensors", saved_refiner),
                        (CHECKPOINT_BUFFER, saved_buffer)):  # fmt: skip
        now = load_file(str(out / name))
        assert now.keys() == saved.keys() and all(torch.equal(now[k], saved[k]) for k in saved), name
    steps = [r["step"] for r in read_metrics(out) if "train/diffusion_loss" in r]
    assert steps == [64, 128]  # the step logged after the checkpoint was dropped
    summary = train_diffusion_policy(_config(out, resume=True, timesteps=256), calibration=cal)
    assert summary["timesteps"] == 256
    rows = [r for r in read_metrics(out) if "train/diffusion_loss" in r]
    assert [r["step"] for r in rows] == [64, 128, 192, 256]  # continued, no step twice
    assert rows[-1]["train/replay_size"] == 256  # the buffer kept its 128 entries and grew
    assert [r["train/n_updates"] for r in rows] == sorted(r["train/n_updates"] for r in rows)
    state = json.loads((out / "checkpoint.json").read_text())
    assert state["timesteps_done"] == 256 and state["draws"] == 256
    now = load_file(str(out / CHECKPOINT_REFINER))
    assert any(not torch.equal(now[k], saved_refiner[k]) for k in saved_refiner)  # refit went on from the loaded


def test_resume_refuses_a_missing_checkpoint_and_other_settings(trained, tmp_path):
    src, _, cal = trained
    with pytest.raises(SystemExit, match="no checkpoint"):
        train_diffusion_policy(_config(tmp_path / "empty", resume=True), calibration=cal)
    out = tmp_path / "run"
    shutil.copytree(src, out)
    with pytest.raises(SystemExit, match="refit_steps: checkpoint 20 vs now 5"):
        train_diffusion_policy(_config(out, resume=True, refit_steps=5), calibration=cal)
    (out / CHECKPOINT_BUFFER).unlink()
    with pytest.raises(SystemExit, match=CHECKPOINT_BUFFER):
        train_diffusion_policy(_config(out, resume=True), calibration=cal)


def test_an_interrupted_diffusion_run_exits_130_like_ppo(tmp_path, monkeypatch):
    """The CLI maps the diffusion trainer's ``interrupted`` summary to exit status 130 (as for PPO), 0 otherwise."""
    import rankrl.ranks.latent as latent
    from rankrl.cli import main

    for summary, status in (({"timesteps": 64, "interrupted": "SIGINT"}, 130), ({"timesteps": 128}, 0)):
        monkeypatch.setattr(latent, "train_diffusion_policy", lambda config, calibration=None, s=summary: s)
        assert main(["train-policy", "--algo", "diffusion", "--out", str(tmp_path / "run")]) == status


def test_advantage_weighting_refits_on_the_rollouts_returns(tmp_path):
    # two decisions per episode: a first decision's TD(lambda) return includes the second's reward, so returns differ
    # from rewards once the rollout has set them; the refit then weights by return - V(s) from PPO's critic
    from dataclasses import replace

    cfg = _config(tmp_path / "adv", timesteps=64)
    cfg = replace(cfg, env=replace(cfg.env, decisions=2), diffusion=replace(cfg.diffusion, weighting="advantage"))
    summary = train_diffusion_policy(cfg, calibration=SimCalibration.synthetic(r_max=8, run_steps=40))
    assert np.isfinite(summary["diffusion_loss"])
    buf = load_file(str(tmp_path / "adv" / CHECKPOINT_BUFFER))
    assert buf["ret"].shape == buf["reward"].shape == (64,)
    assert not torch.allclose(buf["ret"], buf["reward"])
    assert json.loads((tmp_path / "adv" / "policy.json").read_text())["diffusion"]["config"]["weighting"] == "advantage"


def test_linear_decoding_trains_saves_and_applies_with_one_latent_weight_per_row_feature(tmp_path):
    from dataclasses import replace

    from rankrl.ranks.features import FEATURE_NAMES

    cfg = _config(tmp_path / "lin", timesteps=64)
    cfg = replace(cfg, diffusion=replace(cfg.diffusion, decoding="linear", init_noise=0.0, explore_noise=0.1,
                                         weighting="advantage"))  # fmt: skip
    cal = SimCalibration.synthetic(r_max=8, run_steps=40)
    train_diffusion_policy(cfg, calibration=cal)
    meta = json.loads((tmp_path / "lin" / "policy.json").read_text())
    assert meta["diffusion"]["coarse"]["action_space"]["shape"] == [len(FEATURE_NAMES)]
    assert load_file(str(tmp_path / "lin" / CHECKPOINT_BUFFER))["latent"].shape == (64, len(FEATURE_NAMES))
    loaded = load_policy(tmp_path / "lin")
    assert isinstance(loaded.policy, LatentRefinerPolicy) and loaded.policy.refiner.latent_dim == len(FEATURE_NAMES)
    allocs = {r: allocate(loaded, cal.targets, cal.static, BudgetSpec(rank=r)) for r in (1.0, 4.0)}
    for a in allocs.values():
        assert a.metrics["budget/violation"] == 0.0 and a.metrics["budget/used_params"] > 0.9
    assert sum(allocs[1.0].ranks.values()) < sum(allocs[4.0].ranks.values())  # the rounding spends each cap ...
    lo, hi = (allocs[r].shares for r in (1.0, 4.0))  # ... and the policy's own shares move with the budget it sees
    assert max(abs(lo[n] - hi[n]) for n in lo) > 1e-6


def test_with_the_spend_entry_the_coarse_ppo_also_chooses_how_much_of_the_budget_to_spend(tmp_path):
    from dataclasses import replace

    from rankrl.ranks.features import FEATURE_NAMES

    cfg = _config(tmp_path / "spend", timesteps=64)
    cfg = replace(cfg, env=replace(cfg.env, spend_action=True, w_params=0.3),
                  diffusion=replace(cfg.diffusion, decoding="linear", init_noise=0.0, coarse_input="set"))  # fmt: skip
    cal = SimCalibration.synthetic(r_max=8, run_steps=40)
    train_diffusion_policy(cfg, calibration=cal)
    meta = json.loads((tmp_path / "spend" / "policy.json").read_text())
    n = len(FEATURE_NAMES)
    assert meta["diffusion"]["coarse"]["action_space"]["shape"] == [n + 1]  # the latent, then the spend
    assert load_file(str(tmp_path / "spend" / CHECKPOINT_BUFFER))["latent"].shape == (64, n)  # the refiner's part
    loaded = load_policy(tmp_path / "spend")
    allocs = {r: allocate(loaded, cal.targets, cal.static, BudgetSpec(rank=r)) for r in (1.0, 4.0)}
    for a in allocs.values():
        assert 1 / 16 <= a.spend <= 1.0 and a.metrics["budget/violation"] == 0.0
        assert a.metrics["budget/used_params"] <= a.spend + 1e-9  # never more than the policy asked for
    assert abs(allocs[1.0].spend - allocs[4.0].spend) > 1e-6  # PPO's spend reads the budget it sees
    # --diffusion.coarse_input set: the coarse PPO reads pooled rows, so a model with more modules than it trained on
    # (24 > max_modules 16) gets the same weights, where a flattened-input policy is refused
    assert meta["diffusion"]["coarse"]["input"] == "set"
    big = SimCalibration.synthetic(num_layers=4, r_max=8, run_steps=40)
    wide = allocate(loaded, big.targets, big.static, BudgetSpec(rank=2.0))
    assert len(wide.ranks) == 24 and wide.metrics["budget/violation"] == 0.0 and 1 / 16 <= wide.spend <= 1.0
    obs = {"rows": np.zeros((16, n), np.float32), "mask": np.ones(16, np.float32),
           "globals": np.full(6, 0.5, np.float32)}  # fmt: skip
    obs["rows"][:, 0] = np.arange(16) % 3
    same = loaded.policy.predict(obs)[0]
    pad = {"rows": np.concatenate([obs["rows"], np.zeros((8, n), np.float32)]), "mask": np.r_[obs["mask"], np.zeros(8)],
           "globals": obs["globals"]}  # fmt: skip
    widened = widen_policy(loaded.policy, 24).predict(pad)[0]
    assert np.allclose(widened[:16], same[:16], atol=1e-5) and widened[-1] == pytest.approx(same[-1], abs=1e-5)
