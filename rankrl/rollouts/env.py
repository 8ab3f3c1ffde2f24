"""RolloutBudgetEnv: learn how to split a GRPO rollout budget over the prompts of each batch (Knapsack RL).

Li et al. 2025 ("Knapsack RL", liziniu/KnapsackRL): GRPO learns nothing from a prompt whose rollouts all succeed
or all fail (zero advantage), so a fixed budget of rollouts is better spent where groups are likely to be mixed.
One env step is one GRPO round: a batch of prompts is drawn, the agent allocates the round's budget, a backend
runs the rollouts (and, live, the GRPO update) and returns per-prompt rewards.

The env talks to a :class:`RolloutBackend`. :class:`~rankrl.rollouts.sim.SimBackend` (``rankrl/RolloutBudget-Sim-v0``)
is a cheap population model of latent success rates that move as training progresses;
:class:`~rankrl.rollouts.live.LiveBackend` (``rankrl/RolloutBudget-v0``, loaded only for ``backend="live"``, so the
sim env never imports torch or TRL) steps a real :class:`~rankrl.rollouts.grpo.RolloutGRPOTrainer` run round by
round from a background thread. Their configs are in :mod:`rankrl.rollouts.config`, the per-prompt record the
observation is built from in :mod:`rankrl.rollouts.history`. Baseline allocators (uniform, knapsack on estimated p,
oracle knapsack on true p, and the ratio oracle) are plain functions of the history.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from rankrl.rollouts.config import LiveConfig, RolloutBudgetConfig, SimConfig
from rankrl.rollouts.history import NEVER, RolloutHistory, group_stats
from rankrl.rollouts.knapsack import allocate, allocate_uniform, estimate_success_rate, nonzero_group_probability
from rankrl.rollouts.sim import SimBackend

__all__ = [
    "BASELINES",
    "N_GLOBALS",
    "N_ROW_FEATURES",
    "RolloutBackend",
    "RolloutBudgetEnv",
    "allocate_max_effective",
    "baseline_allocation",
    "build_observation",
    "make_backend",
    "scores_to_allocation",
]

BASELINES = ("uniform", "knapsack", "knapsack_ratio", "oracle", "oracle_ratio")
N_ROW_FEATURES = 8
N_GLOBALS = 3


# ---------------------------------------------------------------------------------------------- backends
@runtime_checkable
class RolloutBackend(Protocol):
    """What the env needs from whoever runs the rollouts (sim population or a live GRPO trainer)."""

    n_prompts: int

    def reset(self, rng: np.random.Generator) -> None:
        """Start a new run; all randomness comes from ``rng`` (the env's ``np_random``)."""

    def draw_batch(self, size: int) -> np.ndarray:
        """Population indices of the next round's ``size`` prompts."""

    def probe(self, prompt_ids: np.ndarray, allocation: np.ndarray) -> list[np.ndarray]:
        """Rewards in [0, 1] of ``allocation[i]`` rollouts of each prompt, without training (history warm start)."""

    def next_round(self, prompt_ids: np.ndarray, allocation: np.ndarray) -> list[np.ndarray]:
        """Run the round: rollouts per ``allocation``, one GRPO update; per-prompt reward arrays."""

    def progress(self) -> float:
        """Scalar learning-progress level (sim: mean latent p; live: e.g. a running train accuracy)."""

    def success_rates(self, prompt_ids: np.ndarray) -> np.ndarray | None:
        """True success rates (sim, for the oracle and expected metrics) or None (live)."""


def make_backend(
    backend: str | RolloutBackend,
    sim: SimConfig | None = None,
    *,
    live: LiveConfig | None = None,
    config: RolloutBudgetConfig | None = None,
) -> RolloutBackend:
    """Backend by name ("sim", or "live" with the env's ``config``) or an instance passed through."""
    if isinstance(backend, str):
        if backend == "sim":
            return SimBackend(sim)
        if backend == "live":
            from rankrl.rollouts.live import LiveBackend

            if config is None:
                raise ValueError("the live backend needs the env's RolloutBudgetConfig (config=...)")
            return LiveBackend(config, live)
        raise ValueError(f"unknown backend {backend!r}: 'sim', 'live', or pass a RolloutBackend instance")
    if not isinstance(backend, RolloutBackend):
        raise TypeError(f"backend must be 'sim', 'live' or implement RolloutBackend, got {type(backend).__name__}")
    return backend


# ---------------------------------------------------------------------------------------------- pure functions
def scores_to_allocation(scores: np.ndarray, budget: int, n_min: int, n_max: int, temperature: float) -> np.ndarray:
    """Map per-prompt scores to an integer allocation that spends ``budget`` exactly within [n_min, n_max].

    Weights ``w = softmax(temperature * clip(score, -1, 1))`` (NaN scores count as 0). The spare budget
    ``budget - P * n_min`` is split in proportion to ``w``; shares above ``n_max`` are capped and their excess
    re-split over the uncapped prompts in proportion to ``w`` (water-filling). Real targets are floored and the
    remaining units go to the largest fractional parts (largest remainder), lower index first on ties, only to
    prompts below ``n_max``. Equal scores give the most even split.

    Example:
        >>> scores_to_allocation(np.array([1.0, 0.0, -1.0]), 24, 2, 16, 4.0).tolist()
        [16, 6, 2]
    """
    s = np.clip(np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=0.0), -1.0, 1.0)
    n = s.size
    if not n * n_min <= budget <= n * n_max:
        raise ValueError(f"budget {budget} infeasible for {n} prompts in [{n_min}, {n_max}]")
    z = temperature * s
    w = np.exp(z - z.max())
    target = np.full(n, float(n_min))
    free = np.ones(n, dtype=bool)
    spare = float(budget - n * n_min)
    for _ in range(n):  # water-filling: at most n prompts can hit the cap
        share = np.where(free, spare * w / w[free].sum(), 0.0)
        over = free & (n_min + share > n_max)
        if not over.any():
            target[free] = n_min + share[free]
            break
        target[over] = n_max
        spare -= float((n_max - n_min) * over.sum())
        free &= ~over
    alloc = np.clip(np.floor(target + 1e-9), n_min, n_max).astype(np.int64)
    rest = budget - int(alloc.sum())
    frac = target - alloc
    if rest > 0:
        order = np.lexsort((np.arange(n), -frac))
        order = order[alloc[order] < n_max]
        alloc[order[:rest]] += 1
    elif rest < 0:  # float round-off only: take back from the smallest fractions above n_min
        order = np.lexsort((np.arange(n), frac))
        order = order[alloc[order] > n_min]
        alloc[order[:-rest]] -= 1
    return alloc


def allocate_max_effective(p: np.ndarray, budget: int, n_min: int, n_max: int) -> np.ndarray:
    """Exact maximiser of the expected effective rollouts ``sum_i N_i (1 - p_i^N_i - (1-p_i)^N_i)`` (DP).

    The knapsack value weights groups by p(1-p)^2; this reference ("ratio oracle") optimises the metric the env
    rewards. O(P * budget * n_max).
    """
    p = np.asarray(p, dtype=np.float64)
    counts = np.arange(n_min, n_max + 1)
    gain = counts[None, :] * nonzero_group_probability(counts[None, :], p[:, None])
    best = np.full(budget + 1, -np.inf)
    best[0] = 0.0
    choice = np.zeros((p.size, budget + 1), dtype=np.int64)
    # cand[j, s] = best[s - counts[j]] + gain[i, j], read from a copy of best with n_max -inf's in front
    idx = np.arange(budget + 1)[None, :] - counts[:, None] + n_max
    padded = np.full(budget + 1 + n_max, -np.inf)
    cols = np.arange(budget + 1)
    for i in range(p.size):
        padded[n_max:] = best
        cand = padded[idx] + gain[i][:, None]
        pick = cand.argmax(axis=0)  # first maximum: the fewest rollouts on ties
        best, choice[i] = cand[pick, cols], counts[pick]
    if not np.isfinite(best[budget]):
        raise ValueError(f"budget {budget} infeasible for {p.size} prompts in [{n_min}, {n_max}]")
    out, left = np.zeros(p.size, dtype=np.int64), budget
    for i in range(p.size - 1, -1, -1):
        out[i] = choice[i, left]
        left -= out[i]
    return out


def baseline_allocation(
    name: str,
    *,
    successes: np.ndarray,
    trials: np.ndarray,
    budget: int,
    n_min: int,
    n_max: int,
    true_p: np.ndarray | None = None,
    prior: tuple[float, float] = (1.0, 1.0),
) -> np.ndarray:
    """Allocation by one of :data:`BASELINES` from a batch's history counts.

    * ``uniform``: the most even split.
    * ``knapsack``: Knapsack RL's :func:`~rankrl.rollouts.knapsack.allocate` on Beta-posterior-mean p.
    * ``knapsack_ratio``: :func:`allocate_max_effective` (the env's own objective) on the same estimates.
    * ``oracle`` / ``oracle_ratio``: the same two on the true p (``true_p``, sim only).
    """
    n = np.asarray(trials).size
    if name == "uniform":
        return allocate_uniform(n, budget, n_min, n_max)
    if name in ("knapsack", "knapsack_ratio"):
        fn = allocate if name == "knapsack" else allocate_max_effective
        return fn(estimate_success_rate(successes, trials, *prior), budget, n_min, n_max)
    if name in ("oracle", "oracle_ratio"):
        if true_p is None:
            raise ValueError(f"the {name} baseline needs true success rates (sim backend only)")
        fn = allocate if name == "oracle" else allocate_max_effective
        return fn(np.asarray(true_p), budget, n_min, n_max)
    raise ValueError(f"unknown baseline {name!r}; choose from {BASELINES}")


def _beta_moment(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    """E[p^k] for p ~ Beta(a, b): prod_{j<k} (a + j) / (a + b + j)."""
    out = np.ones_like(a)
    for j in range(k):
        out *= (a + j) / (a + b + j)
    return out


def build_observation(
    history: RolloutHistory,
    prompt_ids: np.ndarray,
    *,
    round_idx: int,
    horizon: int,
    budget: int,
    config: RolloutBudgetConfig,
) -> dict[str, np.ndarray]:
    """Set observation of a batch (shared by the env and the learned :class:`~rankrl.rollouts.allocator.Allocator`).

    Rows (one per prompt, all in [0, 1]): log1p(trials)/log(1025); Beta posterior mean; 2 x posterior std;
    last-round success fraction; rounds since last seen / horizon (1 if never); never seen; posterior
    probability of a mixed group at ``rollouts_per_prompt``; the knapsack rule's share (N - n_min) /
    (n_max - n_min), so the policy can learn corrections to it. Globals: round / horizon, (budget / P) / n_max,
    P / rows.
    """
    ids = np.asarray(prompt_ids)
    n, rows = ids.size, config.rows
    if n > rows:
        raise ValueError(f"{n} prompts do not fit the policy's {rows} rows")
    t, s = history.trials[ids], history.successes[ids]
    a, b = s + config.prior_alpha, t - s + config.prior_beta
    mean = a / (a + b)
    std = np.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))
    seen = history.last_seen[ids] > NEVER
    since = np.where(seen, (round_idx - history.last_seen[ids]) / max(horizon, 1), 1.0)
    k = config.rollouts_per_prompt
    p_mixed = 1.0 - _beta_moment(a, b, k) - _beta_moment(b, a, k)
    knap = (allocate(mean, budget, config.n_min, config.n_max) - config.n_min) / max(config.n_max - config.n_min, 1)
    feats = np.stack(
        [np.log1p(t) / np.log(1025.0), mean, 2 * std, history.last_frac[ids], since, ~seen, p_mixed, knap], axis=1
    )
    out_rows = np.zeros((rows, N_ROW_FEATURES), dtype=np.float32)
    out_rows[:n] = np.clip(feats, 0.0, 1.0)
    mask = np.zeros(rows, dtype=np.float32)
    mask[:n] = 1.0
    glob = np.array([round_idx / max(horizon, 1), budget / n / config.n_max, n / rows], dtype=np.float32)
    return {"rows": out_rows, "mask": mask, "globals": np.clip(glob, 0.0, 1.0)}


# ---------------------------------------------------------------------------------------------- the env
class RolloutBudgetEnv(gym.Env):
    """Split each GRPO round's rollout budget over its prompts to maximise the effective-rollout ratio.

    ## Action Space
    ``Box(-1, 1, (rows,), float32)``: one score per prompt row (padded rows ignored). Scores become an integer
    allocation with :func:`scores_to_allocation`: ``softmax(temperature * score)`` shares of the spare budget
    on top of ``n_min``, capped at ``n_max`` with water-filling, largest-remainder rounding; it always sums
    to ``B = P * rollouts_per_prompt``. :meth:`step_allocation` takes an integer allocation directly
    (baselines).

    ## Observation Space
    ``Dict(rows=Box(0, 1, (rows, 8)), mask=Box(0, 1, (rows,)), globals=Box(0, 1, (3,)))``: per-prompt history
    features and the batch's mask, see :func:`build_observation`.

    ## Rewards
    Effective rollout ratio of the round: rollouts in groups with non-zero reward variance / all rollouts, plus
    ``progress_weight`` times the increase of ``backend.progress()`` (sim: population mean p).

    ## Episode End
    Truncated after ``rounds`` rounds, or when the backend reports its run ``finished`` (live: the GRPO run has
    ``steps == rounds`` steps, so both coincide). Never terminated.

    ## Arguments
    ``backend`` ("sim", "live" or a :class:`RolloutBackend`), ``config`` / ``sim`` / ``live`` dataclasses, or their
    fields as keyword arguments (``gym.make("rankrl/RolloutBudget-Sim-v0", difficulty="hard", history_rounds=1)``,
    ``gym.make("rankrl/RolloutBudget-v0", model="path/to/checkpoint", rounds=8)``); unknown keywords, and another
    backend's keywords, raise ``ValueError``. The live backend needs ``history_rounds=0``, its default when no
    ``config`` is given. ``info`` holds the allocation, prompt ids, the realised ratio, the fraction of non-zero
    groups and, in sim, the expected ratio under the true p. ``close()`` closes the backend (live: stops the run).

    ## Version History
    * v0: initial version (sim backend); live backend (:class:`LiveBackend`) added with the same spaces and reward.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        backend: str | RolloutBackend = "sim",
        config: RolloutBudgetConfig | None = None,
        sim: SimConfig | None = None,
        render_mode: str | None = None,
        live: LiveConfig | None = None,
        **overrides: Any,
    ) -> None:
        env_keys = {f.name for f in fields(RolloutBudgetConfig)}
        backend_keys = {"sim": {f.name for f in fields(SimConfig)}, "live": {f.name for f in fields(LiveConfig)}}
        unknown = set(overrides) - env_keys - backend_keys["sim"] - backend_keys["live"]
        if unknown:
            valid = env_keys | backend_keys["sim"] | backend_keys["live"]
            raise ValueError(f"unknown RolloutBudgetEnv arguments {sorted(unknown)}; valid: {sorted(valid)}")
        name = backend if isinstance(backend, str) else None
        env_over = {k: v for k, v in overrides.items() if k in env_keys}
        own_over = {k: v for k, v in overrides.items() if k in backend_keys.get(name, set()) and k not in env_keys}
        stray = sorted(set(overrides) - set(env_over) - set(own_over))
        if stray:
            raise ValueError(f"arguments {stray} belong to another backend's config, not to backend {backend!r}")
        if live is not None and name != "live":
            raise ValueError(f"a LiveConfig was given for backend {backend!r}")
        if name == "live" and config is None:
            env_over.setdefault("history_rounds", 0)  # no training-free probe live: see LiveBackend
        self.config = RolloutBudgetConfig(**({**_asdict(config), **env_over} if config else env_over))
        if name == "live":
            live_cfg = LiveConfig(**({**_asdict(live), **own_over} if live else own_over))
            self.backend = make_backend(backend, live=live_cfg, config=self.config)
        else:
            self.backend = make_backend(backend, SimConfig(**({**_asdict(sim), **own_over} if sim else own_over)))
        check = getattr(self.backend, "check_env_config", None)  # live: the backend was built for this shape
        if callable(check):
            check(self.config)
        if self.config.prompts_per_round > self.backend.n_prompts:
            raise ValueError(
                f"prompts_per_round ({self.config.prompts_per_round}) > population ({self.backend.n_prompts})"
            )
        if render_mode is not None:
            raise ValueError("RolloutBudgetEnv has no render modes")
        self.render_mode = render_mode
        rows = self.config.rows
        self.action_space = spaces.Box(-1.0, 1.0, (rows,), dtype=np.float32)
        self.observation_space = spaces.Dict(
            {
                "rows": spaces.Box(0.0, 1.0, (rows, N_ROW_FEATURES), dtype=np.float32),
                "mask": spaces.Box(0.0, 1.0, (rows,), dtype=np.float32),
                "globals": spaces.Box(0.0, 1.0, (N_GLOBALS,), dtype=np.float32),
            }
        )
        self.history = RolloutHistory(self.backend.n_prompts)
        self.round = 0
        self.batch = np.arange(0)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        cfg = self.config
        self.backend.reset(self.np_random)
        self.history = RolloutHistory(self.backend.n_prompts)
        everyone = np.arange(self.backend.n_prompts)
        uniform = np.full(everyone.size, cfg.rollouts_per_prompt)
        for _ in range(cfg.history_rounds):  # warm start: uniform past rounds, stamped as seen just before
            self.history.record(everyone, self.backend.probe(everyone, uniform), round_idx=-1)
        self.round = 0
        self.batch = self.backend.draw_batch(cfg.prompts_per_round)
        return self._obs(), {"prompt_ids": self.batch.copy()}

    def _obs(self) -> dict[str, np.ndarray]:
        return build_observation(
            self.history, self.batch, round_idx=self.round, horizon=self.config.rounds,
            budget=self.config.budget, config=self.config,
        )  # fmt: skip

    def action_to_allocation(self, action: np.ndarray) -> np.ndarray:
        """Integer allocation of the current batch for a score action (see the class docstring)."""
        cfg = self.config
        scores = np.asarray(action, dtype=np.float64).reshape(-1)[: self.batch.size]
        return scores_to_allocation(scores, cfg.budget, cfg.n_min, cfg.n_max, cfg.temperature)

    def baseline_allocation(self, name: str) -> np.ndarray:
        """Allocation of the current batch by one of :data:`BASELINES`."""
        cfg = self.config
        return baseline_allocation(
            name, successes=self.history.successes[self.batch], trials=self.history.trials[self.batch],
            budget=cfg.budget, n_min=cfg.n_min, n_max=cfg.n_max,
            true_p=self.backend.success_rates(self.batch), prior=(cfg.prior_alpha, cfg.prior_beta),
        )  # fmt: skip

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        return self.step_allocation(self.action_to_allocation(action))

    def step_allocation(self, allocation: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        """Run one round with an explicit integer allocation (must spend B exactly within the bounds)."""
        cfg = self.config
        alloc = np.asarray(allocation, dtype=np.int64)
        if alloc.shape != self.batch.shape or alloc.sum() != cfg.budget:
            raise ValueError(f"allocation must have shape {self.batch.shape} and sum {cfg.budget}, got {alloc}")
        if alloc.min() < cfg.n_min or alloc.max() > cfg.n_max:
            raise ValueError(f"allocation outside [{cfg.n_min}, {cfg.n_max}]: {alloc}")
        true_p = self.backend.success_rates(self.batch)
        before = self.backend.progress()
        rewards = self.backend.next_round(self.batch, alloc)
        self.history.record(self.batch, rewards, self.round)
        sizes, _, mixed = group_stats(rewards)
        ratio = float((sizes * mixed).sum() / sizes.sum())
        progress = self.backend.progress() - before
        info: dict[str, Any] = {
            "allocation": alloc,
            "prompt_ids": self.batch.copy(),
            "effective_ratio": ratio,
            "frac_nonzero_groups": float(mixed.mean()),
            "progress": progress,
        }
        if true_p is not None:
            p_mixed = nonzero_group_probability(alloc, true_p)
            info["expected_effective_ratio"] = float((alloc * p_mixed).sum() / alloc.sum())
        self.round += 1
        truncated = self.round >= cfg.rounds or bool(getattr(self.backend, "finished", False))
        self.batch = self.backend.draw_batch(cfg.prompts_per_round)
        return self._obs(), float(ratio + cfg.progress_weight * progress), False, truncated, info

    def close(self) -> None:
        """Close the backend if it can be (live: stop the GRPO run and join its thread)."""
        close = getattr(self.backend, "close", None)
        if callable(close):
            close()
        super().close()


def _asdict(cfg: object) -> dict[str, Any]:
    return {f.name: getattr(cfg, f.name) for f in fields(cfg)}  # shallow, unlike dataclasses.asdict
