"""A trained rank policy on disk and in use: the ``policy.safetensors`` + ``policy.json`` format, loading with a
layout check, widening to more modules, and the policy's allocation for any model under a :class:`BudgetSpec`.

Nothing a user may receive runs code when loaded: the weights are safetensors and the network (spaces,
architecture, hyper-parameters) is JSON from which :func:`rankrl.set_policy.build_policy` builds the
:class:`~rankrl.set_policy.SetActorCriticPolicy`. The old ``policy.zip`` (SB3's ``PPO.save``, whose ``data``
entries are cloudpickle that ``PPO.load`` runs) is refused with :class:`UnsafePolicyFileError`;
:func:`convert_legacy_policy` (``rankrl convert-policy --policy DIR --trust``) converts a file the user trusts, once.

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

POLICY_FILE, POLICY_META = "policy.safetensors", "policy.json"
#: the old, pickle-based SB3 zip: refused by :func:`load_policy`, converted by :func:`convert_legacy_policy`
LEGACY_POLICY_FILE = "policy.zip"


#: policy.json format tag and version (bump when the observation/action contract changes)
#: v2: the action is each module's share of the budget and the observation states the budget (LoRARank-v1)
POLICY_FORMAT, LAYOUT_VERSION = "rankrl/ranks/lora-rank-policy", 2


# ------------------------------------------------------------------------------------------------- saving
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
        "action": {"rank_grid": list(env.grid), "r_max": env.run.r_max, "decode": "LoRARankEnv.decode_action",
                   "meaning": "share of the budget", "share_scale": env.share_scale, "off_share": env.off_share},
        "budgets": env.budget.to_meta(),
        "budget_rank_range": list(env.budget_rank_range) if env.budget_rank_range is not None else None,
        "channel": {"snr_range_db": list(env.snr_range_db), "bandwidth_range_hz": list(env.bandwidth_range_hz),
                    "rayleigh": env.rayleigh},  # fmt: skip
        "env_config": {f.name: getattr(env, f.name) for f in fields(env) if f.name not in ("run", "budget")},
        "run_config": asdict(env.run),
        "trained_on": {"env": config.env_id, "model": env.run.model, "task": env.run.task},
        "timesteps": int(timesteps_done),
        "train_config": asdict(config),
    }


def save_policy(model: Any, out: str | os.PathLike, config: Any, timesteps_done: int) -> Path:
    """Write ``policy.safetensors`` (the weights of ``model.policy``) and ``policy.json`` (:func:`policy_meta` plus
    the network's :func:`~rankrl.set_policy.policy_spec`) into ``out``, each atomically, weights first."""
    from rankrl.set_policy import policy_spec, save_policy_weights

    out = Path(out)
    save_policy_weights(model.policy, out / POLICY_FILE)
    meta = policy_meta(config, timesteps_done) | {"weights": POLICY_FILE, "network": policy_spec(model.policy)}
    save_json(meta, out / POLICY_META)
    return out / POLICY_FILE


_FIX = ("retrain the policy with this rankrl (`rankrl train-policy --out DIR`, then --policy DIR), or apply it with "
        "the rankrl version that trained it")  # fmt: skip


class PolicyLayoutError(ValueError):
    """A policy file does not fit this rankrl's observation layout (or is not a rank policy at all)."""


class UnsafePolicyFileError(PolicyLayoutError):
    """A policy or checkpoint in the old pickle-based format: loading it would run code from the file."""


def legacy_message(path: Path, folder: Path) -> str:
    """Why an old SB3 zip is refused, and the fix."""
    return (f"{path} is in the old policy format (an SB3 zip whose entries are unpickled on load, so the file can run "
            "any code); rankrl does not load it. If you trust where it came from, convert it once with `rankrl "
            f"convert-policy --policy {folder} --trust` (writes {POLICY_FILE} + JSON); otherwise retrain it with "
            "`rankrl train-policy`")  # fmt: skip


@dataclass
class LoadedPolicy:
    """A trained rank policy: the SB3 policy network and its ``policy.json`` record."""

    policy: Any
    meta: dict[str, Any]
    path: Path


def load_policy(path: str | os.PathLike) -> LoadedPolicy:
    """Load ``policy.safetensors`` + ``policy.json`` (a directory, or the path of either file) on CPU: the network
    is built from the JSON and the weights loaded into it; nothing is unpickled.

    Raises:
        UnsafePolicyFileError: only the old pickle-based ``policy.zip`` is there (the message names the converter).
        PolicyLayoutError: missing or foreign ``policy.json``, or another observation layout.
    """
    from rankrl.set_policy import PolicySpecError, build_policy, load_policy_weights

    p = Path(path)
    folder = p.parent if p.is_file() else p  # either file, or the folder; a missing path never means its parent
    meta_path, weights = folder / POLICY_META, folder / POLICY_FILE
    if not weights.exists() and (folder / LEGACY_POLICY_FILE).exists():
        raise UnsafePolicyFileError(legacy_message(folder / LEGACY_POLICY_FILE, folder))
    if not weights.exists() or not meta_path.exists():
        raise PolicyLayoutError(f"--policy {path}: expected {POLICY_FILE} and {POLICY_META} in {folder}; "
                                "train one with `rankrl train-policy --out DIR`")  # fmt: skip
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != POLICY_FORMAT:
        raise PolicyLayoutError(f"{meta_path} is not a LoRA rank policy (format {meta.get('format')!r}, expected "
                                f"{POLICY_FORMAT!r}); {_FIX}")  # fmt: skip
    check_layout(meta, None, meta_path)
    if meta.get("algo") == "diffusion":  # coarse PPO network + DDIM refiner (rankrl train-policy --algo diffusion)
        from rankrl.ranks.latent_policy import load_latent_policy

        policy = load_latent_policy(folder, meta, POLICY_FILE)
        check_layout(meta, policy, meta_path)
        return LoadedPolicy(policy, meta, folder)
    if "network" not in meta:
        raise PolicyLayoutError(f"{meta_path} has no 'network' record (a policy.json of the old format); {_FIX}")
    try:
        policy = load_policy_weights(build_policy(meta["network"]), weights)
    except PolicySpecError as e:
        raise PolicyLayoutError(f"{meta_path}: {e}; {_FIX}") from None
    policy.set_training_mode(False)
    check_layout(meta, policy, meta_path)
    return LoadedPolicy(policy, meta, folder)


def convert_legacy_policy(folder: str | os.PathLike) -> Path:
    """Convert a trusted old ``policy.zip`` (SB3, pickle) in ``folder`` to ``policy.safetensors`` + the network in
    ``policy.json``. **Runs the code in the zip** (``PPO.load``): only for files the user trusts; the CLI asks for
    ``--trust``. The zip is left in place (delete it once the converted policy works)."""
    from stable_baselines3 import PPO

    from rankrl.set_policy import policy_spec, save_policy_weights

    folder = Path(folder)
    zip_path, meta_path = folder / LEGACY_POLICY_FILE, folder / POLICY_META
    if not zip_path.exists() or not meta_path.exists():
        raise PolicyLayoutError(f"{folder}: no old-format {LEGACY_POLICY_FILE} + {POLICY_META} to convert")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != POLICY_FORMAT:
        raise PolicyLayoutError(f"{meta_path} is not a LoRA rank policy (format {meta.get('format')!r})")
    check_layout(meta, None, meta_path)
    policy = PPO.load(zip_path, device="cpu").policy
    save_policy_weights(policy, folder / POLICY_FILE)
    save_json(meta | {"weights": POLICY_FILE, "network": policy_spec(policy)}, meta_path)
    return folder / POLICY_FILE


def check_layout(meta: Mapping[str, Any], policy: Any = None, where: Any = "policy.json") -> None:
    """Refuse a policy whose observation columns or global features differ from what this rankrl builds.

    Raises:
        PolicyLayoutError: naming what differs and the fix.
    """
    from rankrl.ranks.env import GLOBAL_NAMES
    from rankrl.ranks.features import FEATURE_NAMES

    obs = meta.get("observation", {})
    problems = []
    if meta.get("layout_version") != LAYOUT_VERSION:
        problems.append(f"layout version {meta.get('layout_version')} but this rankrl reads version {LAYOUT_VERSION} "
                        "(the action is each module's share of the budget and the budget is observed)")  # fmt: skip
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

    if hasattr(policy, "widen"):  # a diffusion policy: fixed input width
        try:
            return policy.widen(rows)
        except ValueError as e:
            raise PolicyLayoutError(str(e)) from None
    have = policy.observation_space["rows"].shape[0]
    if rows <= have:
        return policy
    old = policy.observation_space
    n_feat, high = old["rows"].shape[1], float(old["rows"].high.flat[0])
    obs_space = spaces.Dict({"rows": spaces.Box(0.0, high, (rows, n_feat), dtype=np.float32),
                             "mask": spaces.Box(0.0, 1.0, (rows,), dtype=np.float32), "globals": old["globals"]})
    params = policy._get_constructor_parameters()  # what SB3 itself rebuilds a saved policy from
    params.pop("observation_space"), params.pop("action_space")
    extra = policy.action_space.shape[0] - have  # global actions (the spend) stay last
    wide = type(policy)(obs_space, spaces.Box(-1.0, 1.0, (rows + extra,), dtype=np.float32), **params)
    wide.load_state_dict(policy.state_dict())
    wide.set_training_mode(False)
    return wide


@dataclass
class Allocation:
    """A policy's allocation for one model and budget.

    Attributes:
        ranks: rank per module (target order), what the env would train: the shares rounded onto the grid.
        desired: the same ranks (the decoded action; kept for callers of the old field).
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
    shares: dict[str, float] = field(default_factory=dict)
    """each module's share of the budget (the policy's action; 0 = off)"""
    spend: float = 1.0
    """the fraction of the budget the policy chose to spend (1 unless it was trained with ``--env.spend_action``)"""


def allocate(loaded: LoadedPolicy, targets: tuple, static: np.ndarray, budget: BudgetSpec, *,
             snr_db: float | None = None, bandwidth_hz: float | None = None) -> Allocation:  # fmt: skip
    """The policy's first-decision allocation for a model (its feature rows ``static``) under ``budget`` (None
    caps are uncapped; see :meth:`BudgetSpec.merged` to start from the policy's own). The budget is in the
    observation (the ``budget`` global), so the policy's shares depend on it, and the rounding spends it. The
    channel defaults to the middle of the policy's training ranges."""
    from rankrl.ranks.baselines import uniform
    from rankrl.ranks.budgets import budget_metrics
    from rankrl.ranks.costs import allocation_cost
    from rankrl.ranks.env import LoRARankConfig, LoRARankEnv
    from rankrl.ranks.finetune import FineTuneConfig
    from rankrl.ranks.sim import SimCalibration

    meta = loaded.meta
    env_kw = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["env_config"].items()}
    env_kw["max_modules"] = max(int(env_kw["max_modules"]), len(targets))
    env_kw["budget_rank_range"] = None  # the budget given here, not one drawn from the training range
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
    shares = env.action_shares(action)
    desired = env.decode_action(action)
    ranks = env.project(desired)  # a no-op (the decoded ranks spend the cap, never above it); kept as a guard
    budget = env.round_budget()
    cost = allocation_cost(env.targets, ranks, precision_bits=run.precision_bits)
    metrics = {**cost.as_metrics(), **budget_metrics(env.targets, ranks, budget)}
    same = uniform(env.targets, budget, env.grid, r_max=run.r_max)
    return Allocation(ranks, desired, budget, metrics, same, tuple(env.targets), channel, shares,
                      env.spend_fraction(action))
