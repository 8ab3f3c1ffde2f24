"""Running and summarising episodes of the rank env: one episode under any allocator (a policy's action or a
``{module: rank}`` rule), its totals, the tables and heatmaps ``train-policy`` prints and writes."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["REWARD_TERMS", "episode_summary", "flat_summary", "plot_rank_heatmap", "print_table", "rollout_episode",
           "rollout_metrics", "uniform_allocator"]  # fmt: skip

REWARD_TERMS = ("quality", "params", "flops", "tx", "nan", "lost")


def uniform_allocator(obs: Any, env: Any) -> dict[str, int]:
    """Uniform LoRA at the coming round's budget (:func:`rankrl.ranks.baselines.uniform`), for episodes."""
    from rankrl.ranks.baselines import uniform

    env = env.unwrapped
    return uniform(env.targets, env.round_budget(), env.grid, r_max=env.config.run.r_max)


def rollout_episode(env: Any, act: Callable[[Any, Any], Any], seed: int) -> list[dict[str, Any]]:
    """Run one episode; ``act(obs, env)`` returns an action array (``env.step``) or a ``{module: rank}`` request
    (``env.step_allocation``). Returns every step's ``info``."""
    env = env.unwrapped
    obs, _ = env.reset(seed=seed)
    infos, done = [], False
    while not done:
        choice = act(obs, env)
        step = env.step_allocation if isinstance(choice, Mapping) else env.step
        obs, _, terminated, truncated, info = step(choice)
        infos.append(info)
        done = terminated or truncated
    return infos


def episode_summary(infos: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals of an episode: reward and its terms, final quality, mean params/bits, transmit seconds, rounds whose
    update missed the deadline (``lost_rounds``), worst violation, and the rank allocation of every decision
    (``ranks``)."""
    last = infos[-1]
    out: dict[str, Any] = {"reward": float(sum(i["reward/total"] for i in infos))}
    out.update({f"reward_{t}": float(sum(i[f"reward/{t}"] for i in infos)) for t in REWARD_TERMS})
    out.update({"eval_loss": last["quality/eval_loss"], "accuracy": last["quality/accuracy"],
                "params": float(np.mean([i["cost/params"] for i in infos])),
                "bits": float(np.mean([i["cost/bits"] for i in infos])),
                "tx_seconds": float(sum(i["cost/tx_seconds"] for i in infos)),
                "lost_rounds": float(sum(i["tx/lost"] for i in infos)),
                "violation": float(max(i["budget/violation"] for i in infos)),
                "raw_violation": float(max(i["budget/raw_violation"] for i in infos)),
                "cap_used": float(np.mean([i.get("budget/used_params", math.nan) for i in infos])),
                "ranks": [dict(i["ranks"]) for i in infos]})  # fmt: skip
    return out


def plot_rank_heatmap(targets: Any, allocations: list[Mapping[str, int]], out: str | os.PathLike,
                      title: str = "", r_max: int | None = None, columns: list[str] | None = None,
                      xlabel: str = "decision point") -> Path:  # fmt: skip
    """Modules (rows) x allocations (columns: decision points ``d0, d1, ...`` unless ``columns`` names them, e.g.
    training steps) heatmap of ranks (colour scale 0..r_max), each cell annotated; atomic PNG write."""
    from rankrl.plots import annotated_heatmap

    grid = np.array([[a[t.name] for a in allocations] for t in targets], dtype=float)
    columns = columns if columns is not None else [f"d{j}" for j in range(len(allocations))]
    return annotated_heatmap(grid, [f"L{t.layer_index} {t.kind}" for t in targets], columns, out, title=title,
                             vmax=r_max, xlabel=xlabel, fontsize=6, cell=(0.8, 0.22))  # fmt: skip


def rollout_metrics(episodes: list[dict[str, Any]]) -> dict[str, float]:
    """What a training rollout logs about the episodes it finished (:func:`episode_summary` each): mean reward and
    its terms, budget use, costs, lost rounds and final quality (``{}`` when none finished)."""
    if not episodes:
        return {}
    eps = episodes
    out = {"rollout/ep_reward": float(np.mean([e["reward"] for e in eps])), "rollout/episodes": len(eps)}
    out.update({f"rollout/ep_reward_{t}": float(np.mean([e[f"reward_{t}"] for e in eps])) for t in REWARD_TERMS})
    out.update({"budget/violation": float(np.mean([e["violation"] for e in eps])),
                "budget/raw_violation": float(np.mean([e["raw_violation"] for e in eps])),
                "cost/params": float(np.mean([e["params"] for e in eps])),
                "cost/bits": float(np.mean([e["bits"] for e in eps])),
                "cost/tx_seconds": float(np.mean([e["tx_seconds"] for e in eps])),
                "tx/lost_rounds": float(np.mean([e["lost_rounds"] for e in eps])),
                "quality/eval_loss": float(np.nanmean([e["eval_loss"] for e in eps])),
                "quality/accuracy": float(np.nanmean([e["accuracy"] for e in eps]))})  # fmt: skip
    return out


def flat_summary(prefix: str, rows: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    return {f"{prefix}_{name}_{k}": v for name, s in rows.items() for k, v in s.items() if k != "ranks"}


def print_table(title: str, rows: Mapping[str, Mapping[str, Any]]) -> None:
    print(f"\n{title}")
    print(f"  {'allocator':<10} {'eval_loss':>9} {'accuracy':>9} {'reward':>8} {'params(mean)':>13} "
          f"{'cap used':>8} {'bits(mean)':>12} {'tx_s(total)':>11} {'violation':>9}")  # fmt: skip
    for name, s in rows.items():
        loss, acc = (f"{s[k]:.4f}" if math.isfinite(s[k]) else "nan" for k in ("eval_loss", "accuracy"))
        print(f"  {name:<10} {loss:>9} {acc:>9} {s['reward']:>8.4f} {s['params']:>13,.0f} {s['cap_used']:>8.3f} "
              f"{s['bits']:>12,.0f} {s['tx_seconds']:>11.4f} {s['violation']:>9.3f}")  # fmt: skip
