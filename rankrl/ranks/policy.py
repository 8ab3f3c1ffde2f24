"""A trained rank policy on disk and in use: the ``policy.zip`` + ``policy.json`` format, loading with a layout
check, widening to more modules, and the policy's allocation for any model under a :class:`BudgetSpec`.

Transfer: the set policy's weights do not depend on the number of rows, so a model with more adapted modules
than the policy's ``max_modules`` is handled by re-instantiating the policy with more rows and the same weights
(:func:`widen_policy`: the identical function on the real rows; no chunking, no error). A policy file from
another observation layout (feature columns, global features) is refused with :class:`PolicyLayoutError`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from rankrl.atomic import atomic_write
from rankrl.ranks.budgets import BudgetSpec

POLICY_FILE, POLICY_META = "policy.zip", "policy.json"


#: policy.json format tag and version (bump when the observation/action contract changes)
POLICY_FORMAT, LAYOUT_VERSION = "rankrl/ranks/lora-rank-policy", 1


# ------------------------------------------------------------------------------------------------- saving
def save_sb3(model: Any, path: Path) -> Path:
    """``model.save`` (SB3 zip) written atomically."""
    return atomic_write(path, model.save, ".zip")  # the .zip suffix stops SB3 from appending one


def save_json(data: Any, path: Path) -> Path:
    """``data`` as indented JSON, written atomically."""
    return atomic_write(path, lambda p: p.write_text(json.dumps(data, indent=1, default=str)), ".json")


def policy_meta(config: Any, timesteps_done: int = 0) -> dict[str, Any]:
    """The ``policy.json`` record of a :class:`~rankrl.ranks.train.TrainPolicyConfig` run: the observation layout
    the policy reads (checked by ``rankrl apply``), its action decoding (grid, ``r_max``), the budgets and channel it
    was trained under, and the training config."""
    from rankrl.ranks.env import GLOBAL_NAMES, LOSS_HIGH, ROW_HIGH
    from rankrl.ranks.features import FEATURE_NAMES

    env = config.env
    return {
        "format": POLICY_FORMAT,
        "layout_version": LAYOUT_VERSION,
        "observation": {"feature_names": list(FEATURE_NAMES), "global_names": list(GLOBAL_NAMES),
                        "n_features": len(FEATURE_NAMES), "n_globals": len(GLOBAL_NAMES),
                        "max_modules": env.max_modules, "row_high": ROW_HIGH, "loss_high": LOSS_HIGH},  # fmt: skip
        "action": {"rank_grid": list(env.grid), "r_max": env.run.r_max, "decode": "LoRARankEnv.decode_action"},
        "budgets": env.budget.to_meta(),
        "channel": {"snr_range_db": list(env.snr_range_db), "bandwidth_range_hz": list(env.bandwidth_range_hz),
                    "rayleigh": env.rayleigh},  # fmt: skip
        "env_config": {f.name: getattr(env, f.name) for f in fields(env) if f.name not in ("run", "budget")},
        "run_config": asdict(env.run),
        "trained_on": {"env": config.env_id, "model": env.run.model, "task": env.run.task},
        "timesteps": int(timesteps_done),
        "train_config": asdict(config),
    }


def save_policy(model: Any, out: str | os.PathLike, config: Any, timesteps_done: int) -> Path:
    """Write ``policy.zip`` (SB3) and ``policy.json`` (:func:`policy_meta`) into ``out``, atomically."""
    out = Path(out)
    save_sb3(model, out / POLICY_FILE)
    save_json(policy_meta(config, timesteps_done), out / POLICY_META)
    return out / POLICY_FILE


_FIX = ("retrain the policy with this rankrl (`rankrl train-policy --out DIR`, then --policy DIR), or apply it with "
        "the rankrl version that trained it")  # fmt: skip


class PolicyLayoutError(ValueError):
    """A policy file does not fit this rankrl's observation layout (or is not a rank policy at all)."""


@dataclass
class LoadedPolicy:
    """A trained rank policy: the SB3 policy network and its ``policy.json`` record."""

    policy: Any
    meta: dict[str, Any]
    path: Path


def load_policy(path: str | os.PathLike) -> LoadedPolicy:
    """Load ``policy.zip`` + ``policy.json`` (a directory, or the path of either file) on CPU.

    Raises:
        PolicyLayoutError: missing or foreign ``policy.json``, or another observation layout.
    """
    from stable_baselines3 import PPO

    p = Path(path)
    folder = p if p.is_dir() else p.parent
    meta_path, zip_path = folder / POLICY_META, folder / POLICY_FILE
    if not zip_path.exists() or not meta_path.exists():
        raise PolicyLayoutError(f"--policy {path}: expected {POLICY_FILE} and {POLICY_META} in {folder}; "
                                "train one with `rankrl train-policy --out DIR`")  # fmt: skip
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != POLICY_FORMAT:
        raise PolicyLayoutError(f"{meta_path} is not a LoRA rank policy (format {meta.get('format')!r}, expected "
                                f"{POLICY_FORMAT!r}); {_FIX}")  # fmt: skip
    policy = PPO.load(zip_path, device="cpu").policy
    policy.set_training_mode(False)
    check_layout(meta, policy, meta_path)
    return LoadedPolicy(policy, meta, folder)


def check_layout(meta: Mapping[str, Any], policy: Any = None, where: Any = "policy.json") -> None:
    """Refuse a policy whose observation columns or global features differ from what this rankrl builds.

    Raises:
        PolicyLayoutError: naming what differs and the fix.
    """
    from rankrl.ranks.env import GLOBAL_NAMES
    from rankrl.ranks.features import FEATURE_NAMES

    obs = meta.get("observation", {})
    problems = []
    if list(obs.get("feature_names", [])) != list(FEATURE_NAMES):
        theirs, mine = list(obs.get("feature_names", [])), list(FEATURE_NAMES)
        problems.append(f"feature rows of {len(theirs)} columns (not here: {sorted(set(theirs) - set(mine))}, new "
                        f"here: {sorted(set(mine) - set(theirs))}) but this rankrl builds {len(mine)}")  # fmt: skip
    if list(obs.get("global_names", [])) != list(GLOBAL_NAMES):
        problems.append(f"{len(obs.get('global_names', []))} global features {obs.get('global_names')} but this "
                        f"rankrl builds {len(GLOBAL_NAMES)} {list(GLOBAL_NAMES)}")  # fmt: skip
    if policy is not None and not problems:
        space = policy.observation_space
        if space["rows"].shape[1] != len(FEATURE_NAMES) or space["globals"].shape[0] != len(GLOBAL_NAMES):
            problems.append(f"the network reads rows of {space['rows'].shape[1]} and {space['globals'].shape[0]} "
                            "globals, not what policy.json says")  # fmt: skip
    if problems:
        raise PolicyLayoutError(f"{where}: the policy was trained on another observation layout: "
                                f"{'; '.join(problems)}. Fix: {_FIX}")  # fmt: skip


def widen_policy(policy: Any, rows: int) -> Any:
    """The same set policy (same weights) for observations of ``rows`` module rows (no-op if it has as many).

    Every weight of :class:`~rankrl.set_policy.SetActorCriticPolicy` acts per row or on masked means, so
    the wider copy computes exactly the same actions on the real rows."""
    from gymnasium import spaces

    have = policy.observation_space["rows"].shape[0]
    if rows <= have:
        return policy
    old = policy.observation_space
    n_feat, high = old["rows"].shape[1], float(old["rows"].high.flat[0])
    obs_space = spaces.Dict({"rows": spaces.Box(0.0, high, (rows, n_feat), dtype=np.float32),
                             "mask": spaces.Box(0.0, 1.0, (rows,), dtype=np.float32), "globals": old["globals"]})
    params = policy._get_constructor_parameters()  # what SB3 itself rebuilds a saved policy from
    params.pop("observation_space"), params.pop("action_space")
    wide = type(policy)(obs_space, spaces.Box(-1.0, 1.0, (rows,), dtype=np.float32), **params)
    wide.load_state_dict(policy.state_dict())
    wide.set_training_mode(False)
    return wide


@dataclass
class Allocation:
    """A policy's allocation for one model and budget.

    Attributes:
        ranks: projected rank per module (target order), what the env would train.
        desired: the decoded action before projection.
        budget: the :class:`~rankrl.ranks.budgets.Budget` projected onto.
        metrics: ``cost/*`` and ``budget/*`` of ``ranks``.
        uniform: uniform LoRA at the same budget (for comparison).
        targets: the modules.
        channel: the round's ``snr_db`` and ``bandwidth_hz`` the decision saw.
    """

    ranks: dict[str, int]
    desired: dict[str, int]
    budget: Any
    metrics: dict[str, float]
    uniform: dict[str, int]
    targets: tuple = field(default=())
    channel: dict[str, float] = field(default_factory=dict)


def allocate(loaded: LoadedPolicy, targets: tuple, static: np.ndarray, budget: BudgetSpec, *,
             snr_db: float | None = None, bandwidth_hz: float | None = None) -> Allocation:  # fmt: skip
    """The policy's first-decision allocation for a model (its feature rows ``static``) under ``budget`` (None
    caps are uncapped; see :meth:`BudgetSpec.merged` to start from the policy's own). The channel defaults to
    the middle of the policy's training ranges."""
    from rankrl.ranks.baselines import uniform
    from rankrl.ranks.budgets import budget_metrics
    from rankrl.ranks.costs import allocation_cost
    from rankrl.ranks.env import LoRARankConfig, LoRARankEnv
    from rankrl.ranks.finetune import FineTuneConfig
    from rankrl.ranks.sim import SimCalibration

    meta = loaded.meta
    env_kw = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["env_config"].items()}
    env_kw["max_modules"] = max(int(env_kw["max_modules"]), len(targets))
    run = FineTuneConfig(**meta["run_config"])
    cfg = LoRARankConfig(run=run, budget=budget, **env_kw)
    # features-only calibration: the env needs rows to observe, never its (unused) learning curve
    cal = SimCalibration(targets, static, run.r_max, loss0=1.0, loss_inf=1.0, rate0=0.0, rate1=0.0,
                         sensitivity=np.ones(len(targets)), run_steps=run.steps)  # fmt: skip
    env = LoRARankEnv("sim", config=cfg, calibration=cal)
    env.reset(seed=0)
    channel = env.set_channel(snr_db, bandwidth_hz)  # the round's channel as given, not drawn
    policy = widen_policy(loaded.policy, cfg.max_modules)
    action, _ = policy.predict(env.observation(), deterministic=True)
    desired = env.decode_action(action)
    ranks = env.project(desired)
    budget = env.round_budget()
    cost = allocation_cost(env.targets, ranks, precision_bits=run.precision_bits)
    metrics = {**cost.as_metrics(), **budget_metrics(env.targets, ranks, budget)}
    same = uniform(env.targets, budget, env.grid, r_max=run.r_max)
    return Allocation(ranks, desired, budget, metrics, same, tuple(env.targets), channel)
