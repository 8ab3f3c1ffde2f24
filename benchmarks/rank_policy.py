"""Rank policy vs rank baselines at an EXTREME budget (mean rank 1): MiniLM on SST-2, dev AND test accuracy.

A REDUCED version of the issue's benchmark (see ``NOT_COVERED``): one model/task (minilm on ../shared/data/sst2),
LoRA on all 36 modules, seq 64, batch 16, a short run (``--steps``, default 60: 150 did not fit ~30 min of 2 CPU
cores, measured 0.58 s/step + ~1 min of dev/test evaluation per run), budget = mean rank 1 over all modules (so
uniform is rank 1 everywhere and every non-uniform method must leave some modules at rank 0), 3 seeds paired across
methods (same seed -> same data order, same init of the head and adapters).

Methods: uniform (lr sweep, tuned = best mean dev accuracy), spectrum, importance, random, and a rank policy
trained with :func:`rankrl.policies.train.train_policy` on the sim calibrated for minilm/sst2 (small budget of
PPO timesteps), whose first-decision ranks come from :func:`rankrl.policies.apply.allocate`, the same path
:func:`rankrl.policies.apply.run_baselines` uses for ``--policy``. Fixed allocations (uniform, spectrum,
importance, policy) are computed once from seed-0 features, as run_baselines does; random is drawn per seed.

Test accuracy: :meth:`FineTuneRun.evaluate` only scores the eval (dev) split and there is no public way to
score ``test``; this benchmark encodes the task's ``test`` split with the run's private ``_encode`` and swaps
it in as ``_eval`` for one ``evaluate()`` call (private API, fine for a benchmark).

    python benchmarks/rank_policy.py                      # full run (60 steps: ~25-30 min on 2 idle CPU cores)
    python benchmarks/rank_policy.py --estimate           # time one short run and project the total
    python benchmarks/rank_policy.py --policy DIR         # use an existing policy instead of training one
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
RESULTS = Path(__file__).resolve().parent / "results"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
MODEL, R_MAX, BUDGET_RANK = "minilm", 8, 1.0
NOT_COVERED = [
    ">= 5 seeds (3 here)",
    "an lr sweep per method (only uniform sweeps; every other method uses one lr)",
    "a bits frontier (several budgets; only mean rank 1 here)",
    "TREC 6/50 (SST-2 only)",
    "the transfer row (policy trained on one model/task, applied to another)",
    "the full-length runs of the issue (short runs here)",
]


def atomic_json(data: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".json")
    os.close(fd)
    try:
        Path(tmp).write_text(json.dumps(data, indent=1, default=str))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def by_length(rows) -> tuple:
    """Rows sorted by text length: evaluate() trims each batch to its longest row, so this only saves padding
    (accuracy and mean loss do not depend on the order)."""
    return tuple(sorted(rows, key=lambda r: len(r.text)))


def evaluate_test(run, test_rows) -> dict[str, float]:
    """Score the test split with the run's own evaluate(): swap its (private) eval tensors for a moment."""
    dev = run._eval
    run._eval = run._encode(by_length(test_rows))
    try:
        return run.evaluate()
    finally:
        run._eval = dev


def one_run(cfg, task, ranks, targets) -> dict:
    from rankrl.costs import allocation_cost
    from rankrl.trainers.finetune import FineTuneRun

    t0 = time.time()
    run = FineTuneRun(cfg, task=task, ranks=ranks)
    train = run.advance(cfg.steps)
    t_train = time.time() - t0
    run._eval = run._encode(by_length(task.splits["eval"]))  # all dev rows (max_eval=None), less padding
    dev = run.evaluate()
    test = evaluate_test(run, task.splits["test"])
    nan = bool(train.get("train/nan"))
    cost = allocation_cost(targets, ranks, precision_bits=cfg.precision_bits)
    return {"lr": cfg.lr, "seed": cfg.seed, "params": int(cost.params), "bits": float(cost.bits),
            "zero_rank_modules": sum(1 for r in ranks.values() if r == 0),
            "train_loss": train["train/loss"],
            "dev_loss": math.nan if nan else dev["quality/eval_loss"],
            "dev_acc": math.nan if nan else dev["quality/accuracy"],
            "test_loss": math.nan if nan else test["quality/eval_loss"],
            "test_acc": math.nan if nan else test["quality/accuracy"],
            "train_seconds": t_train, "seconds": time.time() - t0}  # fmt: skip


def train_rank_policy(a, task_path: str, out: Path) -> tuple[str, dict]:
    from rankrl.policies.train import TrainPolicyConfig, train_policy

    cfg = TrainPolicyConfig(model=MODEL, task=task_path, steps=a.policy_steps, lr=a.lr, batch_size=16,
                            max_eval=128, r_max=R_MAX, decisions=1, budget_rank=BUDGET_RANK, probes=a.probes,
                            timesteps=a.policy_timesteps, n_steps=128, ppo_batch_size=64, seed=0,
                            threads=a.threads, out=str(out), wandb=False, progress=False)  # fmt: skip
    t0 = time.time()
    res = train_policy(cfg)
    info = {"config": asdict(cfg), "seconds": time.time() - t0, "timesteps_done": res.timesteps_done,
            "live_check": {k: {kk: v[kk] for kk in ("accuracy", "eval_loss", "params")} for k, v in res.live.items()}}
    return str(out), info


def summarise(rows: list[dict]) -> dict:
    out = {"seeds": len(rows)}
    for k in ("params", "bits", "zero_rank_modules", "dev_acc", "test_acc", "dev_loss", "test_loss", "seconds"):
        v = np.array([r[k] for r in rows], dtype=float)
        out[k] = float(np.mean(v))
        out[k + "_std"] = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
    return out


def paired_tests(x: list[float], y: list[float]) -> dict:
    from scipy import stats

    d = np.array(x) - np.array(y)
    res = {"mean_diff_points": float(100 * d.mean()), "n": len(d)}
    if len(d) < 2 or not np.all(np.isfinite(d)):
        return res | {"ttest_p": None, "wilcoxon_p": None}
    res["ttest_p"] = None if np.allclose(d, d[0]) else float(stats.ttest_rel(x, y).pvalue)
    try:
        res["wilcoxon_p"] = float(stats.wilcoxon(x, y).pvalue)
    except ValueError:  # all differences zero
        res["wilcoxon_p"] = None
    return res


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(names), 3.2))
    x = np.arange(len(names))
    for off, k, lab in ((-0.18, "dev_acc", "dev"), (0.18, "test_acc", "test")):
        ax.bar(x + off, [100 * summary[n][k] for n in names], 0.36, yerr=[100 * summary[n][k + "_std"] for n in names],
               label=lab, capsize=3)  # fmt: skip
    lo = min(100 * summary[n][k] for n in names for k in ("dev_acc", "test_acc"))
    ax.set_ylim(max(0, lo - 8), None)
    ax.set_xticks(x, names, fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_title("minilm/sst2, mean rank 1 (reduced benchmark), mean +- std over seeds", fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60, help="150 is the brief; 60 fits the ~30 min CPU budget")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--uniform-lrs", type=float, nargs="+", default=[1e-3, 2e-3])
    ap.add_argument("--lr", type=float, default=2e-3, help="lr of every non-uniform method")
    ap.add_argument("--methods", nargs="+", default=["uniform", "spectrum", "importance", "random", "policy"])
    ap.add_argument("--policy", default=None, help="existing policy dir (default: train one on the sst2 sim)")
    ap.add_argument("--policy-steps", type=int, default=20, help="episode length of the policy's sim/probes")
    ap.add_argument("--policy-timesteps", type=int, default=256)
    ap.add_argument("--probes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--estimate", action="store_true", help="time one short uniform run and project the total")
    ap.add_argument("--out", default=str(RESULTS / "rank_policy.json"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    task_dir = SHARED / "sst2"
    if not (task_dir / "stsa.binary.test").exists():
        raise SystemExit(f"rank_policy benchmark: {task_dir} (SST-2 with train/dev/test) is absent; nothing to run")
    task_path = os.path.relpath(task_dir, Path.cwd())

    from rankrl.budgets import Budget, check_grid, pow2_grid
    from rankrl.policies.apply import allocate, load_policy, model_features
    from rankrl.policies.baselines import importance, random_allocation, spectrum, uniform
    from rankrl.tasks import load_task
    from rankrl.trainers.finetune import FineTuneConfig

    t_start = time.time()
    base = FineTuneConfig(model=MODEL, task=task_path, steps=a.steps, lr=a.lr, batch_size=16, max_length=64,
                          alpha=16.0, max_eval=None, r_max=R_MAX, eval_every=0, seed=a.seeds[0],
                          threads=a.threads)  # fmt: skip
    targets, feats, _ = model_features(MODEL, task_path, r_max=R_MAX, seed=a.seeds[0], batch_size=16,
                                       threads=a.threads)  # fmt: skip
    cap = Budget.mean_rank(targets, BUDGET_RANK).max_params
    budget = Budget(max_params=cap)
    grid = check_grid(targets, pow2_grid(R_MAX), R_MAX)
    print(f"{MODEL}/{task_path}: {len(targets)} modules, cap {cap:,} params (mean rank {BUDGET_RANK}), grid {grid}")

    if a.estimate:
        task = load_task(task_path, seed=0)
        ranks = uniform(targets, budget, grid, r_max=R_MAX)
        n = 30
        r = one_run(FineTuneConfig(**{**asdict(base), "steps": n}), task, ranks, targets)
        per_step = r["train_seconds"] / n
        evals = r["seconds"] - r["train_seconds"]
        n_runs = len(a.seeds) * (len(a.uniform_lrs) + len([m for m in a.methods if m != "uniform"]))
        proj = n_runs * (a.steps * per_step + evals + 3)
        pol = (a.probes + 2) * a.policy_steps * per_step if "policy" in a.methods and not a.policy else 0
        print(f"{per_step:.3f} s/step, evals {evals:.1f} s/run -> {n_runs} runs x {a.steps} steps ~ {proj / 60:.1f} "
              f"min + policy probes/live check ~ {pol / 60:.1f} min (+ PPO on the sim)")  # fmt: skip
        return

    fixed = {"uniform": uniform(targets, budget, grid, r_max=R_MAX)}
    if "spectrum" in a.methods:
        fixed["spectrum"] = spectrum(targets, feats, budget, grid, r_max=R_MAX)
    if "importance" in a.methods:
        fixed["importance"] = importance(targets, feats, budget, grid, r_max=R_MAX)
    policy_info: dict = {}
    if "policy" in a.methods:
        if a.policy:
            pdir, policy_info = a.policy, {"source": "given", "path": a.policy}
        else:
            print(f"training the rank policy on the sim of {MODEL}/{task_path} ({a.policy_timesteps} timesteps) ...",
                  flush=True)  # fmt: skip
            pdir, policy_info = train_rank_policy(a, task_path, Path(tempfile.mkdtemp(prefix="rank_policy-")))
            policy_info["source"] = "trained here (train_policy, sim backend)"
        loaded = load_policy(pdir)
        caps = {"budget_rank": None, "max_params": cap, "max_flops": None, "max_tx_seconds": None}
        alloc = allocate(loaded, targets, feats.static, caps)  # the path run_baselines uses for --policy
        fixed["policy"] = alloc.ranks
        policy_info["trained_on"] = loaded.meta.get("trained_on")
        policy_info["channel"] = alloc.channel
    t_setup = time.time() - t_start

    runs: dict[str, list[dict]] = {}
    for seed in a.seeds:
        task = load_task(task_path, seed=seed, labels=base.labels)  # as FineTuneRun loads it
        for method in a.methods:
            for lr in a.uniform_lrs if method == "uniform" else [a.lr]:
                name = f"uniform@{lr:g}" if method == "uniform" else method
                ranks = fixed[method] if method != "random" else random_allocation(targets, budget, grid, seed,
                                                                                   r_max=R_MAX)  # fmt: skip
                cfg = FineTuneConfig(**{**asdict(base), "seed": seed, "lr": lr})
                row = one_run(cfg, task, ranks, targets) | {"ranks": dict(ranks)}
                runs.setdefault(name, []).append(row)
                atomic_json({"benchmark": "rank_policy", "partial": True, "date": datetime.now().isoformat(),
                             "policy": policy_info, "runs": runs}, Path(a.out))  # fmt: skip
                print(f"  {name:<14} seed {seed}: dev {row['dev_acc']:.4f} test {row['test_acc']:.4f} params "
                      f"{row['params']:,} zero-rank {row['zero_rank_modules']:>2} ({row['seconds']:.1f}s)",
                      flush=True)  # fmt: skip

    summary = {n: summarise(rows) for n, rows in runs.items()}
    uni = [n for n in summary if n.startswith("uniform@") and math.isfinite(summary[n]["dev_acc"])]
    tuned = max(uni, key=lambda n: (summary[n]["dev_acc"], -summary[n]["dev_loss"])) if uni else None
    tests = {}
    if tuned:
        ref = [r["test_acc"] for r in runs[tuned]]
        for n, rows in runs.items():
            if n != tuned:
                tests[n] = paired_tests([r["test_acc"] for r in rows], ref)
    baselines = [n for n in summary if n != "policy" and n != tuned and not n.startswith("uniform@")] + (
        [tuned] if tuned else [])
    goal = {}
    if "policy" in summary and baselines:
        best = max(baselines, key=lambda n: summary[n]["test_acc"])
        gap = 100 * (summary["policy"]["test_acc"] - summary[best]["test_acc"])
        goal = {"goal": "policy >= 1 point (test accuracy) over the best baseline at the extreme budget",
                "best_baseline": best, "gap_points": gap, "met": bool(gap >= 1.0),
                "significant_vs_tuned_uniform_p05": bool((tests.get("policy", {}).get("ttest_p") or 1) < 0.05)}

    total = time.time() - t_start
    result = {"benchmark": "rank_policy", "reduced": True, "date": datetime.now().isoformat(),
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                          "threads": torch.get_num_threads()},
              "config": {"model": MODEL, "task": task_path, "modules": len(targets), "steps": a.steps,
                         "batch_size": 16, "max_length": 64, "r_max": R_MAX, "alpha": 16.0, "grid": list(grid),
                         "budget_rank": BUDGET_RANK, "max_params": cap, "precision_bits": 32, "seeds": a.seeds,
                         "uniform_lrs": a.uniform_lrs, "lr_other_methods": a.lr, "methods": a.methods,
                         "dev_rows": len(task.splits["eval"]), "test_rows": len(task.splits["test"]),
                         "tuned_uniform_rule": "uniform lr with the best mean dev accuracy",
                         "fixed_allocations_from": "seed-0 features (as run_baselines); random drawn per seed",
                         "test_eval": "run._encode(test split) swapped into run._eval for evaluate() (private API)"},
              "policy": policy_info, "tuned_uniform": tuned, "summary": summary, "tests_vs_tuned_uniform": tests,
              "goal": goal, "not_covered": NOT_COVERED, "seconds": {"setup": t_setup, "total": total},
              "runs": runs}  # fmt: skip
    out = Path(a.out)
    atomic_json(result, out)
    try:
        plot(summary, out.with_suffix(".png"))
    except Exception as e:  # the plot is optional
        print(f"(plot skipped: {e})")

    print(f"\nREDUCED benchmark: {MODEL}/sst2, {a.steps} steps, mean rank {BUDGET_RANK} (cap {cap:,} params), "
          f"seeds {a.seeds}; mean +- std over seeds; p = paired test vs tuned uniform on test acc (* = tuned)")
    print(f"  {'method':<15} {'params':>7} {'bits':>10} {'0-rank':>6} {'dev acc':>15} {'test acc':>15} "
          f"{'d test':>7} {'t-test p':>8} {'wilc. p':>8} {'sec':>6}")  # fmt: skip
    for n, s in summary.items():
        t = tests.get(n, {})
        fmt = lambda p: f"{p:.3f}" if p is not None else "-"  # noqa: E731
        print(f"  {n + ('*' if n == tuned else ''):<15} {s['params']:>7,.0f} {s['bits']:>10,.0f} "
              f"{s['zero_rank_modules']:>6.1f} {100 * s['dev_acc']:>7.2f} +- {100 * s['dev_acc_std']:<4.2f} "
              f"{100 * s['test_acc']:>7.2f} +- {100 * s['test_acc_std']:<4.2f} {t.get('mean_diff_points', 0):>+7.2f} "
              f"{fmt(t.get('ttest_p')):>8} {fmt(t.get('wilcoxon_p')):>8} {s['seconds']:>6.1f}")  # fmt: skip
    if goal:
        print(f"goal '{goal['goal']}': {'MET' if goal['met'] else 'NOT met'} (policy - {goal['best_baseline']} = "
              f"{goal['gap_points']:+.2f} points; significant vs tuned uniform at p<0.05: "
              f"{goal['significant_vs_tuned_uniform_p05']})")  # fmt: skip
    print(f"(with {len(a.seeds)} seeds the two-sided Wilcoxon p can't go below {2 / 2 ** len(a.seeds):.2f})")
    print("NOT covered: " + "; ".join(NOT_COVERED))
    print(f"total {total / 60:.1f} min (setup incl. policy {t_setup / 60:.1f} min) -> {out}")


if __name__ == "__main__":
    main()
