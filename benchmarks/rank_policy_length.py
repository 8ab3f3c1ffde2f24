"""A rank policy for the run length it will be used at: the learned surrogate with run length as an input, fitted on
runs of 40 and 120 steps of *other* pairs, trains a policy for 120-step MiniLM / TREC-6 runs, which is then scored
with the issue's protocol next to every rule and the 40-step policy.

Why: at 120 steps the 40-step policy (``benchmarks/rank_policy_learned.py``) was behind random, spectrum and EVA
allocations that it had beaten in loss at 40 steps (``rank_policy_tuned_120steps.json``): the order of allocations
changes with the run length, and the surrogate had no length input. Now it has one (``log_steps``,
:mod:`rankrl.ranks.surrogate`), and the dataset holds 120-step runs of MiniLM / SST-2, MiniLM / embedded default and
tiny-llama / arith (``rankrl collect-runs --steps 120``; no TREC run of any length is used for the policy).

Steps, fixed before any number of this script was seen:

1. The surrogate is fitted on every run of the dataset except MiniLM / TREC-6's; reported: held-out Spearman on
   the 120-step runs (5-fold over runs) and how different its predicted order of the structures is at 40 and 120
   steps on TREC-6's modules (Spearman between the two prediction vectors; 1 = length changes nothing).
2. PPO trains 4,096 env steps on the TREC-6 sim at 120 steps (one decision per run, budgets 0.5..8), as
   ``rank_policy_learned.py`` does at 40.
3. ``rankrl baselines --policy ... --lrs 1e-3 3e-3 1e-2 --test --run.steps 120`` at mean rank 1, seeds 3-7: the
   policy's lr is the one with the lowest mean dev loss; it is scored on TREC.test.
4. The rules and the 40-step policy are the rows of ``benchmarks/rank_policy_tuned.py --steps 120 --budgets 1``
   (its ``rankrl baselines`` folder; same seeds, lrs, data, caps), so every comparison is paired per seed.
5. At AdaLoRA's parameters: AdaLoRA budgets ranks, not parameters, and ends above the cap (mean final parameters of
   its tuned rows); the policy and spectrum (the best rule at the cap) run again with that parameter cap
   (``--budget.params``, same lrs, seeds and protocol) and are compared with AdaLoRA paired per seed.

Run: ``HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/rank_policy_length.py`` (~10 min on 2 cores once the 120-step
baselines folder exists; writes ``benchmarks/results/rank_policy_length.json`` + ``.png``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from benchmarks.rank_policy_learned import mass, run_config  # noqa: E402
from benchmarks.rank_policy_trec import DATA, baselines_results, header, method_bars, need_inputs  # noqa: E402
from benchmarks.rank_policy_tuned import summarise  # noqa: E402
from rankrl.atomic import atomic_write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
HELDOUT = "minilm/trec_qc:coarse"
MASS_BUDGETS = (0.5, 1.0, 2.0, 4.0, 8.0)


def surrogate_report(rows: list[dict], steps: int, targets, r_max: int) -> dict:
    """Held-out Spearman on the runs of ``steps`` (5-fold over all runs but the held-out pair's) and the Spearman
    between the surrogate's predictions at 40 and at ``steps`` for every structure x budget on ``targets``."""
    from scipy.stats import spearmanr

    from rankrl.ranks.runs import STRUCTURES, allocation
    from rankrl.ranks.surrogate import LearnedSurrogate, held_out_spearman, module_rows, pair_of

    held = held_out_spearman([r for r in rows if pair_of(r) != HELDOUT])
    at = {p: d[str(steps)] for p, d in held["by_length"].items() if str(steps) in d}
    sur = LearnedSurrogate(rows, exclude_pairs=[HELDOUT])
    allocs = [[allocation(targets, s, b, r_max)[t.name] for t in targets]
              for s in (*STRUCTURES, "random-0", "random-1") for b in (0.5, 1.0, 2.0, 4.0)]  # fmt: skip
    p40 = sur.predict(module_rows(targets), allocs, r_max, 40)
    pn = sur.predict(module_rows(targets), allocs, r_max, steps)
    return {"heldout_spearman_at_steps": {p: v["rho"] for p, v in at.items()},
            "runs_at_steps": sum(v["n"] for v in at.values()), "pooled_at_steps": held["pooled_by_length"][str(steps)],
            "trec_prediction_rho_40_vs_steps": float(spearmanr(p40, pn).statistic), "fit_pairs": sur.pairs}  # fmt: skip


def at_adalora_params(a: argparse.Namespace, policy_dir: Path, old: dict) -> dict:
    """Step 5: the policy and spectrum at AdaLoRA's mean final parameters vs AdaLoRA, paired per seed."""
    ada = {r["method"]: r for r in old["table"] if r["tuned"]}.get("adalora")
    if ada is None:
        return {}
    cap = int(round(ada["params"]))
    res = baselines_results(Path(a.workdir) / f"params{cap}_{a.steps}steps", [
        "baselines", "--methods", "spectrum", "--policy", str(policy_dir), "--budget.params", str(cap), "--lrs",
        *a.lrs, "--test", "--run.steps", str(a.steps), "--seeds", *map(str, a.seeds), "--run.task", str(DATA),
        "--run.labels", "coarse", "--run.max_eval", str(a.max_eval), "--no_wandb"])  # fmt: skip
    runs = res["runs"] + [r for r in old["runs"] if r["method"] == "adalora"]
    table = res["table"] + [r for r in old["table"] if r["method"] == "adalora"]
    row = summarise(runs, table)
    print(f"\nat AdaLoRA's parameters ({cap:,}; lr tuned on dev):")
    print_rows(row)
    return {"params_cap": cap, **row}


def print_rows(row: dict) -> None:
    """One line per method of a :func:`summarise` row: lr, params, test loss / accuracy, the policy's paired tests."""
    print(f"  {'method':<11} {'lr':>6} {'params':>8} {'test loss':>9} {'test acc':>15}  policy - this: acc (p), "
          "loss (p)")
    for m, s in row["methods"].items():
        vs = row["policy_vs"].get(m)
        tail = (f"  {vs['test_accuracy']['mean_diff']:+.4f} (p {vs['test_accuracy']['ttest_p']:.3f}), "
                f"{vs['test_loss']['mean_diff']:+.4f} (p {vs['test_loss']['ttest_p']:.3f})") if vs else ""
        print(f"  {m:<11} {row['lr'][m]:>6.0e} {s['params']:>8,.0f} {s['test_loss']:>9.4f} {s['test_accuracy']:>8.4f} "
              f"+- {s['test_accuracy_std']:.3f}{tail}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default=str(RESULTS / "rank_runs.jsonl"))
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--budget", type=float, default=1.0)
    ap.add_argument("--seeds", nargs="+", type=int, default=[3, 4, 5, 6, 7])
    ap.add_argument("--lrs", nargs="+", default=["1e-3", "3e-3", "1e-2"])
    ap.add_argument("--timesteps", type=int, default=4096)
    ap.add_argument("--max-eval", type=int, default=500)
    ap.add_argument("--baselines", default=str(ROOT / "runs" / "rank_policy_tuned" / "rank1_120steps"),
                    help="the rankrl baselines folder of rank_policy_tuned.py --steps 120 --budgets 1")
    ap.add_argument("--policy-40", default=str(ROOT / "runs" / "rank_policy_learned" / "minilm_trec_qc_coarse"))
    ap.add_argument("--workdir", default=str(ROOT / "runs" / "rank_policy_length"))
    ap.add_argument("--out", default=str(RESULTS / "rank_policy_length.json"))
    a = ap.parse_args()
    need_inputs()
    if not (Path(a.baselines) / "results.json").exists():
        sys.exit(f"no {a.baselines}/results.json: run benchmarks/rank_policy_tuned.py --steps {a.steps} --budgets "
                 f"{a.budget:g} first (or pass --baselines)")  # fmt: skip

    from rankrl.ranks.budgets import BudgetSpec
    from rankrl.ranks.env import LoRARankConfig
    from rankrl.ranks.finetune import model_features
    from rankrl.ranks.policy import allocate, load_policy
    from rankrl.ranks.runs import read_runs
    from rankrl.ranks.surrogate import LearnedSurrogate, pair_of
    from rankrl.ranks.train import TrainPolicyConfig, train_policy

    t0 = time.time()
    rows = read_runs(a.dataset)
    lengths = {pair_of(r): sorted({x["steps"] for x in rows if pair_of(x) == pair_of(r)}) for r in rows}
    if not any(a.steps in v for p, v in lengths.items() if p != HELDOUT):
        sys.exit(f"{a.dataset} has no {a.steps}-step runs of a pair other than {HELDOUT} ({lengths}): collect them "
                 f"with rankrl collect-runs --steps {a.steps}")  # fmt: skip
    ref = next(r for r in rows if pair_of(r) == HELDOUT)
    cfg = replace(run_config(ref, 0), steps=a.steps)
    targets, feats, _ = model_features(cfg.model, cfg.task, r_max=cfg.r_max, seed=0)
    report = surrogate_report(rows, a.steps, targets, cfg.r_max)
    print(f"surrogate (fit without {HELDOUT}) on {report['runs_at_steps']} held-out {a.steps}-step runs: Spearman "
          f"{report['heldout_spearman_at_steps']} (pooled {report['pooled_at_steps']:.3f}); its TREC-6 predictions at "
          f"40 vs {a.steps} steps: rho {report['trec_prediction_rho_40_vs_steps']:.3f}", flush=True)  # fmt: skip

    policy_dir = Path(a.workdir) / f"minilm_trec_qc_coarse_{a.steps}steps"
    if not (policy_dir / "policy.json").exists():
        cal = LearnedSurrogate(rows, exclude_pairs=[HELDOUT]).calibration(
            targets, feats.static, cfg.r_max, run_steps=a.steps, model=cfg.model, task=cfg.task)
        env = replace(LoRARankConfig(run=replace(cfg, max_eval=128)), decisions=1, budget_rank_range=(0.5, 8.0))
        train_policy(TrainPolicyConfig(env=env, timesteps=a.timesteps, out=str(policy_dir), wandb=False,
                                       progress=False, checkpoint_every=0), calibration=cal)  # fmt: skip
    masses = {}
    for name, folder in ((f"{a.steps}-step policy", policy_dir), ("40-step policy", Path(a.policy_40))):
        if (folder / "policy.json").exists():
            loaded = load_policy(folder)
            masses[name] = {str(b): mass(targets, allocate(loaded, tuple(targets), feats.static, BudgetSpec(rank=b))
                                         .ranks) for b in MASS_BUDGETS}  # fmt: skip

    mine = baselines_results(Path(a.workdir) / f"rank{a.budget:g}_{a.steps}steps", [
        "baselines", "--methods", "--policy", str(policy_dir), "--run.steps", str(a.steps), "--lrs", *a.lrs, "--test",
        "--seeds", *map(str, a.seeds), "--budget.rank", str(a.budget), "--run.task", str(DATA), "--run.labels",
        "coarse", "--run.max_eval", str(a.max_eval), "--no_wandb"])  # fmt: skip
    old = json.loads((Path(a.baselines) / "results.json").read_text())

    def renamed(items: list[dict], new: str) -> list[dict]:
        return [{**r, "method": new} for r in items]

    runs = ([r for r in old["runs"] if r["method"] != "policy"] + renamed(
        [r for r in old["runs"] if r["method"] == "policy"], "policy-40") + mine["runs"])  # fmt: skip
    table = ([r for r in old["table"] if r["method"] != "policy"] + renamed(
        [r for r in old["table"] if r["method"] == "policy"], "policy-40") + mine["table"])  # fmt: skip
    if {r["seed"] for r in mine["runs"]} != {r["seed"] for r in old["runs"]}:
        sys.exit(f"the baselines folder {a.baselines} ran other seeds than {a.seeds}: not paired")
    row = summarise(runs, table)
    print(f"\nMiniLM / TREC-6 test split, {a.steps} steps, mean rank {a.budget:g}, seeds {row['seeds']}, lr tuned "
          "on dev")
    print_rows(row)
    print(f"  best baseline {row['best_baseline']}; policy >= +1 pt over it, significant: "
          f"{row['goal_plus_1pt_significant']}")
    for name, by_b in masses.items():
        print(f"  {name} rank mass (qk/vo/mlp | depth thirds) at mean rank 0.5..8: " + "; ".join(
            f"{b}: {m['qk']:.2f}/{m['vo']:.2f}/{m['mlp']:.2f} | {m['depth0']:.2f}/{m['depth1']:.2f}/{m['depth2']:.2f}"
            for b, m in by_b.items()))  # fmt: skip
    matched = at_adalora_params(a, policy_dir, old)
    result = {**header(t0), "steps": a.steps, "budget": a.budget, "seeds": a.seeds, "lrs": a.lrs,
              "policy": str(policy_dir), "baselines": a.baselines, "surrogate": report, "rank_mass": masses,
              "result": row, "at_adalora_params": matched}  # fmt: skip
    path = Path(a.out)
    atomic_write_json(path, result)
    method_bars({f"{a.budget:g}": row}, "test_accuracy", lambda b, r: f"TREC-6 test, {a.steps} steps, mean rank {b}: "
                f"{a.steps}-step policy (red) vs rules", path.with_suffix(".png"), width=7.5, ylim=(0, 1))  # fmt: skip
    print(f"\n-> {path} (+ .png)")


if __name__ == "__main__":
    main()
