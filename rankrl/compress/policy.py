"""The learned inference-rank policy: SB3 PPO with the shared set policy on the live ``AttentionRank`` env, saved
as safetensors + JSON (nothing that runs code when loaded), applied to any model with the same feature rows.

Each PPO step is one real decision (factorize, score held-out batches), so training learns from live outcomes
directly; the budget is drawn per episode and observed, so one policy serves every budget.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rankrl.compress.env import GLOBAL_NAMES, ROW_NAMES, AttentionRankConfig

__all__ = ["POLICY_FORMAT", "CompressPolicyConfig", "LoadedCompressPolicy", "load_compress_policy",
           "policy_ranks", "train_compress_policy"]  # fmt: skip

POLICY_FORMAT = "rankrl/compress/attention-rank-policy"
POLICY_WEIGHTS, POLICY_META = "policy.safetensors", "policy.json"


@dataclass(frozen=True)
class CompressPolicyConfig:
    """Train an inference-rank policy (PPO, one head shared by every module) on the live AttentionRank env."""

    env: AttentionRankConfig = field(default_factory=AttentionRankConfig)
    """the model, projections, budget range and quality measure (``--env.model``, ``--env.budget_range``, ...)"""
    timesteps: int = 256
    """PPO env steps (each one a real factorize-and-score decision)"""
    n_steps: int = 32
    """PPO rollout length between updates"""
    ppo_batch_size: int = 32
    """PPO minibatch size"""
    n_epochs: int = 8
    """PPO epochs per update"""
    ppo_lr: float = 1e-3
    """PPO Adam learning rate"""
    hidden: int = 64
    """width of the per-module encoder"""
    seed: int = 0
    """PPO and budget-draw seed"""
    out: str = "runs/compress-policy"
    """output directory: policy.safetensors + policy.json, metrics.jsonl"""
    wandb: bool = True
    """log to W&B (offline unless configured)"""

    def __post_init__(self) -> None:
        for name in ("timesteps", "n_steps", "ppo_batch_size", "n_epochs", "hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if not self.ppo_lr > 0:
            raise ValueError(f"--ppo_lr must be > 0, got {self.ppo_lr}")


@dataclass
class LoadedCompressPolicy:
    """A trained policy network and its ``policy.json`` record."""

    policy: Any
    meta: dict[str, Any]


def make_ppo(env: Any, c: CompressPolicyConfig) -> Any:
    """An untrained PPO with the set policy on ``env`` (what :func:`train_compress_policy` starts from)."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    from rankrl.set_policy import SetActorCriticPolicy

    vec = DummyVecEnv([lambda: env])
    vec.seed(c.seed)
    return PPO(SetActorCriticPolicy, vec, n_steps=c.n_steps, batch_size=min(c.ppo_batch_size, c.n_steps),
               n_epochs=c.n_epochs, learning_rate=c.ppo_lr, gamma=1.0, gae_lambda=1.0, ent_coef=0.0, seed=c.seed,
               device="cpu", verbose=0, policy_kwargs=dict(hidden=c.hidden, log_std_init=-1.0))  # fmt: skip


def policy_ranks(policy: Any, env: Any, budget: float) -> dict[str, int]:
    """The policy's deterministic ranks for ``env``'s model at ``budget`` (a fraction of the dense FLOPs)."""
    obs, _ = env.reset(options={"budget": budget})
    action, _ = policy.predict(obs, deterministic=True)
    return env.decode_action(action)


def train_compress_policy(config: CompressPolicyConfig, env: Any = None) -> tuple[Any, list[dict[str, float]]]:
    """Train PPO on the live env; returns the policy and one row per PPO rollout (mean reward, budget, flops)."""
    import torch
    from stable_baselines3.common.callbacks import BaseCallback

    from rankrl.compress.env import AttentionRankEnv
    from rankrl.set_policy import policy_spec, save_policy_weights
    from rankrl.tracking import Tracker

    env = env or AttentionRankEnv(config.env)
    torch.manual_seed(config.seed)
    model = make_ppo(env, config)
    out = Path(config.out)
    tracker = Tracker(out, config=asdict(config) | {"job": "compress-policy"}, use_wandb=config.wandb)
    rows: list[dict[str, float]] = []

    class Log(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.infos: list[dict] = []

        def _on_step(self) -> bool:
            self.infos += [i for i in self.locals["infos"] if "reward" in i]
            return True

        def _on_rollout_end(self) -> None:
            if self.infos:
                row = {"rollout/ep_reward": float(np.mean([i["reward"] for i in self.infos])),
                       "budget/fraction": float(np.mean([i["budget"] for i in self.infos])),
                       "cost/flops_fraction": float(np.mean([i["flops_fraction"] for i in self.infos]))}  # fmt: skip
                rows.append(row)
                tracker.log(row, step=self.num_timesteps)
                self.infos = []

    t0 = time.time()
    try:
        model.learn(config.timesteps, callback=Log())
        spec = policy_spec(model.policy)
        save_policy_weights(model.policy, out / POLICY_WEIGHTS)
        meta = {"format": POLICY_FORMAT, "row_names": list(ROW_NAMES), "global_names": list(GLOBAL_NAMES),
                "network": spec, "trained_on": {"model": env.config.model, "kinds": list(env.config.kinds),
                                                "quality": env.quality, "budget_range": list(env.config.budget_range)},
                "timesteps": int(model.num_timesteps), "train_config": asdict(config),
                "seconds": time.time() - t0}  # fmt: skip
        from rankrl.atomic import atomic_write_json

        atomic_write_json(out / POLICY_META, meta)
    finally:
        tracker.finish()
    model.policy.set_training_mode(False)
    return model.policy, rows


def load_compress_policy(path: str | os.PathLike) -> LoadedCompressPolicy:
    """Build the policy from ``policy.json`` and load ``policy.safetensors`` (nothing is unpickled); a policy of
    another feature layout is refused with what differs."""
    from rankrl.set_policy import build_policy, load_policy_weights

    folder = Path(path)
    meta_path, weights = folder / POLICY_META, folder / POLICY_WEIGHTS
    if not (meta_path.is_file() and weights.is_file()):
        raise FileNotFoundError(f"--policy {path}: expected {POLICY_META} and {POLICY_WEIGHTS}; train one with "
                                "`rankrl compress train-policy --out DIR`")  # fmt: skip
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != POLICY_FORMAT:
        raise ValueError(f"{meta_path} is not an inference-rank policy (format {meta.get('format')!r})")
    if meta.get("row_names") != list(ROW_NAMES) or meta.get("global_names") != list(GLOBAL_NAMES):
        raise ValueError(f"{meta_path}: trained on another feature layout; retrain it with this rankrl")
    policy = load_policy_weights(build_policy(meta["network"]), weights)
    policy.set_training_mode(False)
    return LoadedCompressPolicy(policy, meta)
