"""PPO alone vs PPO + DDIM refiner (AirLLM's two-level policy) on the calibrated LoRARank sim, same env, same env
steps, several seeds, in a channel regime where bandwidth does not bind (the default 0-20 dB, no transmit cap) and
one where it does (-5..0 dB and a per-round transmit deadline).

Each policy is scored by the sim at mean-rank budgets 0.5/1/2/4 (3 evaluation seeds, deterministic actions), next to
uniform LoRA at the same budget: mean episode reward and final accuracy. MiniLM (36 modules) only: the SmolLM2
case (210 modules) needs its own live calibration and longer runs than this machine's session allowed.

Run: ``.venv/bin/python benchmarks/diffusion_vs_ppo.py`` (writes ``benchmarks/results/diffusion_vs_ppo.json`` + PNG).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from rankrl.ranks.budgets import BudgetSpec  # noqa: E402
from rankrl.ranks.episodes import uniform_allocator  # noqa: E402
from rankrl.ranks.latent import train_diffusion_policy  # noqa: E402
from rankrl.ranks.policy import load_policy  # noqa: E402
from rankrl.ranks.sim import calibrate  # noqa: E402
from rankrl.ranks.train import TrainPolicyConfig, sim_budget_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REGIMES = {"bandwidth-free": {}, "bandwidth-binds": {"snr_range_db": (-5.0, 0.0)}}


def config_for(regime: str, algo: str, seed: int, timesteps: int, tx_cap: float | None) -> TrainPolicyConfig:
    base = TrainPolicyConfig()
    env = replace(base.env, run=replace(base.run, seed=seed, threads=2), **REGIMES[regime])
    if regime == "bandwidth-binds":
        env = replace(env, budget=BudgetSpec(rank=4.0, tx_seconds=tx_cap))
    return replace(base, env=env, algo=algo, timesteps=timesteps, n_steps=128, out=f"/tmp/dvp-{regime}-{algo}-{seed}",
                   wandb=False, progress=False, checkpoint_every=0)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--timesteps", type=int, default=1024)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--tx-cap", type=float, default=0.5, help="transmit deadline (s) of the binding regime")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "diffusion_vs_ppo.json"))
    a = ap.parse_args()
    from rankrl.ranks.train import train_policy

    t_start, rows = time.time(), []
    cal = None
    for regime in REGIMES:
        for seed in a.seeds:
            for algo in ("ppo", "diffusion"):
                cfg = config_for(regime, algo, seed, a.timesteps, a.tx_cap)
                if cal is None:  # the same calibration for every run (the run config is the same)
                    cal = calibrate(cfg.env, cfg.probes, cfg.probe_steps or cfg.run.steps, probe_evals=cfg.probe_evals)
                t0 = time.time()
                if algo == "ppo":
                    train_policy(replace(cfg, env_id="rankrl/LoRARank-Sim-v1"), calibration=cal)
                    loaded = load_policy(cfg.out)

                    def act(obs, _env, policy=loaded.policy):
                        return policy.predict(obs, deterministic=True)[0]

                    table = sim_budget_table(cfg, cal, {"policy": act, "uniform": uniform_allocator})
                else:
                    summary = train_diffusion_policy(cfg, calibration=cal)
                    table = {r: {("policy" if k == "diffusion" else k): v for k, v in row.items()}
                             for r, row in summary["sim_by_budget"].items()}  # fmt: skip
                rows.append({"regime": regime, "algo": algo, "seed": seed, "seconds": time.time() - t0,
                             "by_budget": table})  # fmt: skip
                mean = np.mean([row["policy"]["reward"] for row in table.values()])
                uni = np.mean([row["uniform"]["reward"] for row in table.values()])
                print(f"{regime} {algo} seed {seed}: mean reward {mean:.4f} (uniform {uni:.4f})", flush=True)
    summary = {}
    for regime in REGIMES:
        for algo in ("ppo", "diffusion"):
            runs = [r for r in rows if r["regime"] == regime and r["algo"] == algo]
            rew = [np.mean([b["policy"]["reward"] for b in r["by_budget"].values()]) for r in runs]
            acc = [np.mean([b["policy"]["accuracy"] for b in r["by_budget"].values()]) for r in runs]
            uni = [np.mean([b["uniform"]["reward"] for b in r["by_budget"].values()]) for r in runs]
            summary[f"{regime}/{algo}"] = {"reward_mean": float(np.mean(rew)), "reward_std": float(np.std(rew)),
                                           "accuracy_mean": float(np.mean(acc)), "uniform_reward": float(np.mean(uni)),
                                           "seeds": len(runs)}  # fmt: skip
    print(f"\n{'regime/algo':<28} {'reward':>16} {'accuracy':>9} {'uniform reward':>15}")
    for k, s in summary.items():
        print(f"{k:<28} {s['reward_mean']:>9.4f} +- {s['reward_std']:.4f} {s['accuracy_mean']:>9.3f} "
              f"{s['uniform_reward']:>15.4f}")
    import torch

    out = {"date": datetime.now().isoformat(timespec="seconds"),
           "machine": {"platform": platform.platform(), "threads": torch.get_num_threads(), "torch": torch.__version__},
           "config": vars(a), "summary": summary, "runs": rows, "seconds": time.time() - t_start}  # fmt: skip
    Path(a.out).write_text(json.dumps(out, indent=1, default=str))
    plot(summary, Path(a.out).with_suffix(".png"))
    print(f"-> {a.out}")


def plot(summary: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rankrl.plots import save_fig

    fig, ax = plt.subplots(figsize=(7, 3.5))
    keys = list(summary)
    ax.bar(range(len(keys)), [summary[k]["reward_mean"] for k in keys],
           yerr=[summary[k]["reward_std"] for k in keys], color=["C0", "C1"] * (len(keys) // 2))  # fmt: skip
    ax.scatter(range(len(keys)), [summary[k]["uniform_reward"] for k in keys], color="k", zorder=3, label="uniform")
    ax.set_xticks(range(len(keys)), keys, rotation=15, fontsize=7)
    ax.set_ylabel("mean sim reward over budgets 0.5-4")
    ax.legend()
    fig.tight_layout()
    save_fig(fig, png)


if __name__ == "__main__":
    main()
