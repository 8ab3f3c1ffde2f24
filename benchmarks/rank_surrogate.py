"""Does the learned surrogate tell allocations apart, and where does allocation matter at all?

Reads the dataset of live runs that ``rankrl collect-runs`` grows (``benchmarks/results/rank_runs.jsonl``: one
row per live fine-tune of an allocation structure spent at a mean-rank budget) and reports:

1. *Held-out allocations*: the learned surrogate (:mod:`rankrl.ranks.surrogate`, boosted trees on per-group and
   per-depth rank mass) fitted on 4/5 of the runs predicts the other 1/5 (5 folds); Spearman between predicted
   and live final eval loss, per (model, task) and pooled. Goal (rank-policy issue): >= 0.8.
2. *Held-out (model, task)*: fitted on every other pair, predicting the left-out one.
3. *The hand-written sim* (``--old-sim``, pairs given as model/task): the probe-calibrated learning curve of
   :mod:`rankrl.ranks.sim` (3 live probes of the whole run, cached) ordering the same runs, for comparison.
4. *Where allocation matters*: per pair and budget, the live eval loss and accuracy of every structure, the spread
   between the best and worst structure and where uniform LoRA lands.

Run: ``HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/rank_surrogate.py --old-sim minilm/default`` (seconds, plus
about a minute for the three live probes of the old sim when they are not cached); writes
``benchmarks/results/rank_surrogate.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from rankrl.ranks.runs import read_runs  # noqa: E402
from rankrl.ranks.surrogate import held_out_predictions, held_out_spearman, pair_of  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def old_sim_spearman(rows: list[dict], pair: str) -> dict:
    """Spearman of the probe-calibrated sim (rankrl.ranks.sim) on one pair's runs (its reference run excluded)."""
    from scipy.stats import spearmanr

    from rankrl.ranks.env import LoRARankConfig
    from rankrl.ranks.finetune import FineTuneConfig
    from rankrl.ranks.sim import calibrate

    mine = [r for r in rows if pair_of(r) == pair
            and not (r["structure"] == "uniform" and r["budget_rank"] == r["r_max"])]  # fmt: skip
    mine = [r for r in mine if mine and r["steps"] == mine[0]["steps"]]  # one calibration = one run length
    if len(mine) < 3:
        return {"error": f"{len(mine)} runs of {pair}"}
    r0 = mine[0]
    run = FineTuneConfig(model=r0["model"], task=r0["task"], labels=r0["labels"], seed=r0["seed"], steps=r0["steps"],
                         lr=r0["lr"], r_max=r0["r_max"], batch_size=r0["batch_size"], max_length=r0["max_length"],
                         max_eval=128, eval_every=0, max_train=r0["max_train"])  # fmt: skip
    t0 = time.time()
    cal = calibrate(LoRARankConfig(run=run), 3, run.steps, probe_evals=2)
    pred = [cal.predict_loss(r["ranks"], r["steps"]) for r in mine]
    live = [r["eval_loss"] for r in mine]
    rho = float(spearmanr(pred, live).statistic) if np.ptp(pred) > 0 else math.nan
    return {"spearman": rho, "n": len(mine), "calibration_seconds": round(time.time() - t0, 1),
            "distinct_predictions": len({round(p, 4) for p in pred})}  # fmt: skip


def matters_table(rows: list[dict]) -> list[dict]:
    out = []
    for pair, n, b in sorted({(pair_of(r), r["steps"], r["budget_rank"]) for r in rows}):
        group = [r for r in rows if pair_of(r) == pair and r["budget_rank"] == b and r["steps"] == n]
        for seed in sorted({r["seed"] for r in group}):
            g = {r["structure"]: r for r in group if r["seed"] == seed}
            if len(g) < 2:
                continue
            best = min(g.values(), key=lambda r: r["eval_loss"])
            worst = max(g.values(), key=lambda r: r["eval_loss"])
            order = sorted(g, key=lambda s: g[s]["eval_loss"])
            out.append({"pair": pair, "steps": n, "budget_rank": b, "seed": seed,
                        "loss": {s: round(r["eval_loss"], 4) for s, r in g.items()},
                        "accuracy": {s: round(r["accuracy"], 4) for s, r in g.items()},
                        "loss0": round(best["loss0"], 4), "best": best["structure"], "worst": worst["structure"],
                        "spread": round(worst["eval_loss"] - best["eval_loss"], 4),
                        "uniform_place": order.index("uniform") + 1 if "uniform" in g else None,
                        "structures": len(g)})  # fmt: skip
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kept, y, pred, top = held_out_predictions(rows)
    pairs = np.array([pair_of(r) for r in kept])
    names = sorted(set(pairs))
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.8), squeeze=False)
    for ax, p in zip(axes[0], names, strict=True):
        m = (pairs == p) & ~top
        ax.scatter(y[m], pred[m], s=14)
        lo, hi = min(y[m].min(), pred[m].min()), max(y[m].max(), pred[m].max())
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_title(p, fontsize=9)
        ax.set_xlabel("live log(loss / loss at uniform r_max)")
        ax.set_ylabel("surrogate, held-out fold")
    fig.suptitle("learned surrogate on held-out allocations (5-fold)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default=str(RESULTS / "rank_runs.jsonl"))
    ap.add_argument("--old-sim", nargs="*", default=[], help="pairs (model/task as in the table) to compare with")
    ap.add_argument("--out", default=str(RESULTS / "rank_surrogate.json"))
    args = ap.parse_args()
    rows = read_runs(args.dataset)
    t0 = time.time()
    result = held_out_spearman(rows)
    fit_seconds = time.time() - t0
    pairs = sorted({pair_of(r) for r in rows})
    old = {p: old_sim_spearman(rows, p) for p in args.old_sim}
    print(f"{len(rows)} live runs, {len(pairs)} (model, task) pairs; 5-fold + leave-one-pair-out fits in "
          f"{fit_seconds:.1f} s\n")  # fmt: skip
    print(f"{'pair':<28}{'runs':>6}{'held-out allocations':>22}{'held-out pair':>15}{'old sim':>10}")
    for p in pairs:
        o = old.get(p, {}).get("spearman", math.nan)
        print(f"{p:<28}{result['n'].get(p, 0):>6}{result['allocations'].get(p, math.nan):>22.3f}"
              f"{result['pairs'].get(p, math.nan):>15.3f}{o:>10.3f}")  # fmt: skip
    print(f"{'pooled':<28}{sum(result['n'].values()):>6}{result['pooled_allocations']:>22.3f}")
    lengths = result["by_length"]
    print("\nheld-out allocations by run length (same fit): " + "; ".join(
        f"{p} " + ", ".join(f"{n} steps {v['rho']:.3f} (n {v['n']})" for n, v in d.items())
        for p, d in lengths.items()))  # fmt: skip
    table = matters_table(rows)
    print("\nwhere allocation matters (live eval loss; best / worst structure at equal parameters)")
    for t in table:
        print(f"{t['pair']:<24} {t['steps']:>3} steps, mean rank {t['budget_rank']:>3g} seed {t['seed']}: best "
              f"{t['best']:<11}"
              f"{t['loss'][t['best']]:.4f}  worst {t['worst']:<11}{t['loss'][t['worst']]:.4f}  spread "
              f"{t['spread']:.4f}  uniform {t['loss'].get('uniform', math.nan):.4f} (place {t['uniform_place']}"
              f"/{t['structures']})")  # fmt: skip
    out = Path(args.out)
    plot(rows, out.with_suffix(".png"))
    payload = {"date": datetime.now().isoformat(timespec="seconds"),
               "machine": {"platform": platform.platform(), "cpus": __import__("os").cpu_count(),
                           "python": platform.python_version()},
               "command": "python " + " ".join(sys.argv), "dataset": args.dataset, "runs": len(rows),
               "goal": "Spearman >= 0.8 on held-out allocations", "held_out": result,
               "held_out_by_length": lengths, "old_sim": old,
               "where_allocation_matters": table}  # fmt: skip
    out.write_text(json.dumps(payload, indent=1))
    print(f"\n-> {out} (+ {out.with_suffix('.png').name})")


if __name__ == "__main__":
    main()
