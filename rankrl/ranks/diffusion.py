"""AirLLM's refiner: a conditional DDIM (diffusers) that turns a coarse latent + the state into every module's rank
score, with classifier-free guidance, trained off-policy on a replay buffer with a reward-weighted loss.

The two-level policy (AirLLM, ZJUNICE): PPO acts in a low-dimensional coarse latent; this denoiser refines the
latent into the full per-module vector in [-1, 1] (the env's action: each module's score, turned into ranks by the
env's rounding). The denoiser works for any number of modules: like the set policy it has one network shared by
the module rows, each row seeing its own features, its noisy score, the timestep, the latent, the globals and a
masked mean of all rows (the set context).

* Training (:meth:`RankDiffusion.compute_loss`): epsilon-prediction MSE at a random timestep, each sample weighted
  ``clamp(1 + w * zscore(reward), 0.1, 10)`` so high-reward vectors are denoised more faithfully (AirLLM's weighting,
  ``weighting="reward"``); the condition (latent + globals) is dropped with probability ``cond_dropout`` so one
  network is both conditional and not.
* ``weighting="advantage"`` (ours, not AirLLM's): advantage-weighted regression (Peng et al. 2019, AWR) instead.
  AirLLM's z-score is taken over a batch of *different* states (budgets, channels, decision points), so it mostly
  up-weights states whose reward is high whatever the vector (a big budget), and within one state two vectors'
  weights differ by ~0.1 x their reward gap / the reward spread across states: the fit is close to cloning the
  buffer. AWR weights each sample by ``min(exp(zscore(A) / temperature), max_weight)`` with ``A = R - V(s)``: ``R``
  the TD(lambda) return PPO computed for that step (stored with the entry), ``V`` the coarse PPO's current critic,
  so a vector is up-weighted for being better *than usual in its state*.
* Sampling (:meth:`RankDiffusion.predict_action`): ``num_inference_steps`` DDIM steps (eta 0: deterministic given
  the seed's initial noise) with guidance ``eps_u + g (eps_c - eps_u)``; the output is clipped to [-1, 1].
  Measured on trained refiners (``benchmarks/diffusion_steering.py``): the starting noise moves the output 12-27x more
  than PPO's latent does, so ``init_noise`` < 1 scales it down (0: the output is a function of state and latent only).
* ``decoding="linear"`` (ours, not AirLLM's): a residual refiner around a per-module decoding of the latent. PPO's
  latent is one weight per module-row feature and each module's score is ``tanh(z_i . latent + r_i)`` (``z_i``: the
  row's features standardised over the model's modules, :func:`linear_logits`), so PPO alone already chooses a whole
  allocation (e.g. "more rank where the gradient sensitivity is high, less on MLP") in a space whose size does not
  grow with the model. The DDIM generates only the residual ``r`` in [-1, 1], added before the tanh (its output
  layer starts at zero, so with ``init_noise`` 0 the untrained refiner adds nothing and the two-level policy starts
  as the decoding); the replay buffer stores that residual, not the action (:meth:`RankDiffusion.sample`).
  ``explore_noise`` adds Gaussian noise to the residual in training rollouts, the residual exploration the
  advantage-weighted refit learns from (with ``init_noise`` 0 the refiner otherwise only sees its own outputs). A
  first version added the residual after the tanh, clipped the action to [-1, 1] and refit on ``action - base``:
  for a module decoded near -1 the clip keeps only upward noise, the targets were biased up and the refit learned
  to switch such modules on (measured in ``benchmarks/diffusion_headroom.py --parts ablation``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["DECODINGS", "WEIGHTINGS", "DiffusionConfig", "RankDiffusion", "ReplayBuffer", "RowDenoiser",
           "advantage_weights", "linear_decoding", "linear_logits", "reward_weights"]  # fmt: skip

#: how the refit weights its samples: AirLLM's reward z-score or advantage-weighted regression (module docstring)
WEIGHTINGS = ("reward", "advantage")
#: what PPO's latent is: AirLLM's free condition of the DDIM, or the weights of a linear per-module decoding (docstring)
DECODINGS = ("none", "linear")
COARSE_INPUTS = ("flatten", "set")


@dataclass(frozen=True)
class DiffusionConfig:
    """The refiner's shape, schedule, guidance and off-policy training (AirLLM's defaults)."""

    latent_dim: int = 16
    """size of PPO's coarse latent (decoding 'none'; with 'linear' the latent has one weight per module-row feature)"""
    hidden: int = 64
    """width of the per-row denoiser"""
    num_train_timesteps: int = 1000
    """diffusion steps of the training schedule"""
    num_inference_steps: int = 50
    """DDIM steps when sampling"""
    cond_dropout: float = 0.1
    """probability of dropping the condition while training (classifier-free guidance)"""
    guidance_scale: float = 1.5
    """eps_u + guidance_scale (eps_c - eps_u) when sampling (1: plain conditional, 0: unconditional)"""
    reward_weight: float = 0.1
    """w of the sample weight clamp(1 + w * zscore(reward), 0.1, 10) (weighting 'reward')"""
    weighting: str = "reward"
    """'reward' (AirLLM: clamp(1 + w z(reward))) or 'advantage' (AWR: exp(z(return - V(s)) / temperature), with PPO's
    critic V; see the module docstring)"""
    temperature: float = 1.0
    """AWR temperature on the z-scored advantage (weighting 'advantage')"""
    max_weight: float = 20.0
    """AWR weights are clipped here (weighting 'advantage')"""
    init_noise: float = 1.0
    """scale of the sampler's starting noise x_T (1: DDIM as trained; 0: every sample starts at 0, so the refined
    vector is a deterministic function of state and latent and PPO's latent is the only exploration)"""
    decoding: str = "none"
    """'none' (AirLLM: the DDIM turns latent + state into the whole vector) or 'linear' (the latent weights the
    standardised row features into a base score per module; the DDIM refines the residual; module docstring)"""
    explore_noise: float = 0.0
    """std of Gaussian noise added to the refined vector in training rollouts (never when the policy is applied)"""
    coarse_input: str = "flatten"
    """what the coarse PPO reads: 'flatten' (SB3's MultiInputPolicy: every row's features and the globals as one
    vector, so its width is fixed by max_modules) or 'set' (the masked mean of shared per-row encodings and the
    globals: any number of modules, and the budget is not one input among thousands)"""
    buffer_size: int = 10_000
    """replay buffer capacity (oldest entries are overwritten)"""
    lr: float = 1e-3
    """Adam learning rate of the denoiser"""

    def __post_init__(self) -> None:
        for name in ("latent_dim", "hidden", "num_train_timesteps", "num_inference_steps", "buffer_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.num_inference_steps > self.num_train_timesteps:
            raise ValueError("--num_inference_steps must be <= --num_train_timesteps")
        if not 0 <= self.cond_dropout < 1:
            raise ValueError(f"--cond_dropout must be in [0, 1), got {self.cond_dropout}")
        if not (self.lr > 0 and self.guidance_scale >= 0 and self.reward_weight >= 0):
            raise ValueError("need --lr > 0, --guidance_scale >= 0 and --reward_weight >= 0")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"--weighting must be one of {', '.join(WEIGHTINGS)}, got {self.weighting!r}")
        if not (math.isfinite(self.init_noise) and self.init_noise >= 0):
            raise ValueError(f"--init_noise must be finite and >= 0, got {self.init_noise}")
        if self.coarse_input not in COARSE_INPUTS:
            raise ValueError(f"--coarse_input must be one of {', '.join(COARSE_INPUTS)}, got {self.coarse_input!r}")
        if self.decoding not in DECODINGS:
            raise ValueError(f"--decoding must be one of {', '.join(DECODINGS)}, got {self.decoding!r}")
        if not (math.isfinite(self.explore_noise) and self.explore_noise >= 0):
            raise ValueError(f"--explore_noise must be finite and >= 0, got {self.explore_noise}")
        if not (math.isfinite(self.temperature) and self.temperature > 0 and self.max_weight >= 1):
            raise ValueError(f"need --temperature > 0 and --max_weight >= 1, got {self.temperature}, {self.max_weight}")


def reward_weights(rewards: torch.Tensor, w: float) -> torch.Tensor:
    """``clamp(1 + w * zscore(rewards), 0.1, 10)`` (all ones when the rewards do not vary).

    >>> [round(x, 4) for x in reward_weights(torch.tensor([0.0, 1.0, 2.0]), 0.1).tolist()]
    [0.8775, 1.0, 1.1225]
    """
    std = rewards.std(unbiased=False)
    if not torch.isfinite(std) or std < 1e-12:
        return torch.ones_like(rewards)
    return (1 + w * (rewards - rewards.mean()) / std).clamp(0.1, 10.0)


def advantage_weights(advantages: torch.Tensor, temperature: float, max_weight: float) -> torch.Tensor:
    """``min(exp(zscore(advantages) / temperature), max_weight)`` (all ones when the advantages do not vary).

    >>> [round(x, 3) for x in advantage_weights(torch.tensor([-1.0, 0.0, 1.0, 4.0]), 1.0, 20.0).tolist()]
    [0.343, 0.586, 1.0, 4.971]
    """
    std = advantages.std(unbiased=False)
    if not torch.isfinite(std) or std < 1e-12:
        return torch.ones_like(advantages)
    z = (advantages - advantages.mean()) / std
    return torch.exp(z / temperature).clamp(max=max_weight)


def linear_logits(rows: torch.Tensor, mask: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
    """``z_i . latent`` per module: ``rows`` (B,R,F) standardised per feature over each sample's real rows (``mask``
    (B,R); a feature constant over the modules reads 0), weighted by ``latent`` (B,F); padding is 0."""
    m = mask.unsqueeze(-1)
    n = m.sum(1, keepdim=True).clamp_min(1.0)
    mean = (rows * m).sum(1, keepdim=True) / n
    std = (((rows - mean) ** 2 * m).sum(1, keepdim=True) / n).sqrt()
    z = torch.where(std > 1e-6, (rows - mean) / std.clamp_min(1e-6), torch.zeros_like(rows)) * m
    return (z * latent.unsqueeze(1)).sum(-1) * mask


def linear_decoding(rows: torch.Tensor, mask: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
    """Score per module ``tanh(z_i . latent)`` (:func:`linear_logits`; the decoding with no residual).

    >>> rows = torch.tensor([[[0.0, 1.0], [2.0, 1.0], [4.0, 1.0]]])
    >>> [round(x, 3) for x in linear_decoding(rows, torch.ones(1, 3), torch.tensor([[0.5, 9.0]]))[0].tolist()]
    [-0.546, 0.0, 0.546]
    """
    return torch.tanh(linear_logits(rows, mask, latent)) * mask


def _time_embedding(t: torch.Tensor, dim: int = 16) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, dtype=torch.float32) / half)
    ang = t.float()[:, None] * freqs[None, :]
    return torch.cat([ang.sin(), ang.cos()], -1)


class RowDenoiser(nn.Module):
    """``eps(x_t, t | rows, latent, globals)`` per module row, one network shared by the rows (any row count)."""

    T_DIM = 16

    def __init__(self, n_features: int, n_globals: int, latent_dim: int, hidden: int) -> None:
        super().__init__()
        self.n_globals, self.latent_dim = n_globals, latent_dim
        self.row = nn.Sequential(nn.Linear(n_features + 1, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        cond = self.T_DIM + latent_dim + n_globals + 1  # + a "condition present" flag
        self.cond = nn.Sequential(nn.Linear(cond, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(3 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, rows: torch.Tensor, mask: torch.Tensor,
                latent: torch.Tensor | None, glob: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
        b = x_t.shape[0]
        h = self.row(torch.cat([rows, x_t.unsqueeze(-1)], -1))  # (B, R, H)
        m = mask.unsqueeze(-1)
        context = (h * m).sum(1) / m.sum(1).clamp_min(1.0)  # masked mean over the real rows
        present = torch.ones(b, 1) if latent is not None else torch.zeros(b, 1)
        latent = latent if latent is not None else torch.zeros(b, self.latent_dim)
        glob = glob if glob is not None else torch.zeros(b, self.n_globals)
        c = self.cond(torch.cat([_time_embedding(t, self.T_DIM), latent, glob, present], -1))
        r = h.shape[1]
        z = torch.cat([h, context.unsqueeze(1).expand(-1, r, -1), c.unsqueeze(1).expand(-1, r, -1)], -1)
        return self.out(z).squeeze(-1) * mask


class RankDiffusion:
    """The conditional DDIM refiner (see the module docstring).

    Args:
        config: shape, schedule, guidance and training settings.
        scheduler: a ``diffusers`` scheduler (``DDIMScheduler``), injected; its ``num_train_timesteps`` must equal
            ``config.num_train_timesteps``.
        n_features: width of a module row.
        n_globals: number of global features.
    """

    def __init__(self, config: DiffusionConfig, scheduler: Any, n_features: int, n_globals: int) -> None:
        if int(scheduler.config.num_train_timesteps) != config.num_train_timesteps:
            raise ValueError(f"the scheduler has {scheduler.config.num_train_timesteps} training timesteps, the "
                             f"config {config.num_train_timesteps}")  # fmt: skip
        self.config, self.scheduler = config, scheduler
        #: size of PPO's latent: ``config.latent_dim``, or one weight per row feature with ``decoding="linear"``
        self.latent_dim = n_features if config.decoding == "linear" else config.latent_dim
        self.net = RowDenoiser(n_features, n_globals, self.latent_dim, config.hidden)
        if config.decoding == "linear":  # the residual starts at 0: the untrained two-level policy is the decoding
            nn.init.zeros_(self.net.out[-1].weight)
            nn.init.zeros_(self.net.out[-1].bias)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=config.lr)

    @classmethod
    def with_ddim(cls, config: DiffusionConfig, n_features: int, n_globals: int) -> RankDiffusion:
        """With diffusers' ``DDIMScheduler`` (linear betas, epsilon prediction, samples clipped to [-1, 1])."""
        from diffusers import DDIMScheduler

        return cls(config, DDIMScheduler(num_train_timesteps=config.num_train_timesteps, clip_sample=True), n_features,
                   n_globals)  # fmt: skip

    # ------------------------------------------------------------------------------------------ training
    def compute_loss(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
        """Weighted epsilon MSE of ``batch`` (``rows`` (B,R,F), ``mask`` (B,R), ``globals`` (B,G), ``latent`` (B,L),
        ``x0`` (B,R) in [-1, 1]: the scores or the residual, :meth:`sample`, ``reward`` (B,); with
        ``weighting="advantage"`` also ``advantage`` (B,)) with condition dropout."""
        x0, mask = batch["x0"], batch["mask"]
        b = x0.shape[0]
        t = torch.randint(0, self.config.num_train_timesteps, (b,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator) * mask
        x_t = self.scheduler.add_noise(x0, noise, t)
        keep = (torch.rand(b, generator=generator) >= self.config.cond_dropout).float().unsqueeze(-1)
        eps = self._eps(x_t, t, batch, keep)
        per = ((eps - noise) ** 2 * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        c = self.config
        if c.weighting == "advantage":
            if "advantage" not in batch:
                raise ValueError("weighting 'advantage' needs each sample's advantage: fit(..., value_fn=) with the "
                                 "coarse policy's critic")  # fmt: skip
            w = advantage_weights(batch["advantage"].float(), c.temperature, c.max_weight)
        else:
            w = reward_weights(batch["reward"].float(), c.reward_weight)
        return (w * per).sum() / w.sum()

    def _eps(self, x_t: torch.Tensor, t: torch.Tensor, batch: dict, keep: torch.Tensor) -> torch.Tensor:
        """eps with the condition kept where ``keep`` is 1 and dropped (the null condition) where it is 0."""
        cond = self.net(x_t, t, batch["rows"], batch["mask"], batch["latent"], batch["globals"])
        if bool((keep == 1).all()):
            return cond
        null = self.net(x_t, t, batch["rows"], batch["mask"], None, None)
        return keep * cond + (1 - keep) * null

    def fit(self, buffer: ReplayBuffer, steps: int, batch_size: int = 64, seed: int = 0,
            value_fn: Any = None) -> list[float]:  # fmt: skip
        """``steps`` Adam steps on minibatches from ``buffer``; returns the losses. ``value_fn(batch) -> (B,)``: the
        critic's V(s) of a batch's states (``weighting="advantage"``: advantage = the entry's return - V(s))."""
        if self.config.weighting == "advantage" and value_fn is None:
            raise ValueError("weighting 'advantage' needs value_fn (the coarse policy's critic)")
        g, rng = torch.Generator().manual_seed(seed), np.random.default_rng(seed)
        self.net.train()
        losses = []
        for _ in range(steps):
            batch = buffer.sample(batch_size, rng)
            if self.config.weighting == "advantage":
                with torch.no_grad():
                    values = torch.as_tensor(value_fn(batch), dtype=torch.float32).reshape(-1)
                batch["advantage"] = batch["ret"] - values
            loss = self.compute_loss(batch, g)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            losses.append(loss.item())
        self.net.eval()
        return losses

    # ------------------------------------------------------------------------------------------ sampling
    @torch.no_grad()
    def predict_action(self, obs: dict[str, np.ndarray], latent: np.ndarray | None, *, seed: int = 0,
                       guidance_scale: float | None = None) -> np.ndarray:  # fmt: skip
        """The refined per-row scores in [-1, 1] for one observation (``rows``, ``mask``, ``globals``) and PPO's
        coarse ``latent`` (None: unconditional); deterministic for a seed (DDIM, eta 0)."""
        return self.sample(obs, latent, seed=seed, guidance_scale=guidance_scale)[0]

    @torch.no_grad()
    def sample(self, obs: dict[str, np.ndarray], latent: np.ndarray | None, *, seed: int = 0,
               guidance_scale: float | None = None, explore: bool = False
               ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """``(scores, x0)``: :meth:`predict_action`'s scores and what the replay buffer stores for them, the DDIM's
        own sample (decoding 'none': the scores; 'linear': the residual in [-1, 1]). ``explore``: the config's
        ``explore_noise`` is added to that sample first (training rollouts)."""
        g = self.config.guidance_scale if guidance_scale is None else guidance_scale
        rows = torch.as_tensor(obs["rows"], dtype=torch.float32)[None]
        mask = torch.as_tensor(obs["mask"], dtype=torch.float32)[None]
        batch = {"rows": rows, "mask": mask, "globals": torch.as_tensor(obs["globals"], dtype=torch.float32)[None],
                 "latent": None if latent is None else torch.as_tensor(latent, dtype=torch.float32)[None]}  # fmt: skip
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(mask.shape, generator=gen) * mask * self.config.init_noise
        self.scheduler.set_timesteps(self.config.num_inference_steps)
        self.net.eval()
        for t in self.scheduler.timesteps:
            tt = t.reshape(1).expand(1)
            if batch["latent"] is None:
                eps = self.net(x, tt, rows, mask, None, None)
            else:
                eps_c = self.net(x, tt, rows, mask, batch["latent"], batch["globals"])
                eps_u = self.net(x, tt, rows, mask, None, None)
                eps = eps_u + g * (eps_c - eps_u)
            x = self.scheduler.step(eps, t, x, eta=0.0).prev_sample * mask
        if explore and self.config.explore_noise > 0:
            x = x + torch.randn(mask.shape, generator=gen) * mask * self.config.explore_noise
        x = x.clamp(-1.0, 1.0)
        if self.config.decoding == "linear":  # the residual is added before the tanh: the scores never clip
            logits = linear_logits(rows, mask, batch["latent"]) if batch["latent"] is not None else 0.0
            return (torch.tanh(logits + x) * mask)[0].numpy(), x[0].numpy()
        return x[0].numpy(), x[0].numpy()

    # -------------------------------------------------------------------------------------------- files
    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.net.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.net.load_state_dict(state, strict=True)


class ReplayBuffer:
    """(state, coarse latent, the DDIM's per-module sample ``x0``: the scores, or with ``decoding="linear"`` the
    residual, reward, return) tuples for off-policy refits; oldest overwritten.
    ``ret`` is the entry's TD(lambda) return, set after PPO's rollout by :meth:`set_recent` (until then the reward)."""

    def __init__(self, capacity: int, rows: int, n_features: int, n_globals: int, latent_dim: int) -> None:
        self.capacity, self.size, self._next = capacity, 0, 0
        self.data = {"rows": torch.zeros(capacity, rows, n_features), "mask": torch.zeros(capacity, rows),
                     "globals": torch.zeros(capacity, n_globals), "latent": torch.zeros(capacity, latent_dim),
                     "x0": torch.zeros(capacity, rows), "reward": torch.zeros(capacity),
                     "ret": torch.zeros(capacity)}  # fmt: skip

    def add(self, obs: dict[str, np.ndarray], latent: np.ndarray, x0: np.ndarray, reward: float) -> None:
        i = self._next
        for key, value in (("rows", obs["rows"]), ("mask", obs["mask"]), ("globals", obs["globals"]),
                           ("latent", latent), ("x0", np.clip(x0, -1, 1)), ("reward", reward),
                           ("ret", reward)):  # fmt: skip
            self.data[key][i] = torch.as_tensor(np.asarray(value, dtype=np.float32))
        self._next = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def set_recent(self, key: str, values: np.ndarray) -> None:
        """Overwrite ``key`` of the ``len(values)`` most recently added entries (oldest first), e.g. the returns of
        the rollout that added them."""
        v = torch.as_tensor(np.asarray(values, dtype=np.float32)).reshape(-1)
        if len(v) > self.size:
            raise ValueError(f"set_recent: {len(v)} values but only {self.size} entries")
        idx = (self._next - len(v) + torch.arange(len(v))) % self.capacity
        self.data[key][idx] = v

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        if self.size == 0:
            raise ValueError("the replay buffer is empty")
        idx = torch.as_tensor(rng.integers(0, self.size, batch_size))
        return {k: v[idx] for k, v in self.data.items()}

    def __len__(self) -> int:
        return self.size

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
        """``(tensors, counters)`` for a checkpoint: the filled entries (the first ``size`` slots, in slot order)
        and ``{"capacity", "size", "next"}``; :meth:`load_state` puts them back exactly."""
        tensors = {k: v[: self.size].contiguous().clone() for k, v in self.data.items()}
        return tensors, {"capacity": self.capacity, "size": self.size, "next": self._next}

    def load_state(self, tensors: dict[str, torch.Tensor], counters: dict[str, int]) -> None:
        """Restore a :meth:`state` into a buffer of the same capacity and entry shapes (``ValueError`` otherwise).
        A buffer saved before entries had a return (``ret``) gets each entry's reward as its return."""
        size, nxt = int(counters["size"]), int(counters["next"])
        if "ret" not in tensors and "reward" in tensors:
            tensors = {**tensors, "ret": tensors["reward"].clone()}
        if int(counters["capacity"]) != self.capacity or set(tensors) != set(self.data) or not 0 <= nxt < max(
                self.capacity, 1) or size > self.capacity:  # fmt: skip
            raise ValueError(f"the saved replay buffer ({counters}, {sorted(tensors)}) does not fit this one "
                             f"(capacity {self.capacity}, {sorted(self.data)})")  # fmt: skip
        for k, v in tensors.items():
            if tuple(v.shape) != (size, *self.data[k].shape[1:]):
                raise ValueError(f"replay buffer {k!r}: saved shape {tuple(v.shape)}, expected "
                                 f"{(size, *self.data[k].shape[1:])}")  # fmt: skip
            self.data[k].zero_()
            self.data[k][:size] = v
        self.size, self._next = size, nxt
