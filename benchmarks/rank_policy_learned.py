"""Transfer: a rank policy trained on the learned surrogate of *other* (model, task) pairs allocates for a pair it
never saw, with no probe runs, and is checked live against uniform LoRA and against the best structure found by
probing that pair.

For each held-out pair (``--heldout``, as :func:`rankrl.ranks.surrogate.pair_of` names it, e.g.
``minilm/trec_qc:coarse``):

1. The learned surrogate is fitted on the dataset of live runs (``benchmarks/results/rank_runs.jsonl``) *without*
   that pair's runs; the sim of the held-out model is that surrogate over the model's own target modules and
   feature rows (one feature pass on a few batches: no training run of the pair is used).
2. ``rankrl train-policy`` trains PPO on that sim (``--timesteps``, one decision per run, budgets drawn from
   mean rank 0.5 to 8) and writes a policy folder; its own live check runs as usual.
3. The policy allocates at each ``--budgets`` mean rank (``rankrl.ranks.policy.allocate``: the first decision).
4. Live, at seeds the dataset did not use (``--seeds``): the policy's allocation, its untrained start's (even
   scores), uniform LoRA, and the *probed best* structure (the structure with the lowest live loss among the
   dataset's runs of the pair at that budget, seed 0: what probing the pair directly would pick) are fine-tuned
   with the dataset's run settings and compared by final eval loss and accuracy; paired over seeds.

Also writes what the policies learned: rank mass per module group and per depth third at mean ranks 0.5..8
(``rank_policy_learned_mass.png``).

Run: ``HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/rank_policy_learned.py`` (about 15 minutes on 2 cores);
writes ``benchmarks/results/rank_policy_learned.json`` and two PNGs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from rankrl.ranks.runs import MLP_KINDS, allocation, read_runs  # noqa: E402
from rankrl.ranks.surrogate import LearnedSurrogate, pair_of  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MASS_BUDGETS = (0.5, 1.0, 2.0, 4.0, 8.0)


def run_config(row: dict, seed: int):
    from rankrl.ranks.finetune import FineTuneConfig

    keys = ("model", "task", "labels", "steps", "lr", "r_max", "batch_size", "max_length", "max_eval", "max_train",
            "alpha", "warmup_steps")  # fmt: skip
    return FineTuneConfig(**{k: row[k] for k in keys}, seed=seed, eval_every=0)


def live(cfg, ranks: dict) -> dict:
    from rankrl.ranks.finetune import new_live_run

    t0 = time.time()
    run = new_live_run(cfg, ranks)
    run.advance(cfg.steps)
    ev = run.evaluate()
    return {"eval_loss": float(ev["quality/eval_loss"]), "accuracy": float(ev["quality/accuracy"]),
            "seconds": round(time.time() - t0, 1)}  # fmt: skip


def mass(targets, ranks: dict) -> dict:
    """Share of the allocated parameters per group (q+k, v+o, MLP) and per depth third."""
    p = {t.name: ranks[t.name] * (t.in_features + t.out_features) for t in targets}
    total = sum(p.values()) or 1.0
    groups = {"qk": {"q", "k"}, "vo": {"v", "o"}, "mlp": set(MLP_KINDS)}
    out = {g: sum(v for t in targets if t.kind in ks for v in [p[t.name]]) / total for g, ks in groups.items()}
    for i in range(3):
        out[f"depth{i}"] = sum(p[t.name] for t in targets if min(int(3 * t.layer_index / t.num_layers), 2) == i) / total
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default=str(RESULTS / "rank_runs.jsonl"))
    ap.add_argument("--heldout", nargs="+", default=["minilm/trec_qc:coarse", "minilm/sst2"])
    ap.add_argument("--budgets", nargs="+", type=float, default=[1.0, 4.0])
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--timesteps", type=int, default=4096)
    ap.add_argument("--workdir", default="runs/rank_policy_learned")
    ap.add_argument("--out", default=str(RESULTS / "rank_policy_learned.json"))
    args = ap.parse_args()

    from scipy.stats import ttest_rel

    from rankrl.ranks.budgets import BudgetSpec
    from rankrl.ranks.env import LoRARankConfig
    from rankrl.ranks.finetune import model_features
    from rankrl.ranks.policy import allocate, load_policy
    from rankrl.ranks.train import TrainPolicyConfig, train_policy

    rows = read_runs(args.dataset)
    results, masses = {}, {}
    t_all = time.time()
    for held in args.heldout:
        mine = [r for r in rows if pair_of(r) == held]
        if not mine:
            raise SystemExit(f"--heldout {held}: no runs of that pair in {args.dataset} (pairs: "
                             f"{sorted({pair_of(r) for r in rows})})")  # fmt: skip
        ref = mine[0]
        sur = LearnedSurrogate(rows, exclude_pairs=[held])
        cfg0 = run_config(ref, 0)
        targets, feats, _ = model_features(cfg0.model, cfg0.task, r_max=cfg0.r_max, seed=0)
        cal = sur.calibration(targets, feats.static, cfg0.r_max, run_steps=cfg0.steps, model=cfg0.model,
                              task=cfg0.task)  # fmt: skip
        out_dir = Path(args.workdir) / held.replace("/", "_").replace(":", "_")
        env = replace(LoRARankConfig(run=replace(cfg0, max_eval=128)), decisions=1, budget_rank_range=(0.5, 8.0))
        config = TrainPolicyConfig(env=env, timesteps=args.timesteps, out=str(out_dir), wandb=False, progress=False,
                                   checkpoint_every=0)  # fmt: skip
        t0 = time.time()
        train_policy(config, calibration=cal)
        train_seconds = time.time() - t0
        loaded = load_policy(out_dir)
        masses[held] = {str(b): mass(targets, allocate(loaded, tuple(targets), feats.static,
                                                       BudgetSpec(rank=b)).ranks) for b in MASS_BUDGETS}  # fmt: skip
        per_budget = {}
        for b in args.budgets:
            cands = [r for r in mine if r["budget_rank"] == b and r["seed"] == 0]
            if not cands:
                print(f"  no probed runs of {held} at mean rank {b}; skipped")
                continue
            best = min(cands, key=lambda r: r["eval_loss"])
            allocs = {
                "policy": allocate(loaded, tuple(targets), feats.static, BudgetSpec(rank=b)).ranks,
                "untrained": even_scores(targets, b, cfg0.r_max),
                "uniform": allocation(targets, "uniform", b, cfg0.r_max),
                f"probed best ({best['structure']})": allocation(targets, best["structure"], b, cfg0.r_max),
            }
            runs = {name: [live(run_config(ref, s), a) for s in args.seeds] for name, a in allocs.items()}
            table = {}
            for name, rs in runs.items():
                table[name] = {"eval_loss": float(np.mean([r["eval_loss"] for r in rs])),
                               "accuracy": float(np.mean([r["accuracy"] for r in rs])),
                               "per_seed": rs, "ranks": [int(allocs[name][t.name]) for t in targets],
                               "mass": mass(targets, allocs[name])}  # fmt: skip
            pol = [r["eval_loss"] for r in runs["policy"]]
            for name in runs:
                if name != "policy" and len(args.seeds) >= 2:
                    other = [r["eval_loss"] for r in runs[name]]
                    table[name]["policy_minus_this_loss"] = float(np.mean(pol) - np.mean(other))
                    table[name]["p_paired"] = float(ttest_rel(pol, other).pvalue) if np.ptp(
                        np.subtract(pol, other)) > 0 else float("nan")  # fmt: skip
            per_budget[str(b)] = table
            print(f"\n{held} at mean rank {b:g} (live, seeds {args.seeds}):")
            for name, row in table.items():
                print(f"  {name:<28} eval loss {row['eval_loss']:.4f}  acc {row['accuracy']:.3f}  "
                      f"mass qk/vo/mlp {row['mass']['qk']:.2f}/{row['mass']['vo']:.2f}/{row['mass']['mlp']:.2f}"
                      + (f"  policy-this {row['policy_minus_this_loss']:+.4f} (p {row['p_paired']:.3f})"
                         if "p_paired" in row else ""))  # fmt: skip
        results[held] = {"train_seconds": round(train_seconds, 1), "fit_pairs": sur.pairs, "budgets": per_budget}
    plot_mass(masses, Path(args.out).with_name("rank_policy_learned_mass.png"))
    payload = {"date": datetime.now().isoformat(timespec="seconds"),
               "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                           "python": platform.python_version()},
               "command": "python " + " ".join(sys.argv), "seconds": round(time.time() - t_all, 1),
               "results": results, "policy_rank_mass": masses}  # fmt: skip
    Path(args.out).write_text(json.dumps(payload, indent=1))
    print(f"\n-> {args.out}")


def even_scores(targets, b: float, r_max: int) -> dict:
    """The untrained policy's allocation: every score equal, i.e. equal shares of the budget rounded to the grid."""
    from rankrl.ranks.budgets import Budget, BudgetSpec, pow2_grid
    from rankrl.ranks.rounding import allocate_by_shares

    cap = BudgetSpec(rank=b).param_cap(targets)
    return allocate_by_shares(targets, [1.0] * len(targets), Budget(max_params=cap), pow2_grid(r_max), r_max=r_max)


def plot_mass(masses: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(masses), 2, figsize=(9, 3 * len(masses)), squeeze=False)
    for row, (held, by_b) in zip(axes, masses.items(), strict=True):
        bs = list(by_b)
        for ax, keys, title in ((row[0], ("qk", "vo", "mlp"), "module group"),
                                (row[1], ("depth0", "depth1", "depth2"), "depth third")):  # fmt: skip
            bottom = np.zeros(len(bs))
            for k in keys:
                vals = np.array([by_b[b][k] for b in bs])
                ax.bar(bs, vals, bottom=bottom, label=k)
                bottom += vals
            ax.set_title(f"policy for {held}: rank mass by {title}", fontsize=9)
            ax.set_xlabel("mean-rank budget")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
