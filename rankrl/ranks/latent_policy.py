"""A loaded ``--algo diffusion`` rank policy: the coarse PPO network and the DDIM refiner behind one ``predict``
(what ``rankrl apply`` / ``rankrl baselines`` call), built from ``policy.json`` + safetensors (nothing unpickled)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from gymnasium import spaces

from rankrl.ranks.diffusion import DiffusionConfig, RankDiffusion

__all__ = ["REFINER_FILE", "LatentRefinerPolicy", "build_coarse", "coarse_policy_kwargs", "coarse_spec",
           "load_latent_policy"]

REFINER_FILE = "refiner.safetensors"


class LatentRefinerPolicy:
    """Coarse PPO network + DDIM refiner behind the ``predict(obs) -> (scores, None)`` of an SB3 policy (what
    :func:`rankrl.ranks.policy.allocate` calls); deterministic (the latent's mean, the sampler's seed 0)."""

    def __init__(self, coarse: Any, refiner: RankDiffusion) -> None:
        self.coarse, self.refiner = coarse, refiner
        self.observation_space = coarse.observation_space

    def predict(self, obs: dict[str, np.ndarray], deterministic: bool = True) -> tuple[np.ndarray, None]:
        action, _ = self.coarse.predict(obs, deterministic=True)
        k = self.refiner.latent_dim  # then the env's global actions (the spend), passed through
        scores = self.refiner.predict_action(obs, action[:k], seed=0)
        return np.concatenate([scores, action[k:]]).astype(np.float32), None

    def set_training_mode(self, mode: bool) -> None:
        self.coarse.set_training_mode(mode)

    def widen(self, rows: int) -> LatentRefinerPolicy:
        """Itself when it reads ``rows`` modules or more; with a set-input coarse network (``--diffusion.coarse_input
        set``) the same weights for ``rows`` rows; else ``ValueError`` naming the fix."""
        have = self.observation_space["rows"].shape[0]
        if rows <= have:
            return self
        spec = coarse_spec(self.coarse)
        if spec.get("input") != "set":  # the coarse network reads the flattened rows: its input width is fixed
            raise ValueError(f"the model has {rows} modules but this diffusion policy reads at most {have}; "
                             f"retrain it with --env.max_modules {rows} (or --diffusion.coarse_input set)")  # fmt: skip
        for key in ("rows", "mask"):  # the env's row and mask bounds are one number each (box_to_json keeps them so)
            spec["observation_space"][key]["shape"][0] = rows
        wide = build_coarse(spec)
        wide.load_state_dict(self.coarse.state_dict())
        out = LatentRefinerPolicy(wide, self.refiner)
        out.set_training_mode(False)
        return out


def coarse_spec(policy: Any) -> dict[str, Any]:
    from rankrl.set_policy import PooledSetEncoder, box_to_json

    obs = policy.observation_space
    spec = {"class": "MultiInputActorCriticPolicy", "observation_space": {k: box_to_json(obs[k]) for k in obs.spaces},
            "action_space": box_to_json(policy.action_space)}  # fmt: skip
    if isinstance(policy.features_extractor, PooledSetEncoder):  # no "input" key: the flattened rows (older files)
        spec.update(input="set", hidden=int(policy.features_extractor.hidden))
    return spec


def coarse_policy_kwargs(coarse_input: str, hidden: int = 64) -> dict[str, Any]:
    """SB3 ``policy_kwargs`` of the coarse PPO for ``--diffusion.coarse_input``."""
    from rankrl.set_policy import PooledSetEncoder

    if coarse_input == "set":
        return {"features_extractor_class": PooledSetEncoder, "features_extractor_kwargs": {"hidden": hidden}}
    return {}


def build_coarse(spec: dict[str, Any]) -> Any:
    from stable_baselines3.common.policies import MultiInputActorCriticPolicy

    from rankrl.set_policy import PolicySpecError, box_from_json

    if spec.get("class") != "MultiInputActorCriticPolicy" or set(spec["observation_space"]) != {"rows", "mask",
                                                                                               "globals"}:
        raise PolicySpecError(f"not a coarse diffusion-policy spec: {spec.get('class')!r}")
    obs = spaces.Dict({k: box_from_json(v, f"coarse.{k}") for k, v in spec["observation_space"].items()})
    if spec.get("input", "flatten") not in ("flatten", "set"):
        raise PolicySpecError(f"unknown coarse input {spec.get('input')!r} (this rankrl reads 'flatten' and 'set')")
    kwargs = coarse_policy_kwargs(spec.get("input", "flatten"), int(spec.get("hidden", 64)))
    return MultiInputActorCriticPolicy(obs, box_from_json(spec["action_space"], "coarse.action"), lambda _: 0.0,
                                       **kwargs)  # fmt: skip


def load_latent_policy(folder: Path, meta: dict[str, Any], weights_file: str) -> LatentRefinerPolicy:
    """Build both parts from ``meta`` (a ``policy.json`` with ``algo: diffusion``) and load their safetensors."""
    from safetensors.torch import load_file

    from rankrl.set_policy import load_policy_weights

    d = meta["diffusion"]
    coarse = load_policy_weights(build_coarse(d["coarse"]), folder / weights_file)
    refiner = RankDiffusion.with_ddim(DiffusionConfig(**d["config"]), d["n_features"], d["n_globals"])
    refiner.load_state_dict(load_file(str(folder / REFINER_FILE)))
    policy = LatentRefinerPolicy(coarse, refiner)
    policy.set_training_mode(False)
    return policy
