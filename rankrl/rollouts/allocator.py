"""The learned rollout allocator: train SB3 PPO with the set policy on RolloutBudgetEnv, save, load, apply.

:func:`train_allocator` trains on one or several env configurations at once (one ``DummyVecEnv`` member per
config, e.g. every difficulty mix x history length, so one policy covers them all). :class:`Allocator` turns
a trained policy into the callable a GRPO trainer needs: prompt history in, integer allocation out, through
the same observation builder and score -> allocation mapping as the env.

Files (:func:`save_allocator`): ``policy.safetensors`` (weights), ``policy.json`` (architecture, spaces,
hyper-parameters) and ``env_config.json``; :func:`load_policy` builds the policy from the JSON and loads the weights,
so opening an allocator someone sent you runs no code. Old pickled ``model.zip`` directories are refused;
:func:`convert_allocator` (``rankrl rollouts convert-allocator --allocator DIR --trust``) rewrites a trusted one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import DummyVecEnv

from rankrl.atomic import atomic_write_json
from rankrl.rollouts.config import RolloutBudgetConfig
from rankrl.rollouts.env import RolloutBudgetEnv, build_observation, scores_to_allocation
from rankrl.rollouts.history import RolloutHistory
from rankrl.set_policy import (
    SetActorCriticPolicy,
    build_policy,
    load_policy_weights,
    policy_spec,
    save_policy_weights,
)

__all__ = [
    "Allocator",
    "TrainerAllocator",
    "convert_allocator",
    "load_allocator",
    "load_policy",
    "save_allocator",
    "train_allocator",
    "trainer_allocator",
]

#: config fields that shape the policy's inputs/outputs: they must agree across training envs
_POLICY_FIELDS = ("max_prompts", "n_min", "n_max", "temperature", "prior_alpha", "prior_beta")
#: an allocator directory: weights (safetensors), architecture + spaces + hyper-parameters (JSON), env config (JSON)
WEIGHTS_FILE, POLICY_FILE, CONFIG_FILE = "policy.safetensors", "policy.json", "env_config.json"
#: the old pickled SB3 zip, refused when loading (see :func:`convert_allocator`)
LEGACY_MODEL_FILE = "model.zip"


def _env_config(kwargs: Mapping[str, Any]) -> RolloutBudgetConfig:
    return RolloutBudgetEnv(**kwargs).config


def train_allocator(
    env_kwargs: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    total_timesteps: int,
    seed: int = 0,
    *,
    n_steps: int = 64,
    batch_size: int = 256,
    n_epochs: int = 5,
    learning_rate: float = 1e-3,
    gamma: float = 0.8,
    ent_coef: float = 0.0,
    policy_kwargs: Mapping[str, Any] | None = None,
    ppo_kwargs: Mapping[str, Any] | None = None,
    callback: BaseCallback | None = None,
    torch_threads: int | None = 1,
    verbose: int = 0,
) -> PPO:
    """Train a PPO allocator with :class:`~rankrl.set_policy.SetActorCriticPolicy`.

    Args:
        env_kwargs: ``RolloutBudgetEnv`` keyword arguments, or a list of them (one vec-env member each). Their
            ``max_prompts`` (rows), bounds, temperature and prior must agree.
        total_timesteps: Env steps (GRPO rounds) summed over members.
        seed: Seed of PPO, torch and the envs.
        n_steps: Rollout length per member between updates (small: live env steps are real training).
        batch_size: PPO minibatch size (capped at the rollout buffer, ``n_steps`` x members).
        n_epochs: PPO epochs per update.
        learning_rate: Adam learning rate.
        gamma: Discount; allocations affect later rounds only through history and learning, so it is short.
        ent_coef: Entropy bonus.
        policy_kwargs: Passed to the policy (``hidden``, ``context``, ``net_arch``, ``log_std_init``, ...).
        ppo_kwargs: Any other ``PPO`` arguments.
        callback: SB3 callback (budgets, logging).
        torch_threads: ``torch.set_num_threads`` for training (None leaves it).
        verbose: SB3 verbosity.

    Returns:
        The trained ``PPO`` model.
    """
    members = [dict(env_kwargs)] if isinstance(env_kwargs, Mapping) else [dict(k) for k in env_kwargs]
    if not members:
        raise ValueError("env_kwargs must name at least one env configuration")
    configs = [_env_config(k) for k in members]
    for name in _POLICY_FIELDS:
        values = {getattr(c, name) if name != "max_prompts" else c.rows for c in configs}
        if len(values) > 1:
            raise ValueError(f"training envs disagree on {name} ({sorted(values)}); the policy needs one value")
    if torch_threads is not None:
        th.set_num_threads(torch_threads)
    vec = DummyVecEnv([lambda k=k: RolloutBudgetEnv(**k) for k in members])
    vec.seed(seed)
    kwargs: dict[str, Any] = dict(
        n_steps=n_steps, batch_size=min(batch_size, n_steps * len(members)), n_epochs=n_epochs,
        learning_rate=learning_rate, gamma=gamma, gae_lambda=0.9, ent_coef=ent_coef, seed=seed, verbose=verbose,
        device="cpu", policy_kwargs=dict({"log_std_init": -1.0}, **(policy_kwargs or {})),
    )  # fmt: skip
    kwargs.update(ppo_kwargs or {})
    model = PPO(SetActorCriticPolicy, vec, **kwargs)
    model.learn(total_timesteps=total_timesteps, callback=callback)
    return model


def save_allocator(model: Any, directory: str | Path, env_kwargs: Mapping[str, Any]) -> Path:
    """Write a trained allocator to a directory: the policy weights as ``policy.safetensors``, and as JSON its
    network (:func:`~rankrl.set_policy.policy_spec`: architecture and spaces) with the PPO hyper-parameters
    (``policy.json``) and the env config it was trained for (``env_config.json``). Nothing in it runs code when
    loaded (no pickle); each file is written atomically, weights first.

    Args:
        model: the trained ``PPO`` (or its ``SetActorCriticPolicy``).
        directory: the allocator directory (created).
        env_kwargs: the ``RolloutBudgetEnv`` keyword arguments the policy was trained for.
    """
    out = Path(directory)
    policy = getattr(model, "policy", model)
    save_policy_weights(policy, out / WEIGHTS_FILE)
    meta = {"weights": WEIGHTS_FILE, "network": policy_spec(policy), "hyperparameters": _hyperparameters(model)}
    atomic_write_json(out / POLICY_FILE, meta)
    cfg = _env_config(env_kwargs)
    atomic_write_json(out / CONFIG_FILE, {f.name: getattr(cfg, f.name) for f in fields(cfg)})
    return out


def _hyperparameters(model: Any) -> dict[str, Any]:
    """The PPO settings a policy was trained with, for the record (numbers only; schedules as their start value)."""
    out: dict[str, Any] = {}
    for name in ("learning_rate", "n_steps", "batch_size", "n_epochs", "gamma", "gae_lambda", "clip_range",
                 "ent_coef", "vf_coef", "max_grad_norm", "seed", "num_timesteps"):  # fmt: skip
        value = getattr(model, name, None)
        value = value(1.0) if callable(value) else value
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = value
    return out


def _refuse_pickled(path: Path) -> None:
    if (path / LEGACY_MODEL_FILE).exists() and not (path / WEIGHTS_FILE).exists():
        raise ValueError(
            f"{path} holds an old-format allocator ({LEGACY_MODEL_FILE}, an SB3 zip whose pickled entries run code "
            f"when loaded), which rankrl no longer opens. If you trust where it came from, convert it once: "
            f"`rankrl rollouts convert-allocator --allocator {path} --trust` (writes {WEIGHTS_FILE} + {POLICY_FILE}); "
            "else retrain it with `rankrl rollouts train-allocator`"
        )


def load_policy(directory: str | Path) -> SetActorCriticPolicy:
    """The :class:`~rankrl.set_policy.SetActorCriticPolicy` of an allocator directory, built from ``policy.json``'s
    network record (:func:`~rankrl.set_policy.build_policy`, allow-listed classes only) with the weights of
    ``policy.safetensors`` (CPU, eval mode). Never unpickles anything."""
    path = Path(directory)
    _refuse_pickled(path)
    for name in (WEIGHTS_FILE, POLICY_FILE):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path}: no {name}; not an allocator directory written by save_allocator")
    meta = json.loads((path / POLICY_FILE).read_text())
    if "network" not in meta:
        raise ValueError(f"{path / POLICY_FILE} has no 'network' record; retrain: `rankrl rollouts train-allocator`")
    policy = load_policy_weights(build_policy(meta["network"]), path / WEIGHTS_FILE)
    policy.set_training_mode(False)
    return policy


def load_allocator(directory: str | Path, deterministic: bool = True) -> Allocator:
    """Load what :func:`save_allocator` wrote as an :class:`Allocator` (CPU); an old pickled ``model.zip`` is
    refused with the command that converts it."""
    path = Path(directory)
    _refuse_pickled(path)
    config = RolloutBudgetConfig(**json.loads((path / CONFIG_FILE).read_text()))
    policy = load_policy(path)
    rows = config.rows
    if policy.action_space.shape != (rows,):
        raise ValueError(f"{path}: the policy acts on {policy.action_space.shape} rows but {CONFIG_FILE} says {rows}")
    return Allocator(policy, config, deterministic=deterministic)


def convert_allocator(directory: str | Path, *, trust: bool = False) -> Path:
    """Rewrite an old pickled allocator (``model.zip`` + ``env_config.json``) as safetensors + JSON, in place.

    Loading ``model.zip`` unpickles it, which runs whatever code it carries: only do this for a file you trust
    (``trust=True``). Afterwards the directory loads without unpickling; ``model.zip`` is left as it was.
    """
    path = Path(directory)
    if not (path / LEGACY_MODEL_FILE).is_file():
        raise FileNotFoundError(f"{path}: no {LEGACY_MODEL_FILE} to convert")
    if not trust:
        raise ValueError(f"converting {path / LEGACY_MODEL_FILE} unpickles it, which runs any code it carries; "
                         "pass --trust only if you trust where the file came from")  # fmt: skip
    from stable_baselines3 import PPO

    model = PPO.load(path / LEGACY_MODEL_FILE, device="cpu")  # trusted by the caller (trust=True)
    env_kwargs = json.loads((path / CONFIG_FILE).read_text())
    return save_allocator(model, path, env_kwargs)


class Allocator:
    """A trained policy as a rollout allocator: prompt history -> integer allocation.

    Args:
        model: Trained ``PPO`` (or anything with SB3's ``predict(obs, deterministic=...)``).
        config: The env config it was trained with (rows, bounds, temperature, prior, uniform group size).
        deterministic: Use the policy's mean scores (True) or sample.

    Example (a trainer's loop)::

        allocator = load_allocator("runs/allocator")
        history = RolloutHistory(len(dataset))
        alloc = allocator(history, batch_ids, budget=16 * 8, round_idx=step, horizon=total_steps)
        history.record(batch_ids, rewards_per_prompt, step)
    """

    def __init__(self, model: Any, config: RolloutBudgetConfig, deterministic: bool = True) -> None:
        self.model, self.config, self.deterministic = model, config, deterministic

    def scores(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Per-row scores in [-1, 1] for one observation."""
        action, _ = self.model.predict(dict(obs), deterministic=self.deterministic)
        return np.clip(np.asarray(action, dtype=np.float64).reshape(-1), -1.0, 1.0)

    def __call__(
        self,
        history: RolloutHistory,
        prompt_ids: np.ndarray,
        *,
        budget: int | None = None,
        round_idx: int = 0,
        horizon: int | None = None,
    ) -> np.ndarray:
        """Allocation (int64, sums to ``budget``, within [n_min, n_max]) for the prompts ``prompt_ids``."""
        cfg = self.config
        ids = np.asarray(prompt_ids)
        budget = cfg.rollouts_per_prompt * ids.size if budget is None else int(budget)
        obs = build_observation(
            history, ids, round_idx=round_idx, horizon=horizon or cfg.rounds, budget=budget, config=cfg
        )
        return scores_to_allocation(self.scores(obs)[: ids.size], budget, cfg.n_min, cfg.n_max, cfg.temperature)

    def allocate_env(self, env: RolloutBudgetEnv) -> np.ndarray:
        """Allocation for a :class:`RolloutBudgetEnv`'s current batch (benchmarks)."""
        env = env.unwrapped
        return self(env.history, env.batch, budget=env.config.budget, round_idx=env.round, horizon=env.config.rounds)


class TrainerAllocator:
    """A learned :class:`Allocator` as the ``(keys, history, budget) -> counts`` callable of
    :class:`~rankrl.rollouts.grpo.RolloutGRPOTrainer`.

    The trainer records outcomes by prompt key without a round clock; the policy's features also need when each
    prompt was last seen. This adapter keeps its own :class:`RolloutHistory` (rows by key, ``ids``) in step with the
    trainer's: each call it folds in the outcomes that arrived since the previous call, stamped as seen in the
    previous round, so the policy sees exactly the features it was trained on.
    """

    def __init__(self, allocator: Allocator, horizon: int | None = None) -> None:
        self.allocator, self.horizon = allocator, horizon
        self.seen: dict[str, int] = {}
        self.history = RolloutHistory()
        self.round = 0

    @property
    def ids(self) -> dict:
        """Row of each prompt key in :attr:`history`'s arrays."""
        return self.history.ids

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs to continue exactly: own history, folded-in totals, round clock (JSON-able)."""
        return {"seen": dict(self.seen), "round": self.round, "history": self.history.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (a resumed run)."""
        self.seen = {str(k): int(v) for k, v in state["seen"].items()}
        self.round = int(state["round"])
        self.history = RolloutHistory.from_state_dict(state["history"])

    def __call__(self, keys: list[str], history: RolloutHistory, budget: int) -> np.ndarray:
        ids = self.history.rows(keys)
        for key in history.keys():
            fresh = history.total(key) - self.seen.get(key, 0)
            new = history.outcomes(key)[-fresh:] if fresh > 0 else []
            if new:
                self.history.update([key] * len(new), new, round_idx=self.round - 1)
                self.seen[key] = history.total(key)
        counts = self.allocator(self.history, ids, budget=budget, round_idx=self.round, horizon=self.horizon)
        self.round += 1
        return counts


def trainer_allocator(directory: str | Path, horizon: int | None = None) -> TrainerAllocator:
    """Load a trained allocator (``save_allocator``) as a ``RolloutGRPOTrainer`` allocator."""
    path = Path(directory)
    _refuse_pickled(path)
    if not (path / WEIGHTS_FILE).exists():
        raise FileNotFoundError(
            f"--allocator {directory!r}: not 'uniform', 'knapsack' or a trained allocator directory with {WEIGHTS_FILE}"
        )
    return TrainerAllocator(load_allocator(path), horizon=horizon)
