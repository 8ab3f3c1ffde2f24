"""How much reward is left above PPO alone on the calibrated LoRARank sim: a black-box search per budget.

``diffusion_vs_ppo.py`` compares policies trained for 1,024 env steps. This script asks what the best *fixed* action
earns at each evaluation budget: the cross-entropy method (CEM, written here: a few lines, and neither SB3 nor
Gymnasium ships one) searches directly on the evaluation episodes (the same budgets and channels as
``sim_budget_table``, and its episode seeds of the three training seeds) over

* ``scores``: one score per module (the env's action: the space PPO alone acts in), and
* ``linear``: one weight per module-row feature, decoded per module by ``tanh(standardised row . latent)`` at every
  decision (:func:`rankrl.ranks.diffusion.linear_decoding`: the coarse space of ``--diffusion.decoding linear``).

``--parts ablation`` asks the other question, on the ``diffusion-linear`` policies ``diffusion_vs_ppo.py`` left in
``/tmp/dvp-<model>-<regime>-diffusion-linear-<seed>``: their sim reward with the refiner's residual (the policy as
trained) and with the decoding of the same PPO latent alone (residual dropped), per training seed, next to equal
scores (every module the same share of the cap), with sim accuracy and bits sent per update.

The search optimises on the evaluation episodes themselves, so it is an optimistic reference for a fixed action, not a
policy (a policy can still do better where the best action depends on the state, e.g. the channel drawn). The table
puts it next to the trained policies' rows of ``benchmarks/results/diffusion_vs_ppo.json`` (same model key).

Run: ``.venv/bin/python benchmarks/diffusion_headroom.py [--model smollm2] [--iters 12] [--pop 16]`` (~12 min)
(writes ``benchmarks/results/diffusion_headroom.json``; the entry of the model, others kept).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from diffusion_vs_ppo import REGIMES, config_for, mean_over_budgets, model_entry  # noqa: E402

from rankrl.atomic import atomic_write_json  # noqa: E402
from rankrl.ranks.episodes import rollout_episode  # noqa: E402
from rankrl.ranks.sim import calibrate  # noqa: E402
from rankrl.ranks.train import EVAL_BUDGET_RANKS, fixed_budget, make_env  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: sim_budget_table scores a policy trained with seed t on episode seeds t+1, t+2, t+3; the trained rows average
#: training seeds 0, 1, 2, so the search's objective is the mean over the same nine episodes
EPISODE_SEEDS = tuple(t + s for t in (0, 1, 2) for s in (1, 2, 3))


def cem(objective, dim: int, iters: int, pop: int, elite: int, rng: np.random.Generator,
        start: np.ndarray | None = None) -> tuple[np.ndarray, float]:  # fmt: skip
    """Maximise ``objective`` over ``[-1, 1]^dim`` from ``start`` (default 0): Gaussian proposals, refit to the
    ``elite`` best each iteration (std floored at 0.02); returns the best point seen and its value."""
    mu, sd = (np.zeros(dim) if start is None else np.asarray(start, np.float64)), np.full(dim, 0.5)
    best, best_v = mu.copy(), objective(mu)
    for _ in range(iters):
        xs = np.clip(mu + sd * rng.standard_normal((pop, dim)), -1, 1)
        vs = np.array([objective(x) for x in xs])
        top = xs[np.argsort(vs)[-elite:]]
        mu, sd = top.mean(0), np.maximum(top.std(0), 0.02)
        if vs.max() > best_v:
            best, best_v = xs[int(np.argmax(vs))].copy(), float(vs.max())
    return best, best_v


def decode(obs: dict, latent: np.ndarray) -> np.ndarray:
    """:func:`rankrl.ranks.diffusion.linear_decoding` of one observation (numpy in, numpy out)."""
    import torch

    from rankrl.ranks.diffusion import linear_decoding

    rows, mask, z = (torch.as_tensor(x, dtype=torch.float32)[None] for x in (obs["rows"], obs["mask"], latent))
    return linear_decoding(rows, mask, z)[0].numpy()


def residual_ablation(a: argparse.Namespace, cal, max_modules: int) -> dict:
    """Mean sim reward over the budgets of each trained diffusion-linear policy with and without its residual."""
    from rankrl.ranks.policy import load_policy
    from rankrl.ranks.train import sim_budget_table

    out = {}
    for regime in REGIMES:
        for seed in (0, 1, 2):
            folder = Path(f"/tmp/dvp-{a.model}-{regime}-diffusion-linear-{seed}")
            if not (folder / "policy.json").exists():
                print(f"{folder}: not there (run diffusion_vs_ppo.py --algos diffusion-linear first)")
                continue
            cfg = config_for(regime, "diffusion-linear", seed, 1024, a.tx_cap, a.model, False, max_modules)
            policy = load_policy(folder).policy

            def with_residual(obs, _env, policy=policy):
                return policy.predict(obs)[0]

            def decoding_only(obs, _env, policy=policy):
                return decode(obs, policy.coarse.predict(obs, deterministic=True)[0])

            def equal_scores(obs, _env):  # every module the same share of the cap (the env's uniform)
                return np.zeros_like(obs["mask"])

            who = {"with_residual": with_residual, "decoding_only": decoding_only, "equal_scores": equal_scores}
            table = sim_budget_table(cfg, cal, who)
            out[f"{regime}/{seed}"] = {k: mean_over_budgets(table, k, "reward") for k in who}
            out[f"{regime}/{seed}"].update({f"{k}_{m}": mean_over_budgets(table, k, m) for k in who
                                            for m in ("accuracy", "bits")})  # fmt: skip
            print(f"{regime} seed {seed}: with the residual {out[f'{regime}/{seed}']['with_residual']:.4f}, decoding "
                  f"alone {out[f'{regime}/{seed}']['decoding_only']:.4f}", flush=True)  # fmt: skip
    return out


def plot(entry: dict, dvp: dict, model: str, path: Path) -> Path | None:
    """Per regime, mean sim reward per budget: the best fixed action found, equal scores and each trained algorithm
    (mean over its seeds in ``diffusion_vs_ppo.json``)."""
    from rankrl.plots import pyplot, save_fig

    plt = pyplot()

    if "by_budget" not in entry:
        return None
    algos = ["ppo", "coarse-linear", "diffusion-linear"]
    fig, axes = plt.subplots(1, len(REGIMES), figsize=(6.5 * len(REGIMES), 3.8), squeeze=False)
    for ax, regime in zip(axes[0], REGIMES, strict=True):
        budgets = list(entry["by_budget"][regime])
        series = {"best fixed (search)": [entry["by_budget"][regime][b]["scores"]["reward"] for b in budgets],
                  "equal scores": [entry["by_budget"][regime][b]["zero"]["reward"] for b in budgets]}  # fmt: skip
        for algo in algos:
            runs = [r for r in dvp.get("runs", []) if r["regime"] == regime and r["algo"] == algo]
            if runs:
                series[algo] = [float(np.mean([r["by_budget"][b]["policy"]["reward"] for r in runs])) for b in budgets]
        x, w = np.arange(len(budgets)), 0.8 / len(series)
        for i, (name, vals) in enumerate(series.items()):
            ax.bar(x + (i - (len(series) - 1) / 2) * w, vals, w, label=name)
        vals = [v for vs in series.values() for v in vs]
        ax.set_ylim(min(vals) - 0.02, max(vals) + 0.01)  # the differences are small next to the level
        ax.set_xticks(x, [f"mean rank {b}" for b in budgets])
        ax.set_ylabel("sim reward")
        ax.set_title(f"{model}, {regime}", fontsize=9)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return save_fig(fig, path, dpi=100)


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--iters", type=int, default=12, help="CEM iterations per (regime, budget, space)")
    ap.add_argument("--pop", type=int, default=16, help="CEM proposals per iteration (a quarter are the elite)")
    ap.add_argument("--tx-cap", type=float, default=0.5, help="transmit deadline (s) of the binding regime")
    ap.add_argument("--parts", default="search", help="comma-separated: search, ablation, plot (from the JSONs)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "diffusion_headroom.json"))
    a = ap.parse_args()
    parts = set(a.parts.split(","))
    dvp_path = ROOT / "benchmarks" / "results" / "diffusion_vs_ppo.json"
    dvp = model_entry(json.loads(dvp_path.read_text()) if dvp_path.exists() else {}, a.model)
    png_path = Path(a.out).with_name(f"diffusion_headroom_{a.model}.png")
    if parts == {"plot"}:
        png = plot(json.loads(Path(a.out).read_text()).get(a.model, {}), dvp, a.model, png_path)
        print(f"-> {png}")
        return
    t_start = time.time()
    first = config_for("bandwidth-free", "ppo", 0, 1024, a.tx_cap, a.model, False)
    cal = calibrate(first.env, first.probes, first.probe_steps or first.run.steps, probe_evals=first.probe_evals)
    n = len(cal.targets)
    max_modules = max(first.env.max_modules, n)
    result: dict = {}
    for regime in REGIMES if "search" in parts else ():
        cfg = config_for(regime, "ppo", 0, 1024, a.tx_cap, a.model, False, max_modules)
        for r in EVAL_BUDGET_RANKS:
            env = make_env(cfg, "sim", cal, fixed_budget(cfg, r))

            def episode_reward(act, env=env) -> float:
                return float(np.mean([sum(i["reward/total"] for i in rollout_episode(env, act, s))
                                      for s in EPISODE_SEEDS]))  # fmt: skip

            def scores(x: np.ndarray) -> float:
                action = np.zeros(max_modules, np.float32)
                action[:n] = x
                return episode_reward(lambda obs, _env: action)

            def linear(z: np.ndarray) -> float:
                return episode_reward(lambda obs, _env: decode(obs, z))

            n_feat = env.observation_space["rows"].shape[1]
            row = {}
            t0 = time.time()
            z, value = cem(linear, n_feat, a.iters, a.pop, max(2, a.pop // 4), np.random.default_rng(0))
            row["linear"] = {"reward": value, "dim": n_feat, "seconds": time.time() - t0}
            # the per-module search starts from the best latent's decoding of the first observation, so it can only
            # add what a per-module vector gives beyond the coarse space (with this few proposals for 210 numbers
            # a search from 0 finds less)
            obs0, _ = env.unwrapped.reset(seed=EPISODE_SEEDS[0])
            start = decode(obs0, z)[:n]
            t0 = time.time()
            _, value = cem(scores, n, a.iters, a.pop, max(2, a.pop // 4), np.random.default_rng(0), start)
            row["scores"] = {"reward": value, "dim": n, "seconds": time.time() - t0}
            row["zero"] = {"reward": scores(np.zeros(n))}  # equal scores: equal cost shares (the env's uniform)
            result.setdefault(regime, {})[str(r)] = row
            print(f"{regime} mean rank {r}: best fixed scores {row['scores']['reward']:.4f}, best fixed linear "
                  f"latent {row['linear']['reward']:.4f}, equal scores {row['zero']['reward']:.4f}", flush=True)
    policies = {}
    for run in dvp.get("runs", []):
        policies.setdefault(f"{run['regime']}/{run['algo']}", []).append(
            mean_over_budgets(run["by_budget"], "policy", "reward"))
    print(f"\n{a.model} ({n} modules): mean reward over budgets {EVAL_BUDGET_RANKS}")
    summary = {}
    for regime in REGIMES if "search" in parts else ():
        for name in ("scores", "linear", "zero"):
            v = float(np.mean([row[name]["reward"] for row in result[regime].values()]))
            summary[f"{regime}/search-{name}"] = v
            print(f"  {regime:<16} best fixed {name:<8} {v:.4f}")
        for k, vals in policies.items():
            if k.startswith(regime + "/"):
                summary[k] = float(np.mean(vals))
                print(f"  {regime:<16} trained {k.split('/')[1]:<30} {np.mean(vals):.4f} (seeds {len(vals)})")
    out = Path(a.out)
    old = json.loads(out.read_text()) if out.exists() else {}
    entry = old.get(a.model, {})
    if "search" in parts:
        entry.update({"date": datetime.now().isoformat(timespec="seconds"),
                      "machine": {"platform": platform.platform(), "threads": torch.get_num_threads()},
                      "config": {**vars(a), "n_modules": n, "episode_seeds": EPISODE_SEEDS}, "by_budget": result,
                      "summary": summary, "seconds": time.time() - t_start})  # fmt: skip
    if "ablation" in parts:
        entry["residual_ablation"] = {"date": datetime.now().isoformat(timespec="seconds"),
                                      "runs": residual_ablation(a, cal, max_modules)}  # fmt: skip
    old[a.model] = entry
    if "search" in parts and dvp:
        plot(entry, dvp, a.model, png_path)
    atomic_write_json(out, old)
    print(f"-> {out} ({time.time() - t_start:.0f}s)")


if __name__ == "__main__":
    main()
