"""How well the probe-calibrated sim predicts live SmolLM2 episodes it never saw: the 8 allocators x 6 paired live
episodes of ``diffusion_live.py`` (bandwidth binds: mean rank 4, 0.5 s deadline, -5..0 dB) replayed in the sim env
with the same policies, budget and episode seeds, once on the linear calibration (3 probes: uniform rank 8, uniform
rank 1, q only) and once on the concave one (``--sim_capacity concave``: 4 probes, the third one sparse - 1 module in
16 at rank 1 - and a fitted capacity power). The live episodes are not refitted on: they are held out.

Reported per calibration: Spearman between sim and live (final accuracy and final eval loss) over the 48 episodes and
over the 8 allocators' means, mean absolute error of accuracy, and each allocator's sim vs live mean.

Run: ``.venv/bin/python benchmarks/sim_vs_live.py`` (needs the policies left in ``/tmp/dvp-smollm2-bandwidth-binds-*``
by ``diffusion_vs_ppo.py --model smollm2`` and ``benchmarks/results/diffusion_live.json``; the concave calibration
costs 4 live 40-step SmolLM2 probes the first time, ~3 min, then it is cached). Writes
``benchmarks/results/sim_vs_live.json`` + ``.png`` (``--plot-only`` redraws the PNG from the JSON).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from diffusion_live import allocators  # noqa: E402

from benchmarks.rank_policy_trec import header  # noqa: E402
from rankrl.atomic import atomic_write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: calibration name -> (probes, --sim_capacity, sparse probe stride)
CALIBRATIONS = {"linear": (3, "linear", 16), "concave": (4, "concave", 16), "concave-64": (4, "concave", 64)}


def agreement(sim: list[float], live: list[float]) -> dict[str, float]:
    """Spearman rho (NaN when a side is constant) and mean absolute error between paired sim and live numbers.

    >>> agreement([0.1, 0.2, 0.3], [0.5, 0.7, 0.6])["spearman"]
    0.5
    """
    from scipy.stats import spearmanr

    s, v = np.asarray(sim, float), np.asarray(live, float)
    rho = float(spearmanr(s, v).statistic) if np.ptp(s) > 0 and np.ptp(v) > 0 else float("nan")
    return {"spearman": rho, "mae": float(np.abs(s - v).mean()), "n": len(s)}


def main() -> None:
    out = ROOT / "benchmarks" / "results" / "sim_vs_live.json"
    if "--plot-only" in sys.argv:  # redraw the PNG from the committed JSON
        plot(json.loads(out.read_text()), out.with_suffix(".png"))
        return
    from rankrl.ranks.episodes import episode_summary, rollout_episode
    from rankrl.ranks.sim import calibrate
    from rankrl.ranks.train import fixed_budget, make_env

    t0 = time.time()
    live_rows = json.loads((ROOT / "benchmarks" / "results" / "diffusion_live.json").read_text())["rows"]
    names = list(dict.fromkeys(r["allocator"] for r in live_rows))
    policies = {seed: allocators(seed, names) for seed in (0, 1, 2)}
    base = policies[0][1]  # every seed's episodes on the seed-0 calibration, as diffusion_vs_ppo.py trains them
    result: dict = {"calibrations": {}, "rows": []}
    for cal_name, (probes, capacity, stride) in CALIBRATIONS.items():
        t = time.time()
        cal = calibrate(base.env, probes, base.run.steps, probe_evals=base.probe_evals, capacity=capacity,
                        sparse_stride=stride)  # fmt: skip
        print(f"{cal_name} calibration ({time.time() - t:.0f}s): rate1 {cal.rate1:.3f}, floor decay "
              f"{cal.floor_decay:.3f}, capacity power {cal.capacity_power:.3f}", flush=True)  # fmt: skip
        result["calibrations"][cal_name] = {
            "probes": [{"on": int(np.count_nonzero(p.ranks)), "mean_rank": float(np.mean(p.ranks)),
                        "losses": list(p.losses), "accuracies": list(p.accuracies)} for p in cal.probes],
            "capacity_power": cal.capacity_power, "rate0": cal.rate0, "rate1": cal.rate1,
            "floor_decay": cal.floor_decay, "loss_inf": cal.loss_inf}  # fmt: skip
        for r in live_rows:
            acts, cfg = policies[r["training_seed"]]
            spend = r["allocator"].endswith("-spend")
            env = make_env(replace(cfg, env=replace(cfg.env, spend_action=spend)), "sim", cal, fixed_budget(cfg))
            s = episode_summary(rollout_episode(env, acts[r["allocator"]], r["episode_seed"]))
            result["rows"].append({"calibration": cal_name, "allocator": r["allocator"],
                                   "training_seed": r["training_seed"], "episode_seed": r["episode_seed"],
                                   **{f"sim_{k}": float(s[k]) for k in ("accuracy", "eval_loss", "bits", "reward")},
                                   **{f"live_{k}": r[k] for k in ("accuracy", "eval_loss", "bits", "reward")},
                                   })  # fmt: skip
    summary = {}
    for cal_name in CALIBRATIONS:
        rows = [r for r in result["rows"] if r["calibration"] == cal_name]
        means = {n: {k: float(np.mean([r[k] for r in rows if r["allocator"] == n]))
                     for k in ("sim_accuracy", "live_accuracy", "sim_eval_loss", "live_eval_loss", "sim_reward",
                               "live_reward", "live_bits")} for n in names}  # fmt: skip
        summary[cal_name] = {
            **{f"episodes_{k}": agreement([r[f"sim_{k}"] for r in rows], [r[f"live_{k}"] for r in rows])
               for k in ("accuracy", "eval_loss", "reward")},
            **{f"allocators_{k}": agreement([m[f"sim_{k}"] for m in means.values()],
                                            [m[f"live_{k}"] for m in means.values()])
               for k in ("accuracy", "eval_loss", "reward")},
            "by_allocator": means}  # fmt: skip
    result = {**header(t0), "live": "benchmarks/results/diffusion_live.json", "allocators": names,
              "summary": summary, **result}  # fmt: skip
    print(f"\n{'calibration':<10} {'what':<10} {'rho episodes':>13} {'rho allocators':>15} {'MAE episodes':>13}")
    for cal_name, s in summary.items():
        for k in ("accuracy", "eval_loss", "reward"):
            e, a = s[f"episodes_{k}"], s[f"allocators_{k}"]
            print(f"{cal_name:<10} {k:<10} {e['spearman']:>13.3f} {a['spearman']:>15.3f} {e['mae']:>13.4f}")
    print(f"\n{'allocator':<22} {'live acc':>9} " + " ".join(f"{c + ' acc':>12}" for c in CALIBRATIONS)
          + f" {'live bits':>10}")  # fmt: skip
    for n in names:
        live = summary["linear"]["by_allocator"][n]
        print(f"{n:<22} {live['live_accuracy']:>9.3f} "
              + " ".join(f"{summary[c]['by_allocator'][n]['sim_accuracy']:>12.3f}" for c in CALIBRATIONS)
              + f" {live['live_bits']:>10.4g}")  # fmt: skip
    atomic_write_json(out, result)
    plot(result, out.with_suffix(".png"))
    print(f"-> {out}, {out.with_suffix('.png')}")


def plot(result: dict, path: Path) -> None:
    """Sim vs live final accuracy per episode, one panel per calibration (the diagonal is a perfect sim)."""
    from rankrl.plots import pyplot, save_fig

    plt = pyplot()
    cals = list(result["summary"])
    fig, axes = plt.subplots(1, len(cals), figsize=(5 * len(cals), 4.4), squeeze=False)
    names = result["allocators"]
    for ax, c in zip(axes[0], cals, strict=True):
        for i, n in enumerate(names):
            rows = [r for r in result["rows"] if r["calibration"] == c and r["allocator"] == n]
            ax.scatter([r["live_accuracy"] for r in rows], [r["sim_accuracy"] for r in rows], s=16, color=f"C{i}",
                       label=n)  # fmt: skip
        acc = [r[k] for r in result["rows"] for k in ("live_accuracy", "sim_accuracy")]
        lims = (min(acc) - 0.02, max(acc) + 0.02)
        ax.plot(lims, lims, color="k", lw=0.6)
        ax.set_xlim(lims)
        ax.set_ylim(lims)
        s = result["summary"][c]["episodes_accuracy"]
        ax.set_title(f"{c} sim: Spearman {s['spearman']:.2f}, MAE {s['mae']:.3f}", fontsize=9)
        ax.set_xlabel("live final accuracy", fontsize=8)
        ax.set_ylabel("sim final accuracy", fontsize=8)
    axes[0][-1].legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    save_fig(fig, path)


if __name__ == "__main__":
    main()
