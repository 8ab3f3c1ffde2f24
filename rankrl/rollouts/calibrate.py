"""Calibrate the RolloutBudget sim (:class:`~rankrl.rollouts.config.SimConfig`) against live GRPO runs.

Live observations are per-prompt ``(round, successes, trials)`` triples, ``outcomes[prompt_id] = [(r, k, n), ...]``,
as :func:`collect_live_outcomes` records them from the live env under the uniform allocation. :func:`fit_sim_config`
fits, in this order:

1. **difficulty**: the initial success-rate distribution, by maximum likelihood of the beta-binomial on each
   prompt's *first-visit* counts (``scipy.optimize`` on log a, log b; ``scipy.stats.betabinom``). A 2-component
   Beta mixture is fitted too (``max_components=2``) and kept only if its BIC beats the single Beta by more than
   10 (clearly bimodal). First visits happen in the first epoch, at different rounds, so prompts first seen late
   carry some training gain (transfer); with few rounds per epoch this bias is small. ``SimConfig.difficulty`` must
   name a key of :data:`~rankrl.rollouts.config.DIFFICULTY_MIXES`, so the fitted mix is registered there at
   runtime under a name derived from its parameters (``"calibrated-<digest>"``, idempotent); a process that
   rebuilds the config from its fields must register the mix again (:func:`register_mix`).
2. **drift_std**: from the excess variance of success-fraction changes between consecutive visits of a prompt over
   the binomial noise, mapped to the logit scale by the delta method (``Var dp ~ (p (1 - p))^2 drift^2 dr``).
   Needs ``min_revisits`` revisit pairs with an informative pooled rate, else the SimConfig default is kept. The
   learning gains add spread too, so this reads as an upper bound.
3. **learn_rate / transfer_rate**: least squares between the observed mean success rate of each round
   (``sum k / sum n`` over its prompts) and the sim's expected one, by running :class:`SimBackend` itself with the
   observed batch sizes and rollout counts, averaged over ``sims`` seeded replicas (common random numbers, so the
   objective is smooth in the rates). The minimum is found on a log grid then refined on a finer grid around it.
   The two rates act alike on the mean trajectory (both raise logits), so they are only weakly identified apart;
   fix one (``transfer_rate=0.0``) to fit the other cleanly.

Any SimConfig field given in ``**fixed`` is used as is and not fitted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any

import numpy as np
from scipy import optimize, stats

from rankrl.rollouts.config import DIFFICULTY_MIXES, SimConfig
from rankrl.rollouts.sim import SimBackend

__all__ = [
    "Outcomes",
    "calibrate_sim",
    "collect_live_outcomes",
    "fit_difficulty",
    "fit_drift_std",
    "fit_rates",
    "fit_sim_config",
    "register_mix",
]

Outcomes = Mapping[int, Sequence[tuple[int, int, int]]]
Mix = tuple[tuple[float, float, float], ...]

_LOG_BOUNDS = (np.log(1e-2), np.log(1e3))  # Beta a, b in [0.01, 1000]


# ---------------------------------------------------------------------------------------------- difficulty
def _first_visits(outcomes: Outcomes) -> tuple[np.ndarray, np.ndarray]:
    ks, ns = [], []
    for obs in outcomes.values():
        seen = [o for o in obs if o[2] > 0]
        if seen:
            _, k, n = min(seen, key=lambda o: o[0])
            ks.append(int(k))
            ns.append(int(n))
    return np.array(ks, dtype=np.int64), np.array(ns, dtype=np.int64)


def _mixture_nll(params: np.ndarray, k: np.ndarray, n: np.ndarray) -> float:
    """Negative log likelihood; params = (log a_1, log b_1, ..., [w logits of components 2..C])."""
    c = (len(params) + 1) // 3
    ab = np.exp(np.clip(params[: 2 * c], *_LOG_BOUNDS)).reshape(c, 2)
    logw = np.concatenate([[0.0], params[2 * c :]])
    logw = logw - np.logaddexp.reduce(logw)
    comp = np.stack([stats.betabinom.logpmf(k, n, a, b) for a, b in ab]) + logw[:, None]
    return float(-np.logaddexp.reduce(comp, axis=0).sum())


def _fit_components(k: np.ndarray, n: np.ndarray, starts: list[np.ndarray]) -> tuple[Mix, float]:
    c = (len(starts[0]) + 1) // 3
    bounds = [_LOG_BOUNDS] * (2 * c) + [(-6.0, 6.0)] * (c - 1)
    best = None
    for x0 in starts:
        res = optimize.minimize(_mixture_nll, x0, args=(k, n), method="L-BFGS-B", bounds=bounds)
        if best is None or res.fun < best.fun:
            best = res
    ab = np.exp(best.x[: 2 * c]).reshape(c, 2)
    w = np.exp(np.concatenate([[0.0], best.x[2 * c :]]))
    w = w / w.sum()
    mix = tuple((float(wi), float(a), float(b)) for wi, (a, b) in zip(w, ab, strict=True))
    return mix, float(best.fun)


def _moment_start(frac: np.ndarray) -> np.ndarray:
    m = float(np.clip(frac.mean(), 0.02, 0.98)) if frac.size else 0.5
    v = float(frac.var()) if frac.size > 1 else 0.0
    conc = m * (1 - m) / v - 1 if v > 1e-6 else 2.0
    conc = float(np.clip(conc, 0.2, 200.0))
    return np.log([m * conc, (1 - m) * conc])


def fit_difficulty(outcomes: Outcomes, *, max_components: int = 2, bic_margin: float = 10.0) -> Mix:
    """Beta (or 2-Beta mixture) of initial success rates, by beta-binomial ML on first-visit counts.

    Returns ``((w, a, b), ...)`` as in :data:`DIFFICULTY_MIXES`. Without any observation: ``((1, 1, 1),)``.
    """
    k, n = _first_visits(outcomes)
    if k.size == 0:
        return ((1.0, 1.0, 1.0),)
    frac = k / n
    one, nll1 = _fit_components(k, n, [_moment_start(frac), np.zeros(2)])
    if max_components < 2 or k.size < 20:
        return one
    lo, hi = frac <= np.median(frac), frac > np.median(frac)
    split = np.concatenate([_moment_start(frac[lo]), _moment_start(frac[hi] if hi.any() else frac), [0.0]])
    u_shape = np.array([np.log(0.5), np.log(5.0), np.log(5.0), np.log(0.5), 0.0])
    two, nll2 = _fit_components(k, n, [split, u_shape])
    delta_bic = 2 * (nll1 - nll2) - 3 * np.log(k.size)
    return two if delta_bic > bic_margin else one


def register_mix(mix: Mix, name: str | None = None) -> str:
    """Add ``mix`` to :data:`DIFFICULTY_MIXES` (default name ``calibrated-<digest of the params>``); returns the key."""
    mix = tuple((round(float(w), 6), round(float(a), 6), round(float(b), 6)) for w, a, b in mix)
    if not mix or any(not (w >= 0 and a > 0 and b > 0) for w, a, b in mix) or sum(w for w, _, _ in mix) <= 0:
        raise ValueError(f"a mix needs (w >= 0, a > 0, b > 0) triples with positive total weight, got {mix}")
    if name is None:
        name = "calibrated-" + hashlib.sha1(repr(mix).encode()).hexdigest()[:10]
    if name in DIFFICULTY_MIXES and DIFFICULTY_MIXES[name] != mix:
        raise ValueError(f"difficulty mix {name!r} already exists with other parameters")
    DIFFICULTY_MIXES[name] = mix
    return name


# ---------------------------------------------------------------------------------------------- drift
def fit_drift_std(outcomes: Outcomes, *, min_revisits: int = 30) -> float | None:
    """Logit random-walk std from revisit variance, or None when there are too few informative revisit pairs."""
    d, noise, scale = [], [], []
    for obs in outcomes.values():
        seq = sorted((o for o in obs if o[2] > 0), key=lambda o: o[0])
        for (r1, k1, n1), (r2, k2, n2) in zip(seq, seq[1:], strict=False):
            tot = n1 + n2
            pbar = (k1 + k2) / tot
            if not 0 < pbar < 1 or r2 <= r1:
                continue
            var = pbar * (1 - pbar) * tot / max(tot - 1, 1)  # unbiased for p (1 - p)
            d.append(k2 / n2 - k1 / n1)
            noise.append(var * (1 / n1 + 1 / n2))
            scale.append(var**2 * (r2 - r1))
    if len(d) < min_revisits:
        return None
    d_arr = np.array(d)
    excess = float(np.mean((d_arr - d_arr.mean()) ** 2) - np.mean(noise))
    return float(np.sqrt(max(excess, 0.0) / np.mean(scale)))


# ---------------------------------------------------------------------------------------------- rates
def _round_plan(outcomes: Outcomes) -> tuple[list[np.ndarray | None], np.ndarray, np.ndarray]:
    """Per round 0..R-1: observed rollout counts (None if unobserved), observed mean rate, its trial weight."""
    per_round: dict[int, list[tuple[int, int]]] = {}
    for obs in outcomes.values():
        for r, k, n in obs:
            if n > 0:
                per_round.setdefault(int(r), []).append((int(k), int(n)))
    if not per_round:
        raise ValueError("no observation with trials > 0")
    first = min(per_round)
    n_rounds = max(per_round) - first + 1
    common = max(per_round.values(), key=len)
    plan: list[np.ndarray | None] = [None] * n_rounds
    obs_rate, weight = np.zeros(n_rounds), np.zeros(n_rounds)
    for r in range(n_rounds):
        rows = per_round.get(r + first)
        if rows:
            plan[r] = np.array([n for _, n in rows])
            weight[r] = sum(n for _, n in rows)
            obs_rate[r] = sum(k for k, _ in rows) / weight[r]
    fill = np.array([n for _, n in common])
    return [p if p is not None else fill for p in plan], obs_rate, weight


def _simulate_rates(config: SimConfig, plan: list[np.ndarray], sims: int, seed: int) -> np.ndarray:
    """Expected mean success rate of each round's batch, averaged over ``sims`` seeded SimBackend runs."""
    out = np.zeros(len(plan))
    for s in range(sims):
        sim = SimBackend(config)
        sim.reset(np.random.default_rng([seed, s]))
        for r, alloc in enumerate(plan):
            ids = sim.draw_batch(alloc.size)
            out[r] += float((alloc * sim.success_rates(ids)).sum() / alloc.sum())
            sim.next_round(ids, alloc)
    return out / sims


def fit_rates(
    outcomes: Outcomes,
    base: SimConfig,
    *,
    fit_learn: bool = True,
    fit_transfer: bool = True,
    sims: int = 8,
    seed: int = 0,
) -> tuple[float, float]:
    """Least-squares (learn_rate, transfer_rate) matching the per-round mean success rate (see the module doc)."""
    plan, obs_rate, weight = _round_plan(outcomes)
    if any(a.size > base.n_prompts for a in plan):
        raise ValueError(f"a round has more prompts than the population ({base.n_prompts})")
    w = weight / weight.sum()

    def loss(lr: float, tr: float) -> float:
        cfg = SimConfig(**{**{f.name: getattr(base, f.name) for f in fields(SimConfig)},
                           "learn_rate": lr, "transfer_rate": tr})  # fmt: skip
        return float((w * (_simulate_rates(cfg, plan, sims, seed) - obs_rate) ** 2).sum())

    def grid(lo: float, hi: float, num: int, fit: bool, fixed: float) -> np.ndarray:
        return np.concatenate([[0.0], np.geomspace(lo, hi, num)]) if fit else np.array([fixed])

    lrs = grid(1e-3, 1.0, 13, fit_learn, base.learn_rate)
    trs = grid(1e-3, 0.5, 10, fit_transfer, base.transfer_rate)
    best = min(((loss(lr, tr), lr, tr) for lr in lrs for tr in trs), key=lambda t: t[0])

    def fine(x: float, fit: bool, step: float) -> np.ndarray:
        if not fit:
            return np.array([x])
        if x == 0.0:
            return np.array([0.0, 5e-4, 1e-3])
        return x * np.geomspace(1 / step, step, 7)

    lr_step, tr_step = (1e3) ** (1 / 12), (500.0) ** (1 / 9)
    cands = [(lr, tr) for lr in fine(best[1], fit_learn, lr_step) for tr in fine(best[2], fit_transfer, tr_step)]
    best = min([best, *((loss(lr, tr), lr, tr) for lr, tr in cands)], key=lambda t: t[0])
    return float(best[1]), float(best[2])


# ---------------------------------------------------------------------------------------------- API
def fit_sim_config(
    outcomes: Outcomes,
    n_prompts: int,
    *,
    max_components: int = 2,
    min_revisits: int = 30,
    sims: int = 8,
    seed: int = 0,
    **fixed: Any,
) -> SimConfig:
    """A :class:`SimConfig` fitted to live ``outcomes`` (``{prompt_id: [(round, successes, trials), ...]}``).

    ``fixed`` SimConfig fields are kept as given (e.g. ``transfer_rate=0.0``, ``difficulty="hard"``); the rest are
    fitted as the module docstring describes. The fitted difficulty mix is registered in ``DIFFICULTY_MIXES`` and
    ``config.difficulty`` names it: ``DIFFICULTY_MIXES[config.difficulty]`` gives its ``(w, a, b)`` triples.
    """
    names = {f.name for f in fields(SimConfig)} - {"n_prompts"}
    unknown = set(fixed) - names
    if unknown:
        raise ValueError(f"unknown SimConfig fields {sorted(unknown)}; valid: {sorted(names)}")
    if not outcomes or not any(n > 0 for obs in outcomes.values() for _, _, n in obs):
        raise ValueError("outcomes hold no observation with trials > 0")
    if max(int(p) for p in outcomes) >= n_prompts:
        raise ValueError(f"prompt ids must lie in [0, n_prompts={n_prompts})")
    params: dict[str, Any] = {"n_prompts": n_prompts, **fixed}
    if "difficulty" not in fixed:
        params["difficulty"] = register_mix(fit_difficulty(outcomes, max_components=max_components))
    if "drift_std" not in fixed:
        drift = fit_drift_std(outcomes, min_revisits=min_revisits)
        if drift is not None:
            params["drift_std"] = drift
    fit_learn, fit_transfer = "learn_rate" not in fixed, "transfer_rate" not in fixed
    if fit_learn or fit_transfer:
        lr, tr = fit_rates(outcomes, SimConfig(**params), fit_learn=fit_learn, fit_transfer=fit_transfer,
                           sims=sims, seed=seed)  # fmt: skip
        params.update(learn_rate=lr, transfer_rate=tr)
    return SimConfig(**params)


def collect_live_outcomes(
    env_kwargs: Mapping[str, Any], rounds: int, seed: int, *, env_id: str = "rankrl/RolloutBudget-v0"
) -> dict[int, list[tuple[int, int, int]]]:
    """Run ``rounds`` rounds of the (live) env with the uniform allocation; per-prompt (round, successes, trials).

    Counts come from the env's :class:`~rankrl.rollouts.history.RolloutHistory` deltas of each round's batch;
    rewards in [0, 1] that are not binary give rounded reward sums as successes. ``env_kwargs`` go to
    ``gymnasium.make`` with ``rounds=rounds``; the env is closed (live: the GRPO run stopped) on return.
    """
    return _collect(env_kwargs, rounds, seed, env_id)[0]


def _collect(
    env_kwargs: Mapping[str, Any], rounds: int, seed: int, env_id: str
) -> tuple[dict[int, list[tuple[int, int, int]]], int]:
    import gymnasium as gym

    import rankrl  # noqa: F401 - registers the envs

    env = gym.make(env_id, **{**dict(env_kwargs), "rounds": rounds})
    out: dict[int, list[tuple[int, int, int]]] = {}
    try:
        base = env.unwrapped
        env.reset(seed=seed)
        for r in range(rounds):
            ids = base.batch.copy()
            succ0, trials0 = base.history.successes[ids].copy(), base.history.trials[ids].copy()
            _, _, terminated, truncated, _ = base.step_allocation(base.baseline_allocation("uniform"))
            ds, dt = base.history.successes[ids] - succ0, base.history.trials[ids] - trials0
            for i, s, t in zip(ids.tolist(), ds, dt, strict=True):
                out.setdefault(int(i), []).append((r, int(round(s)), int(round(t))))
            if terminated or truncated:
                break
    finally:
        env.close()
    return out, int(base.backend.n_prompts)


def calibrate_sim(
    env_kwargs: Mapping[str, Any], rounds: int, seed: int, *, env_id: str = "rankrl/RolloutBudget-v0", **fit_kwargs: Any
) -> SimConfig:
    """:func:`collect_live_outcomes` then :func:`fit_sim_config` (population size from the env's backend)."""
    outcomes, n_prompts = _collect(env_kwargs, rounds, seed, env_id)
    return fit_sim_config(outcomes, n_prompts, **fit_kwargs)
