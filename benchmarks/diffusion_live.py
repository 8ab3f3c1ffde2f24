"""Live check of the 210-module policies of ``diffusion_vs_ppo.py`` where bandwidth binds: one live SmolLM2 episode
per allocator (the real 40-step LoRA fine-tune, each round's update sent over that round's channel; an update that
misses the 0.5 s deadline is lost), at the binding regime's budget (mean rank 4, deadline 0.5 s). For each
training seed (0, 1, 2: the run seed of the fine-tune too) and episode seed (1, 2: the channel draws), every allocator
gets the same episode, so the comparison is paired (6 pairs; paired t-test on eval loss and accuracy).

Allocators: the trained policies left in ``/tmp/dvp-smollm2-bandwidth-binds-<algo>-<seed>`` (``ppo``,
``coarse-linear``, ``diffusion-linear``, and the ``-spend`` variants, also ``coarse-set-spend`` and
``diffusion-set-spend``, that also choose how much of the budget to spend, run on the same env with
``spend_action``; run ``diffusion_vs_ppo.py --model smollm2`` first; ``concave:<algo>``: the same trained on the
concave sim, ``diffusion_vs_ppo.py --model smollm2 --sim-capacity concave``) and equal scores
(every module the same share of the cap: the untrained linear policy without the spend entry, and what equal scores
with the spend entry at 1 allocate).

Run: ``.venv/bin/python benchmarks/diffusion_live.py [--algos ppo-spend coarse-linear-spend]`` (~35 s per episode, 6
per allocator, on 2 CPU threads; writes ``benchmarks/results/diffusion_live.json`` + ``.png``; with ``--algos`` only
those policies run and the JSON's rows of the others are kept (same seeds, so still paired); ``--plot-only`` redraws
the PNG from the JSON).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from diffusion_vs_ppo import config_for, policy_dir  # noqa: E402

from benchmarks.rank_policy_trec import header  # noqa: E402
from rankrl.atomic import atomic_write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ALGOS = ("ppo", "coarse-linear", "diffusion-linear", "ppo-spend", "coarse-linear-spend", "coarse-set-spend",
         "diffusion-set-spend")  # fmt: skip
PAIRS = (("coarse-linear", "ppo"), ("diffusion-linear", "ppo"), ("diffusion-linear", "coarse-linear"),
         ("coarse-linear", "equal-scores"), ("ppo", "equal-scores"), ("coarse-linear-spend", "ppo-spend"),
         ("coarse-linear-spend", "equal-scores"), ("coarse-linear-spend", "coarse-linear"),
         ("ppo-spend", "equal-scores"), ("coarse-set-spend", "ppo-spend"), ("diffusion-set-spend", "ppo-spend"),
         ("diffusion-set-spend", "coarse-set-spend"), ("coarse-set-spend", "equal-scores"),
         ("diffusion-set-spend", "equal-scores"), ("diffusion-set-spend", "ppo"))  # fmt: skip
#: policies trained on the concave sim (``--sim-capacity concave``) are rows named ``concave:<algo>``
CONCAVE = "concave:"
PAIRS += tuple((CONCAVE + x, CONCAVE + y) for x, y in PAIRS if x.endswith("-spend") and y.endswith("-spend"))
PAIRS += tuple((CONCAVE + x, y) for x in ALGOS if x.endswith("-spend") for y in ("equal-scores", x, "ppo-spend"))


def plot(rows: list[dict], path: Path) -> None:
    """Live eval loss and accuracy per allocator: mean over the paired episodes, one line per episode."""
    from rankrl.plots import pyplot, save_fig

    plt = pyplot()

    names = list(dict.fromkeys(r["allocator"] for r in rows))
    episodes = sorted({(r["training_seed"], r["episode_seed"]) for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, key in zip(axes, ("eval_loss", "accuracy"), strict=True):
        by = {n: {(r["training_seed"], r["episode_seed"]): r[key] for r in rows if r["allocator"] == n} for n in names}
        ax.bar(names, [np.mean(list(by[n].values())) for n in names], color=[f"C{i}" for i in range(len(names))])
        for e in episodes:
            ax.plot(names, [by[n][e] for n in names], color="k", alpha=0.25, marker=".")
        ax.set_ylim(min(r[key] for r in rows) - 0.02, max(r[key] for r in rows) + 0.01)
        ax.set_title(f"live {key.replace('_', ' ')} (SmolLM2, bandwidth binds)", fontsize=9)
        ax.tick_params(axis="x", rotation=30, labelsize=8)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
    fig.tight_layout()
    save_fig(fig, path, dpi=100)


def allocators(seed: int, algos: list[str], regime: str = "bandwidth-binds") -> tuple[dict, object]:
    """``({name: act(obs, env)}, the episode's TrainPolicyConfig)`` of training seed ``seed``: the trained policies
    of ``algos`` left by ``diffusion_vs_ppo.py --model smollm2 [--sim-capacity concave]`` (deterministic actions;
    ``concave:<algo>`` names the concave sim's) and, if asked, ``equal-scores``."""
    from rankrl.ranks.policy import load_policy

    acts = {}
    for algo in [x for x in (*ALGOS, *(CONCAVE + a for a in ALGOS)) if x in algos]:
        capacity = "concave" if algo.startswith(CONCAVE) else "linear"
        folder = Path(policy_dir("smollm2", regime, algo.removeprefix(CONCAVE), seed, capacity))
        if not (folder / "policy.json").exists():
            flag = " --sim-capacity concave" if capacity == "concave" else ""
            sys.exit(f"{folder}: not there; run benchmarks/diffusion_vs_ppo.py --model smollm2{flag} first")
        policy = load_policy(folder).policy

        def act(obs, _env, policy=policy):
            return policy.predict(obs, deterministic=True)[0]

        acts[algo] = act
    if "equal-scores" in algos:
        acts["equal-scores"] = lambda obs, _env: np.zeros_like(obs["mask"])
    max_modules = load_policy(f"/tmp/dvp-smollm2-{regime}-ppo-{seed}").meta["env_config"]["max_modules"]
    return acts, config_for(regime, "ppo", seed, 1024, 0.5, "smollm2", True, max_modules)


def main() -> None:
    out = ROOT / "benchmarks" / "results" / "diffusion_live.json"
    if "--plot-only" in sys.argv:  # redraw the PNG from the committed JSON
        plot(json.loads(out.read_text())["rows"], out.with_suffix(".png"))
        return
    import argparse
    from dataclasses import replace

    from scipy.stats import ttest_rel

    from rankrl.ranks.episodes import episode_summary, rollout_episode
    from rankrl.ranks.train import fixed_budget, make_env

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    names = [*ALGOS, *(CONCAVE + x for x in ALGOS if x.endswith("-spend")), "equal-scores"]
    ap.add_argument("--algos", nargs="+", default=[*ALGOS, "equal-scores"], choices=names,
                    help="allocators to run now (concave:<algo>: trained on the concave sim); others' rows are kept")
    ap.add_argument("--plot-only", action="store_true")
    a = ap.parse_args()
    t0 = time.time()
    regime = "bandwidth-binds"
    rows = [r for r in json.loads(out.read_text())["rows"] if r["allocator"] not in a.algos] if out.exists() else []
    for seed in (0, 1, 2):
        acts, cfg = allocators(seed, a.algos)
        envs = {spend: make_env(replace(cfg, env=replace(cfg.env, spend_action=spend)), "live", None, fixed_budget(cfg))
                for spend in {name.endswith("-spend") for name in acts}}  # fmt: skip
        for episode_seed in (1, 2):
            for name, act in acts.items():
                t = time.time()
                s = episode_summary(rollout_episode(envs[name.endswith("-spend")], act, episode_seed))
                rows.append({"allocator": name, "training_seed": seed, "episode_seed": episode_seed,
                             **{k: s[k] for k in ("reward", "accuracy", "eval_loss", "bits", "params", "lost_rounds")},
                             "seconds": time.time() - t})  # fmt: skip
                print(f"seed {seed}/{episode_seed} {name:<18} reward {s['reward']:.4f}  accuracy {s['accuracy']:.3f}  "
                      f"eval loss {s['eval_loss']:.4f}  bits/update {s['bits']:.4g}  lost rounds {s['lost_rounds']}  "
                      f"{time.time() - t:.0f}s", flush=True)  # fmt: skip
    names = [n for n in names if any(r["allocator"] == n for r in rows)]
    rows.sort(key=lambda r: (r["training_seed"], r["episode_seed"], names.index(r["allocator"])))
    summary = {n: {k: float(np.mean([r[k] for r in rows if r["allocator"] == n]))
                   for k in ("reward", "accuracy", "eval_loss", "bits", "lost_rounds")} for n in names}  # fmt: skip
    paired = {}
    for x_name, y_name in [(x, y) for x, y in PAIRS if x in names and y in names]:
        for k in ("eval_loss", "accuracy"):
            x, y = ([r[k] for r in rows if r["allocator"] == n] for n in (x_name, y_name))
            d = np.array(x) - np.array(y)
            paired[f"{x_name} - {y_name} {k}"] = {"mean_diff": float(d.mean()), "wins": int((d > 0).sum()),
                                        "losses": int((d < 0).sum()), "n": len(d),
                                        "ttest_p": float(ttest_rel(x, y).pvalue) if np.any(d != 0) else None}
    print("\nmean over 6 paired episodes:")
    for n, v in summary.items():
        print(f"  {n:<18} " + "  ".join(f"{k} {x:.4g}" for k, x in v.items()))
    for k, v in paired.items():
        print(f"  {k:<40} {v['mean_diff']:+.4f}  ({v['wins']}/{v['losses']} of {v['n']}, p {v['ttest_p']})")
    atomic_write_json(out, {**header(t0), "regime": regime, "budget": {"rank": 4.0, "tx_seconds": 0.5},
                            "summary": summary, "paired": paired, "rows": rows})  # fmt: skip
    plot(rows, out.with_suffix(".png"))
    print(f"-> {out}, {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
