"""Issue 13 item 4's protocol: every method LR-tuned on dev, scored on the test split, paired over unseen seeds.

MiniLM on TREC-6 (coarse labels), 40 steps, at mean-rank budgets 0.5 and 1 - the regime where the allocation
dataset (``benchmarks/results/rank_runs.jsonl``) shows structure matters most (seed 0 at mean rank 0.5: depth-up
0.987 eval loss vs uniform 1.627). Methods, all at one parameter cap: uniform all-linear, attention-only, MLP-only,
random, spectrum, importance, EVA (PEFT ``EvaConfig``, rho 2), PEFT AdaLoRA (target_r = uniform's rank) and the
learned-sim policy of ``benchmarks/rank_policy_learned.py`` whose surrogate never saw a TREC-6 run
(``runs/rank_policy_learned/minilm_trec_qc_coarse``; run that script first). Below uniform's rank 1 (mean rank
0.5) uniform and AdaLoRA cannot spend the budget and are absent: the simplest rules there are attention-only and
MLP-only.

Protocol, fixed before any test number was seen:

1. ``rankrl baselines --lrs 1e-3 3e-3 1e-2 --test`` per budget, seeds 3-7 (no run of the dataset used them).
2. Each method's lr is the one with the lowest mean *dev* loss (the 500-row eval split carved from TREC.train).
3. At that lr, each method's seeds are scored on TREC.test (500 questions; nothing tunes on it).
4. Paired t-tests (scipy ``ttest_rel``) of the policy against every method on test accuracy and test loss; "best
   baseline" is the baseline with the highest mean test accuracy (the strictest reading: picked on test).

Also reported, for "where allocation matters": attention-only vs MLP-only (paired, test accuracy) at each budget.

Run: ``HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/rank_policy_tuned.py`` (~25-30 min per budget on 2 cores;
a budget whose ``rankrl baselines`` folder holds results.json is reused); writes
``benchmarks/results/rank_policy_tuned.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from benchmarks.rank_policy_trec import DATA, baselines_results, header, method_bars, need_inputs, paired  # noqa: E402
from rankrl.atomic import atomic_write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RULES = ("uniform", "attention", "mlp", "random", "spectrum", "importance", "eva", "adalora")


def summarise(runs: list[dict], table: list[dict]) -> dict:
    """Each method at its dev-tuned lr: per-seed test scores, means, and the policy's paired tests against each."""
    tuned = {r["method"]: r["lr"] for r in table if r["tuned"]}
    by = {m: {r["seed"]: r for r in runs if r["method"] == m and r["lr"] == lr} for m, lr in tuned.items()}
    seeds = sorted(by["policy"])
    row: dict = {"lr": tuned, "methods": {}, "policy_vs": {}}
    for m, rs in by.items():
        stats = {k: float(np.mean([rs[s][k] for s in seeds])) for k in ("eval_loss", "accuracy", "test_loss",
                                                                         "test_accuracy", "params")}  # fmt: skip
        stats["test_accuracy_std"] = float(np.std([rs[s]["test_accuracy"] for s in seeds]))
        stats["rank0_modules"] = float(np.mean([sum(v == 0 for v in rs[s]["ranks"].values()) for s in seeds]))
        row["methods"][m] = stats
    for m in by:
        if m != "policy":
            row["policy_vs"][m] = {k: paired([by["policy"][s][k] for s in seeds], [by[m][s][k] for s in seeds])
                                   for k in ("test_loss", "test_accuracy")}  # fmt: skip
    base = {m: s for m, s in row["methods"].items() if m != "policy"}
    best = max(base, key=lambda m: base[m]["test_accuracy"])
    vs = row["policy_vs"][best]["test_accuracy"]
    row["best_baseline"] = best
    row["goal_plus_1pt_significant"] = bool(vs["mean_diff"] >= 0.01 and vs["ttest_p"] < 0.05)
    if "uniform" in row["policy_vs"]:
        u = row["policy_vs"]["uniform"]["test_accuracy"]
        row["significantly_below_uniform"] = bool(u["mean_diff"] < 0 and u["ttest_p"] < 0.05)
    if "attention" in by and "mlp" in by:
        row["attention_vs_mlp"] = paired([by["attention"][s]["test_accuracy"] for s in seeds],
                                         [by["mlp"][s]["test_accuracy"] for s in seeds])  # fmt: skip
    row["seeds"] = seeds
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", default=str(ROOT / "runs" / "rank_policy_learned" / "minilm_trec_qc_coarse"))
    ap.add_argument("--budgets", nargs="+", type=float, default=[0.5, 1.0])
    ap.add_argument("--seeds", nargs="+", type=int, default=[3, 4, 5, 6, 7])
    ap.add_argument("--lrs", nargs="+", default=["1e-3", "3e-3", "1e-2"])
    ap.add_argument("--max-eval", type=int, default=500)
    ap.add_argument("--steps", type=int, default=40, help="run length (40: the episode the policy was trained for)")
    ap.add_argument("--methods", nargs="+", default=list(RULES), help="baselines to run besides the policy")
    ap.add_argument("--workdir", default=str(ROOT / "runs" / "rank_policy_tuned"))
    ap.add_argument("--out", default=None, help="default: results/rank_policy_tuned.json (_<steps>steps if not 40)")
    a = ap.parse_args()
    suffix = "" if a.steps == 40 else f"_{a.steps}steps"
    a.out = a.out or str(RESULTS / f"rank_policy_tuned{suffix}.json")
    need_inputs(a.policy)
    t0, out = time.time(), {}
    for budget in a.budgets:
        res = baselines_results(Path(a.workdir) / f"rank{budget:g}{suffix}", [
            "baselines", "--methods", *a.methods, "--run.steps", str(a.steps), "--lrs", *a.lrs, "--test", "--policy",
            a.policy, "--seeds", *map(str, a.seeds), "--budget.rank", str(budget), "--run.task", str(DATA),
            "--run.labels", "coarse", "--run.max_eval", str(a.max_eval), "--no_wandb", "--no_adalora_worst_case"])
        row = out[f"{budget:g}"] = summarise(res["runs"], res["table"])
        print(f"\nMiniLM / TREC-6 test split (500), {a.steps} steps, mean rank {budget:g}, seeds {row['seeds']}, "
              "lr tuned on dev")
        print(f"  {'method':<11} {'lr':>6} {'params':>8} {'rank-0':>6} {'dev loss':>8} {'test loss':>9} "
              f"{'test acc':>15}  policy - this: test acc (p), test loss (p)")  # fmt: skip
        for m, s in row["methods"].items():
            vs = row["policy_vs"].get(m)
            tail = (f"  {vs['test_accuracy']['mean_diff']:+.4f} (p {vs['test_accuracy']['ttest_p']:.3f}), "
                    f"{vs['test_loss']['mean_diff']:+.4f} (p {vs['test_loss']['ttest_p']:.3f})") if vs else ""
            print(f"  {m:<11} {row['lr'][m]:>6.0e} {s['params']:>8,.0f} {s['rank0_modules']:>6.1f} "
                  f"{s['eval_loss']:>8.4f} {s['test_loss']:>9.4f} {s['test_accuracy']:>8.4f} +- "
                  f"{s['test_accuracy_std']:.3f}{tail}")  # fmt: skip
        if "attention_vs_mlp" in row:
            am = row["attention_vs_mlp"]
            print(f"  attention - MLP test acc {am['mean_diff']:+.4f} (p {am['ttest_p']:.3f}, {am['wins']}/{am['n']})")
        print(f"  best baseline {row['best_baseline']}; policy >= +1 pt over it, significant: "
              f"{row['goal_plus_1pt_significant']}")
    result = {**header(t0), "policy": a.policy, "seeds": a.seeds, "lrs": a.lrs, "steps": a.steps,
              "max_eval": a.max_eval, "budgets": out}  # fmt: skip
    path = Path(a.out)
    atomic_write_json(path, result)
    method_bars(out, "test_accuracy", lambda budget, row: f"TREC-6 test, {a.steps} steps, mean rank {budget}, lr tuned "
                f"on dev ({len(row['seeds'])} seeds)", path.with_suffix(".png"), width=5.5, ylim=(0, 1))  # fmt: skip
    print(f"\n-> {path} (+ .png)")


if __name__ == "__main__":
    main()
