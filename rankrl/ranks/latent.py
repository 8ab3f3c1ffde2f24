"""``rankrl train-policy --algo diffusion``: AirLLM's two-level rank policy on the LoRARank env. PPO acts in a coarse
latent (a Gaussian over ``diffusion.latent_dim`` numbers; PPO's log-probability covers only the latent), the DDIM
refiner (:mod:`rankrl.ranks.diffusion`) turns latent + state into every module's score, and after every PPO rollout
the refiner is refit off-policy on the replay buffer (reward-weighted), alternating.

One policy folder holds both parts, with nothing that runs code when loaded: ``policy.json`` (the usual layout record
plus ``algo: diffusion``, the coarse network's spaces and the refiner's config), ``policy.safetensors`` (the coarse
PPO network) and ``refiner.safetensors``. :class:`LatentRefinerPolicy` is what ``rankrl apply`` and ``rankrl
baselines`` get back from :func:`rankrl.ranks.policy.load_policy` for such a folder.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from rankrl.ranks.diffusion import RankDiffusion, ReplayBuffer
from rankrl.ranks.latent_policy import REFINER_FILE, LatentRefinerPolicy, coarse_spec
from rankrl.ranks.policy import POLICY_FILE, POLICY_META, policy_meta, save_json
from rankrl.ranks.train import TrainPolicyConfig, make_env

__all__ = ["LatentRefinerEnv", "train_diffusion_policy"]


class LatentRefinerEnv(gym.Wrapper):
    """The rank env seen by the coarse PPO: the action is the latent; the refiner makes it every module's score, the
    inner env steps on that, and (state, latent, scores, reward) goes to the replay buffer."""

    def __init__(self, env: gym.Env, refiner: RankDiffusion, buffer: ReplayBuffer, seed: int = 0) -> None:
        super().__init__(env)
        self.refiner, self.buffer, self._draw = refiner, buffer, seed
        self.action_space = spaces.Box(-1.0, 1.0, (refiner.config.latent_dim,), dtype=np.float32)
        self._obs: Any = None

    def reset(self, **kwargs: Any) -> tuple[Any, dict]:
        self._obs, info = self.env.reset(**kwargs)
        return self._obs, info

    def step(self, action: np.ndarray) -> tuple[Any, float, bool, bool, dict]:
        latent = np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)
        self._draw += 1
        scores = self.refiner.predict_action(self._obs, latent, seed=self._draw)
        obs, reward, terminated, truncated, info = self.env.step(scores.astype(np.float32))
        self.buffer.add(self._obs, latent, scores, float(reward))
        self._obs = obs
        return obs, reward, terminated, truncated, info


def train_diffusion_policy(config: TrainPolicyConfig, *, calibration: Any = None) -> dict[str, Any]:
    """PPO on the coarse latent with the DDIM in the loop, refits between rollouts; writes the policy folder and
    returns a summary (sim evaluation by budget next to uniform, both parts' last losses)."""
    import torch
    from safetensors.torch import save_file
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    from rankrl.atomic import atomic_write
    from rankrl.ranks.episodes import uniform_allocator
    from rankrl.ranks.sim import calibrate
    from rankrl.ranks.train import sim_budget_table
    from rankrl.set_policy import save_policy_weights
    from rankrl.tracking import Tracker

    out = Path(config.out)
    if config.backend == "sim" and calibration is None:
        calibration = calibrate(config.env, config.probes, config.probe_steps or config.run.steps,
                                probe_evals=config.probe_evals)  # fmt: skip
    torch.manual_seed(config.run.seed)
    base = make_env(config, calibration=calibration)
    obs_space = base.observation_space
    n_rows, n_features = obs_space["rows"].shape
    n_globals = obs_space["globals"].shape[0]
    dc = config.diffusion
    refiner = RankDiffusion.with_ddim(dc, n_features, n_globals)
    buffer = ReplayBuffer(dc.buffer_size, n_rows, n_features, n_globals, dc.latent_dim)
    env = LatentRefinerEnv(base, refiner, buffer, seed=config.run.seed)
    vec = DummyVecEnv([lambda: env])
    vec.seed(config.run.seed)
    model = PPO("MultiInputPolicy", vec, n_steps=config.n_steps, batch_size=min(config.ppo_batch_size, config.n_steps),
                n_epochs=config.n_epochs, learning_rate=config.ppo_lr, gamma=0.95, gae_lambda=0.95, clip_range=0.2,
                ent_coef=config.ent_coef, seed=config.run.seed, device="cpu", verbose=0)  # fmt: skip
    tracker = Tracker(out, config=asdict(config) | {"job": "train-policy-diffusion"}, use_wandb=config.wandb)
    t0, losses = time.time(), [float("nan")]
    try:
        while model.num_timesteps < config.timesteps:
            model.learn(config.n_steps, reset_num_timesteps=False, progress_bar=False)
            rewards = buffer.data["reward"][: len(buffer)].numpy()
            if config.refit_steps:
                losses = refiner.fit(buffer, config.refit_steps, seed=int(model.num_timesteps))
            tracker.log({"rollout/ep_reward": float(np.mean(rewards[-config.n_steps:])),
                         "train/ppo_loss": float(model.logger.name_to_value.get("train/loss", float("nan"))),
                         "train/diffusion_loss": float(np.mean(losses)), "train/guidance_scale": dc.guidance_scale},
                        step=int(model.num_timesteps))  # fmt: skip
        policy = LatentRefinerPolicy(model.policy, refiner)
        policy.set_training_mode(False)
        meta = policy_meta(config, int(model.num_timesteps))
        meta["algo"] = "diffusion"
        meta["diffusion"] = {"config": asdict(dc), "coarse": coarse_spec(model.policy), "n_features": n_features,
                             "n_globals": n_globals}  # fmt: skip
        out.mkdir(parents=True, exist_ok=True)
        save_policy_weights(model.policy, out / POLICY_FILE)
        state = refiner.state_dict()
        atomic_write(out / REFINER_FILE, lambda p: save_file(state, str(p)), ".safetensors")
        save_json(meta, out / POLICY_META)

        def act(obs: Any, _env: Any) -> np.ndarray:
            return policy.predict(obs)[0]

        table = sim_budget_table(config, calibration, {"diffusion": act, "uniform": uniform_allocator}) \
            if config.backend == "sim" else {}  # fmt: skip
        summary = {"timesteps": int(model.num_timesteps), "seconds": time.time() - t0, "sim_by_budget": table,
                   "diffusion_loss": float(np.mean(losses))}  # fmt: skip
        tracker.summary({"timesteps": summary["timesteps"]})
        (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
        for r, row in table.items():
            print(f"  mean rank {r}: " + ", ".join(f"{k} reward {v['reward']:.4f} acc {v['accuracy']:.3f}"
                                                   for k, v in row.items()))  # fmt: skip
        print(f"diffusion policy ({summary['timesteps']} steps, {summary['seconds']:.0f}s) -> {out}")
        return summary
    finally:
        tracker.finish()
