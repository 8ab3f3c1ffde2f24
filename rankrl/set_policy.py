"""SB3 policy pieces for "set" observations: one row per item (prompt, layer), a mask and global features.

Observation: ``Dict(rows=Box(R, F), mask=Box(R,), globals=Box(G,))`` with ``mask[i] = 1`` for real rows.
Action: ``Box(-1, 1, (R,))``, one number per row. Every row is encoded by the same weights, mixed with a
context of the other real rows (masked mean-pool, or one masked self-attention layer), and its action comes
from its own encoding through one shared head. The policy is therefore permutation-equivariant over rows and
runs unchanged with any number of real rows <= R: padded rows never reach a real row's output, get mean 0 and
are left out of the log-likelihood and entropy. The value is an MLP of the masked mean of row encodings and
the globals.

Usage (no PPO subclassing; SB3 builds everything from the policy class and ``policy_kwargs``)::

    PPO(SetActorCriticPolicy, env, policy_kwargs=dict(hidden=64, context="attention"))
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.distributions import DiagGaussianDistribution
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

__all__ = ["MaskedDiagGaussian", "PolicySpecError", "PooledSetEncoder", "RowHead", "SetActorCriticPolicy",
           "SetEncoder", "SetLatentNet", "build_policy", "load_policy_weights", "masked_mean", "policy_spec",
           "save_policy_weights"]


def masked_mean(x: th.Tensor, mask: th.Tensor) -> th.Tensor:
    """Mean of ``x`` (B, R, D) over rows where ``mask`` (B, R) is 1; zeros if a sample has no real row."""
    weights = mask.unsqueeze(-1)
    return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


def _mlp(sizes: list[int], activation: type[nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b), activation()]
    return nn.Sequential(*layers)


def _split_obs_space(space: spaces.Space) -> tuple[int, int, int]:
    if not isinstance(space, spaces.Dict) or set(space.spaces) != {"rows", "mask", "globals"}:
        raise ValueError(f"set policies need Dict(rows, mask, globals) observations, got {space}")
    rows, mask, glob = space["rows"].shape, space["mask"].shape, space["globals"].shape
    if len(rows) != 2 or mask != rows[:1] or len(glob) != 1:
        raise ValueError(f"need rows (R, F), mask (R,), globals (G,); got {rows}, {mask}, {glob}")
    return rows[0], rows[1], glob[0]


class SetEncoder(BaseFeaturesExtractor):
    """Features extractor: shared per-row encoder + context from the other real rows.

    ``phi = MLP([row, globals])``; context = masked mean of ``phi`` (or a masked self-attention layer);
    ``z_i = MLP([phi_i, context_i]) * mask_i``. Output (flat, for SB3): ``[z (R*H), mask (R), pooled z (H),
    globals (G)]``, unpacked again by :class:`SetLatentNet`.

    Args:
        observation_space: ``Dict(rows, mask, globals)``.
        hidden: Row-encoding width H.
        context: "mean" (masked mean-pool) or "attention" (one masked multi-head self-attention layer).
        n_heads: Attention heads (``context="attention"``; must divide ``hidden``).
    """

    def __init__(self, observation_space: spaces.Dict, hidden: int = 64, context: str = "mean", n_heads: int = 4):
        rows, feats, glob = _split_obs_space(observation_space)
        super().__init__(observation_space, features_dim=rows * hidden + rows + hidden + glob)
        if context not in ("mean", "attention"):
            raise ValueError(f"context must be 'mean' or 'attention', got {context!r}")
        self.rows, self.hidden, self.n_globals, self.context = rows, hidden, glob, context
        self.phi = _mlp([feats + glob, hidden, hidden], nn.Tanh)
        self.attn = nn.MultiheadAttention(hidden, n_heads, batch_first=True) if context == "attention" else None
        self.mix = _mlp([2 * hidden, hidden], nn.Tanh)

    def forward(self, obs: dict[str, th.Tensor]) -> th.Tensor:
        z, mask, glob = self.encode(obs)
        return th.cat([z.flatten(1), mask, masked_mean(z, mask), glob], dim=1)

    def encode(self, obs: dict[str, th.Tensor]) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        """``(z (B,R,H), mask (B,R) as 0/1, globals (B,G))``: the row encodings in their set context."""
        rows, mask, glob = obs["rows"], obs["mask"], obs["globals"]
        mask = (mask > 0.5).to(rows.dtype)
        glob_b = glob.unsqueeze(1).expand(-1, self.rows, -1)
        h = self.phi(th.cat([rows, glob_b], dim=-1)) * mask.unsqueeze(-1)
        if self.attn is None:
            ctx = masked_mean(h, mask).unsqueeze(1).expand(-1, self.rows, -1)
        else:
            pad = mask < 0.5
            pad = pad & ~pad.all(dim=1, keepdim=True)  # a sample with no real row would give NaN
            ctx, _ = self.attn(h, h, h, key_padding_mask=pad, need_weights=False)
        z = self.mix(th.cat([h, ctx], dim=-1)) * mask.unsqueeze(-1)
        return z, mask, glob


class PooledSetEncoder(SetEncoder):
    """Features extractor for a plain SB3 policy over a set: :class:`SetEncoder`'s masked mean of the row encodings
    and the globals, ``[pooled z (H), globals (G)]``, so the policy's input width does not depend on the number of
    rows (a model with more modules reads the same weights) and the globals are not a sliver of ``R x F`` inputs."""

    def __init__(self, observation_space: spaces.Dict, hidden: int = 64, context: str = "mean", n_heads: int = 4):
        super().__init__(observation_space, hidden, context, n_heads)
        self._features_dim = hidden + self.n_globals

    def forward(self, obs: dict[str, th.Tensor]) -> th.Tensor:
        z, mask, glob = self.encode(obs)
        return th.cat([masked_mean(z, mask), glob], dim=1)


class SetLatentNet(nn.Module):
    """SB3 ``mlp_extractor`` for :class:`SetEncoder` features.

    ``forward_actor`` applies one shared MLP to every row encoding and returns ``[row latents (R*D), mask (R),
    pooled encodings, globals]`` (the last two feed the global actions, if any); ``forward_critic`` applies an MLP
    to ``[pooled encodings, globals]``.
    """

    def __init__(self, rows: int, hidden: int, n_globals: int, pi: list[int], vf: list[int], activation: type):
        super().__init__()
        self.rows, self.hidden, self.n_globals = rows, hidden, n_globals
        self.policy_net = _mlp([hidden, *pi], activation)
        self.value_net = _mlp([hidden + n_globals, *vf], activation)
        self.row_dim = pi[-1] if pi else hidden
        self.latent_dim_pi = rows * self.row_dim + rows + hidden + n_globals
        self.latent_dim_vf = vf[-1] if vf else hidden + n_globals

    def _unpack(self, features: th.Tensor) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        r, h = self.rows, self.hidden
        z = features[:, : r * h].reshape(-1, r, h)
        mask = features[:, r * h : r * h + r]
        return z, mask, features[:, r * h + r :]

    def forward_actor(self, features: th.Tensor) -> th.Tensor:
        z, mask, context = self._unpack(features)
        return th.cat([self.policy_net(z).flatten(1), mask, context], dim=1)

    def forward_critic(self, features: th.Tensor) -> th.Tensor:
        return self.value_net(self._unpack(features)[2])

    def forward(self, features: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        return self.forward_actor(features), self.forward_critic(features)


class RowHead(nn.Module):
    """Action net: one ``Linear(D, 1)`` shared by all rows (padded rows get mean 0), then ``n_global`` actions
    from ``Linear(context, n_global)`` on the pooled encodings and globals (e.g. how much of the budget to spend)."""

    def __init__(self, rows: int, row_dim: int, n_global: int = 0, context_dim: int = 0):
        super().__init__()
        self.rows, self.row_dim, self.n_global = rows, row_dim, n_global
        self.linear = nn.Linear(row_dim, 1)
        if n_global:
            self.global_linear = nn.Linear(context_dim, n_global)

    def forward(self, latent_pi: th.Tensor) -> th.Tensor:
        r, d = self.rows, self.row_dim
        mean = self.linear(latent_pi[:, : r * d].reshape(-1, r, d)).squeeze(-1) * latent_pi[:, r * d : r * d + r]
        if not self.n_global:
            return mean
        return th.cat([mean, self.global_linear(latent_pi[:, r * d + r :])], dim=1)


class MaskedDiagGaussian(DiagGaussianDistribution):
    """Diagonal Gaussian whose log-prob and entropy sum over real rows only (padded rows are not actions)."""

    mask: th.Tensor | None = None

    def proba_distribution(self, mean_actions: th.Tensor, log_std: th.Tensor, mask: th.Tensor | None = None):
        self.mask = mask
        return super().proba_distribution(mean_actions, log_std)

    def log_prob(self, actions: th.Tensor) -> th.Tensor:
        lp = self.distribution.log_prob(actions)
        return (lp * self.mask).sum(dim=1) if self.mask is not None else lp.sum(dim=1)

    def entropy(self) -> th.Tensor:
        ent = self.distribution.entropy()
        return (ent * self.mask).sum(dim=1) if self.mask is not None else ent.sum(dim=1)


class SetActorCriticPolicy(ActorCriticPolicy):
    """Actor-critic over set observations: per-row actions from shared weights, one learned log-std.

    Extra keyword arguments (via ``policy_kwargs``): ``hidden`` and ``context`` / ``n_heads`` of
    :class:`SetEncoder`; ``net_arch=dict(pi=[...], vf=[...])`` sizes the per-row actor MLP and the critic MLP
    (default ``pi=[64], vf=[64, 64]``). Box actions of shape (R + k,): R per-row actions, then k >= 0 global ones
    (:class:`RowHead`); only ``use_sde=False`` is supported.
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        action_space: spaces.Box,
        lr_schedule: Any,
        net_arch: dict[str, list[int]] | None = None,
        hidden: int = 64,
        context: str = "mean",
        n_heads: int = 4,
        **kwargs: Any,
    ):
        rows, _, _ = _split_obs_space(observation_space)
        if not (isinstance(action_space, spaces.Box) and len(action_space.shape) == 1
                and action_space.shape[0] >= rows):  # fmt: skip
            raise ValueError(f"set policies need a Box action of shape ({rows} + k,), got {action_space}")
        self.n_global = action_space.shape[0] - rows
        if kwargs.get("use_sde"):
            raise ValueError("gSDE is not supported by SetActorCriticPolicy")
        if isinstance(net_arch, list):
            net_arch = dict(pi=list(net_arch), vf=list(net_arch))
        net_arch = net_arch or dict(pi=[64], vf=[64, 64])
        self._set_kwargs = dict(hidden=hidden, context=context, n_heads=n_heads)
        extractor_class = kwargs.pop("features_extractor_class", SetEncoder)
        if not (isinstance(extractor_class, type) and issubclass(extractor_class, SetEncoder)):
            raise ValueError(f"features_extractor_class must be SetEncoder or a subclass, got {extractor_class}")
        extractor_kwargs = dict(kwargs.pop("features_extractor_kwargs", None) or {}, **self._set_kwargs)
        kwargs.setdefault("activation_fn", nn.Tanh)
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            net_arch=net_arch,
            features_extractor_class=extractor_class,
            features_extractor_kwargs=extractor_kwargs,
            **kwargs,
        )

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(self._set_kwargs)  # features_extractor_kwargs repeats them; the constructor merges both
        return data

    def _build_mlp_extractor(self) -> None:
        enc = self.features_extractor
        assert isinstance(enc, SetEncoder)
        self.mlp_extractor = SetLatentNet(
            enc.rows, enc.hidden, enc.n_globals, list(self.net_arch["pi"]), list(self.net_arch["vf"]),
            self.activation_fn,
        )  # fmt: skip

    def _build(self, lr_schedule: Any) -> None:
        # ActorCriticPolicy._build with a per-row action net and one shared log-std; the optimizer is built
        # after the swap so it sees the right parameters.
        self.action_dist = MaskedDiagGaussian(self.action_space.shape[0])
        self._build_mlp_extractor()
        net = self.mlp_extractor
        self.action_net = RowHead(net.rows, net.row_dim, self.n_global, net.hidden + net.n_globals)
        self.log_std = nn.Parameter(th.full((1,), float(self.log_std_init)))
        self.value_net = nn.Linear(self.mlp_extractor.latent_dim_vf, 1)
        if self.ortho_init:
            gains = {self.features_extractor: 2**0.5, self.mlp_extractor: 2**0.5, self.action_net: 0.01}
            gains[self.value_net] = 1.0
            if not self.share_features_extractor:
                gains.update({self.pi_features_extractor: 2**0.5, self.vf_features_extractor: 2**0.5})
            for module, gain in gains.items():
                module.apply(lambda m, g=gain: self.init_weights(m, gain=g))
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    def _get_action_dist_from_latent(self, latent_pi: th.Tensor) -> MaskedDiagGaussian:
        net = self.mlp_extractor
        start = net.rows * net.row_dim
        mask = latent_pi[:, start : start + net.rows]
        if self.n_global:  # the global actions are always real
            mask = th.cat([mask, mask.new_ones(mask.shape[0], self.n_global)], dim=1)
        return self.action_dist.proba_distribution(self.action_net(latent_pi), self.log_std, mask)


# ------------------------------------------------------------------------------------------- files (no pickle)
#: a set policy on disk: ``state_dict`` as safetensors + :func:`policy_spec` as JSON. Nothing in either file runs
#: code when loaded (unlike ``PPO.load``, which unpickles the zip's ``data`` entries with cloudpickle).
SPEC_FORMAT = "rankrl/set-actor-critic-policy"
_ACTIVATIONS: dict[str, type[nn.Module]] = {c.__name__: c for c in (nn.Tanh, nn.ReLU, nn.GELU, nn.SiLU, nn.ELU,
                                                                     nn.LeakyReLU)}  # fmt: skip
_OPTIMIZERS: dict[str, type[th.optim.Optimizer]] = {
    c.__name__: c for c in (th.optim.Adam, th.optim.AdamW, th.optim.SGD, th.optim.RMSprop)}  # fmt: skip
_SPEC_KWARGS = ("net_arch", "hidden", "context", "n_heads", "activation_fn", "log_std_init", "ortho_init",
                "normalize_images", "share_features_extractor", "optimizer_class", "optimizer_kwargs")  # fmt: skip


class PolicySpecError(ValueError):
    """A policy spec (JSON) that does not describe a :class:`SetActorCriticPolicy` this code can build."""


def _box_to_json(box: spaces.Space) -> dict[str, Any]:
    if not isinstance(box, spaces.Box):
        raise PolicySpecError(f"only Box spaces can be saved, got {box}")

    def bound(a: Any) -> Any:
        a = np.asarray(a, dtype=np.float64)
        return float(a.flat[0]) if a.size and (a == a.flat[0]).all() else a.tolist()

    return {"shape": list(box.shape), "dtype": str(box.dtype), "low": bound(box.low), "high": bound(box.high)}


def _box_from_json(d: Any, where: str) -> spaces.Box:
    if not isinstance(d, dict) or set(d) != {"shape", "dtype", "low", "high"}:
        raise PolicySpecError(f"{where}: expected {{shape, dtype, low, high}}, got {d!r}")
    if d["dtype"] not in ("float32", "float64"):
        raise PolicySpecError(f"{where}: dtype {d['dtype']!r} is not float32/float64")
    shape = tuple(int(s) for s in d["shape"])
    dtype = np.dtype(d["dtype"])
    low, high = (np.broadcast_to(np.asarray(d[k], dtype=dtype), shape) for k in ("low", "high"))
    return spaces.Box(low.copy(), high.copy(), shape, dtype=dtype)


def policy_spec(policy: SetActorCriticPolicy) -> dict[str, Any]:
    """Everything needed to rebuild ``policy`` (its spaces and constructor arguments) as plain JSON data."""
    params = policy._get_constructor_parameters()
    if params.get("features_extractor_class", SetEncoder) is not SetEncoder or params.get("use_sde"):
        raise PolicySpecError("only SetEncoder features and use_sde=False can be saved as a spec")
    act, opt = params["activation_fn"], params["optimizer_class"]
    if act not in _ACTIVATIONS.values() or opt not in _OPTIMIZERS.values():
        raise PolicySpecError(f"activation {act} / optimizer {opt} not in {sorted(_ACTIVATIONS)} / "
                              f"{sorted(_OPTIMIZERS)}")  # fmt: skip
    obs = params["observation_space"]
    kwargs = {"net_arch": {k: list(v) for k, v in dict(params["net_arch"]).items()},
              "activation_fn": act.__name__, "optimizer_class": opt.__name__,
              "optimizer_kwargs": dict(params.get("optimizer_kwargs") or {})}  # fmt: skip
    kwargs.update({k: params[k] if k in params else getattr(policy, k) for k in _SPEC_KWARGS if k not in kwargs})
    return {"format": SPEC_FORMAT, "class": "SetActorCriticPolicy",
            "observation_space": {k: _box_to_json(obs[k]) for k in ("rows", "mask", "globals")},
            "action_space": _box_to_json(params["action_space"]), "kwargs": kwargs}  # fmt: skip


def build_policy(spec: dict[str, Any], lr: float = 0.0) -> SetActorCriticPolicy:
    """A fresh :class:`SetActorCriticPolicy` (untrained weights) from a :func:`policy_spec`; unknown keys raise.

    Raises:
        PolicySpecError: naming what does not fit.
    """
    if not isinstance(spec, dict) or spec.get("format") != SPEC_FORMAT or spec.get("class") != "SetActorCriticPolicy":
        got = spec.get("format") if isinstance(spec, dict) else spec
        raise PolicySpecError(f"not a set-policy spec (format {got!r}, expected {SPEC_FORMAT!r})")
    if extra := sorted(set(spec) - {"format", "class", "observation_space", "action_space", "kwargs"}):
        raise PolicySpecError(f"unknown spec keys {extra}")
    kwargs = dict(spec["kwargs"])
    if extra := sorted(set(kwargs) - set(_SPEC_KWARGS)):
        raise PolicySpecError(f"unknown policy arguments {extra}; known: {list(_SPEC_KWARGS)}")
    try:
        kwargs["activation_fn"] = _ACTIVATIONS[kwargs.get("activation_fn", "Tanh")]
        kwargs["optimizer_class"] = _OPTIMIZERS[kwargs.get("optimizer_class", "Adam")]
    except KeyError as e:
        raise PolicySpecError(f"activation/optimizer {e} is not one of {sorted(_ACTIVATIONS)} / "
                              f"{sorted(_OPTIMIZERS)}") from None
    obs = spec["observation_space"]
    if not isinstance(obs, dict) or set(obs) != {"rows", "mask", "globals"}:
        raise PolicySpecError(f"observation_space must have rows, mask, globals; got {obs!r}")
    obs_space = spaces.Dict({k: _box_from_json(obs[k], f"observation_space.{k}") for k in ("rows", "mask", "globals")})
    action_space = _box_from_json(spec["action_space"], "action_space")
    return SetActorCriticPolicy(obs_space, action_space, lambda _: lr, **kwargs)


def save_policy_weights(policy: nn.Module, path: str | os.PathLike) -> Path:
    """``policy.state_dict()`` as a safetensors file, written atomically."""
    from safetensors.torch import save_file

    from rankrl.atomic import atomic_write

    state = {k: v.detach().cpu().contiguous().clone() for k, v in policy.state_dict().items()}
    return atomic_write(path, lambda p: save_file(state, str(p)), ".safetensors")


def load_policy_weights(policy: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a :func:`save_policy_weights` file into ``policy`` (every key must match: ``strict=True``)."""
    from safetensors.torch import load_file

    missing, unexpected = policy.load_state_dict(load_file(str(path), device="cpu"), strict=False)
    if missing or unexpected:
        raise PolicySpecError(f"{path}: weights do not fit the network (missing {missing[:3]}, unexpected "
                              f"{unexpected[:3]})")  # fmt: skip
    return policy


def box_to_json(box: spaces.Space) -> dict[str, Any]:
    """A ``Box`` as plain JSON data (shape, dtype, low, high)."""
    return _box_to_json(box)


def box_from_json(d: Any, where: str = "space") -> spaces.Box:
    """The ``Box`` of :func:`box_to_json` data; anything else raises :class:`PolicySpecError` naming ``where``."""
    return _box_from_json(d, where)
