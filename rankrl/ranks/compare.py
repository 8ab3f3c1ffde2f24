"""``rankrl baselines``: every rank baseline (and optionally a trained policy) fine-tuned live at the same budget
and seeds, one table as JSON + CSV (+ W&B).

Uniform (with an lr sweep: tuned uniform LoRA is the strongest common baseline), attention-only and MLP-only
(uniform within those kinds), random, spectrum, importance, EVA, PEFT AdaLoRA and a policy, each a live
:class:`~rankrl.ranks.finetune.FineTuneRun` (AdaLoRA through the run's per-step hook,
:func:`rankrl.ranks.baselines.run_adalora`).

With ``--lrs`` every method sweeps the same learning rates and is reported at the one with the lowest *dev* loss
(the task's eval split); with ``--test`` every run is also scored on the task's test split, which nothing tunes
on. At budgets below uniform LoRA's lowest rank (e.g. mean rank 0.5) uniform and AdaLoRA (whose target rank
would be 0) are skipped with a note; the other methods still spend the budget on a subset of modules.
"""

from __future__ import annotations

import csv
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from rankrl.atomic import atomic_write, atomic_write_json
from rankrl.ranks.budgets import BudgetError, BudgetSpec, feasible
from rankrl.ranks.finetune import FineTuneConfig, episode_run

METHODS: tuple[str, ...] = ("uniform", "attention", "mlp", "random", "spectrum", "importance", "eva", "adalora")
#: methods that need uniform LoRA's lowest rank to fit the budget (AdaLoRA's target rank is uniform's)
NEED_UNIFORM: tuple[str, ...] = ("uniform", "adalora")


# --------------------------------------------------------------------------------------------- baselines
@dataclass(frozen=True)
class BaselinesConfig:
    """Fine-tune with every rank baseline (and a policy) at the same budget and seeds; print and save one table.

    Every method runs ``run`` (``--run.model``, ``--run.steps``, ``--run.lr``, ...) under ``budget``
    (``--budget.rank``, ``--budget.params``, ``--budget.flops``)."""

    run: FineTuneConfig = field(default_factory=episode_run)
    """the fine-tuning run of every method (its lr is every method's except uniform, which sweeps uniform_lrs)"""
    budget: BudgetSpec = field(default_factory=BudgetSpec)
    """the cap every method gets (a transmit-time cap needs a channel: not offered here)"""
    uniform_lrs: tuple[float, ...] = (1e-3, 3e-3, 1e-2)
    """learning rates tried for uniform LoRA (the best is marked: tuned uniform is the strong baseline)"""
    lrs: tuple[float, ...] | None = None
    """learning rates every method tries, each reported at its lowest dev loss (None: uniform sweeps
    --uniform_lrs, the others run --run.lr)"""
    test: bool = False
    """also score every run on the task's test split (test_loss / test_accuracy columns; nothing tunes on it)"""
    rank_grid: tuple[int, ...] | None = None
    """ranks a module may get (default: 0 and powers of two up to run.r_max)"""
    seeds: tuple[int, ...] | None = None
    """training seeds, every method runs every seed (None: --run.seed only)"""
    methods: tuple[str, ...] = METHODS
    """baselines to run (subset of uniform, attention, mlp, random, spectrum, importance, eva, adalora)"""
    policy: str | None = None
    """also run a trained policy (directory with policy.safetensors + policy.json)"""
    adalora_worst_case: bool = True
    """AdaLoRA target_r such that no final pattern can exceed the cap (False: uniform's r, may overshoot)"""
    out: str = "runs/baselines"
    """output directory: results.json, results.csv"""
    wandb: bool = True
    """log the table to W&B (offline unless configured)"""

    def __post_init__(self) -> None:
        if bad := sorted(set(self.methods) - set(METHODS)):
            raise ValueError(f"unknown --methods {bad}; choose from {METHODS}")
        if not self.methods and self.policy is None:
            raise ValueError("nothing to run: give --methods or --policy")
        if (self.seeds is not None and not self.seeds) or not self.uniform_lrs or min(self.uniform_lrs) <= 0:
            raise ValueError("need >= 1 of --seeds and --uniform_lrs > 0")
        if self.lrs is not None and (not self.lrs or min(self.lrs) <= 0):
            raise ValueError("--lrs needs >= 1 learning rate > 0")
        if self.budget.rank is None and self.budget.params is None and self.budget.flops is None:
            raise ValueError("give a budget: --budget.rank, --budget.params or --budget.flops")
        if self.budget.tx_seconds is not None:
            raise ValueError("--budget.tx_seconds needs a channel; rankrl baselines has none (use train-policy)")
        if "adalora" in self.methods and self.run.steps < 3:
            raise ValueError("AdaLoRA needs --run.steps >= 3")

    @property
    def seed_list(self) -> tuple[int, ...]:
        """The seeds every method runs."""
        return self.seeds if self.seeds is not None else (self.run.seed,)

    def lrs_of(self, method: str) -> tuple[float, ...]:
        """The learning rates ``method`` runs at."""
        if self.lrs is not None:
            return self.lrs
        return self.uniform_lrs if method == "uniform" else (self.run.lr,)


def run_baselines(config: BaselinesConfig) -> dict[str, Any]:
    """Run every method of ``config`` (see the module docstring); returns ``{"budget", "runs", "table"}`` and
    writes it to ``results.json`` / ``results.csv`` in ``config.out``."""
    from rankrl.ranks.baselines import eva, importance, random_allocation, run_adalora, spectrum, uniform
    from rankrl.ranks.budgets import check_grid, pow2_grid
    from rankrl.ranks.costs import allocation_cost
    from rankrl.ranks.finetune import FineTuneRun, model_features
    from rankrl.ranks.policy import allocate, load_policy
    from rankrl.ranks.rounding import allocate_by_shares
    from rankrl.ranks.runs import structure_shares
    from rankrl.tasks import load_task
    from rankrl.tracking import Tracker

    c = config
    seeds, r_max = c.seed_list, c.run.r_max
    base = replace(c.run, seed=seeds[0])
    targets, feats, _ = model_features(base.model, base.task, r_max=r_max, seed=base.seed, batch_size=base.batch_size,
                                       threads=base.threads)  # fmt: skip
    cap = c.budget.param_cap(targets)
    budget = c.budget.resolve(targets)
    grid = check_grid(targets, c.rank_grid or pow2_grid(r_max), r_max)
    fixed = {"uniform": uniform(targets, budget, grid, r_max=r_max)}
    methods = list(c.methods)
    if not any(fixed["uniform"].values()):  # below uniform LoRA at the lowest rank
        lowest = min(g for g in grid if g > 0)
        need = sum(t.in_features + t.out_features for t in targets) * lowest
        caps = ", ".join(f"{k} {v:,.6g}" for k, v in budget.caps.items())
        small = min(targets, key=lambda t: t.in_features + t.out_features)
        if not feasible(targets, {t.name: lowest if t is small else 0 for t in targets}, budget):
            raise BudgetError(f"the budget ({caps}) is below one module at rank {lowest} "
                              f"({(small.in_features + small.out_features) * lowest:,} params): every method would "
                              f"train the head only. Raise it (--budget.params >= {need} for uniform LoRA, "
                              "--budget.rank >= 1 or --budget.flops)")  # fmt: skip
        if not (set(methods) - set(NEED_UNIFORM) or c.policy):
            raise BudgetError(f"the budget ({caps}) is below uniform LoRA at rank {lowest} ({need:,} params): "
                              f"{' and '.join(methods)} would train the head only. Raise it (--budget.params >= "
                              f"{need}, --budget.rank >= 1) or run methods that spend it on a subset of modules "
                              "(--methods attention mlp random spectrum importance eva, --policy)")  # fmt: skip
        if skipped := [m for m in methods if m in NEED_UNIFORM]:
            print(f"note: the budget ({caps}) is below uniform LoRA at rank {lowest} ({need:,} params): "
                  f"{' and '.join(skipped)} skipped; the other methods spend it on a subset of modules", flush=True)
        methods = [m for m in methods if m not in NEED_UNIFORM]
    for name in ("attention", "mlp"):
        if name in methods:
            fixed[name] = allocate_by_shares(targets, structure_shares(targets, name), budget, grid, r_max=r_max)
    if "spectrum" in c.methods:
        fixed["spectrum"] = spectrum(targets, feats, budget, grid, r_max=r_max)
    if "importance" in c.methods:
        fixed["importance"] = importance(targets, feats, budget, grid, r_max=r_max)
    if "eva" in c.methods:
        eva_rank = max(fixed["uniform"].values()) or min(g for g in grid if g > 0)  # uniform's rank, >= 1
        fixed["eva"] = eva(targets, _eva_scores(base, targets, eva_rank), budget, grid, r_max=r_max)
    if c.policy is not None:
        loaded = load_policy(c.policy)
        if loaded.meta["run_config"]["r_max"] > r_max:
            raise ValueError(f"the policy allocates up to r_max={loaded.meta['run_config']['r_max']}; "
                             "raise --run.r_max")
        fixed["policy"] = allocate(loaded, targets, feats.static, BudgetSpec(None, cap, c.budget.flops)).ranks
        methods.append("policy")
    tracker = Tracker(c.out, config=asdict(c) | {"job": "baselines"}, use_wandb=c.wandb)
    runs: list[dict[str, Any]] = []
    try:
        for seed in seeds:
            task = load_task(base.task, seed=seed, labels=base.labels, max_train=base.max_train)  # as FineTuneRun does
            for method in methods:
                for lr in c.lrs_of(method):
                    cfg = replace(base, seed=seed, lr=lr)
                    t0 = time.time()
                    if method == "adalora":
                        res = run_adalora(cfg, budget, task=task, worst_case=c.adalora_worst_case, test=c.test)
                        ranks, metrics = res.ranks, res.metrics
                    else:
                        ranks = fixed[method] if method != "random" else random_allocation(
                            targets, budget, grid, seed, r_max=r_max)  # fmt: skip
                        run = FineTuneRun(cfg, task=task, ranks=ranks)
                        train = run.advance(cfg.steps)
                        metrics = {**train, **run.evaluate(), **(run.evaluate("test") if c.test else {})}
                        if train.get("train/nan"):
                            for k in ("eval_loss", "accuracy", "test_loss", "test_accuracy"):
                                metrics[f"quality/{k}"] = math.nan
                    cost = allocation_cost(targets, ranks, precision_bits=cfg.precision_bits)
                    row = {"method": method, "lr": lr, "seed": seed, "params": cost.params,
                           "budget_used": cost.params / cap if cap else math.nan,
                           "eval_loss": metrics["quality/eval_loss"], "accuracy": metrics["quality/accuracy"],
                           "bits": cost.bits, "seconds": time.time() - t0, "ranks": dict(ranks)}  # fmt: skip
                    if c.test:
                        row |= {"test_loss": metrics["quality/test_loss"],
                                "test_accuracy": metrics["quality/test_accuracy"]}  # fmt: skip
                    runs.append(row)
                    tracker.log({k: v for k, v in row.items() if isinstance(v, int | float)}, step=len(runs))
                    test = f" test_loss {row['test_loss']:.4f} test_acc {row['test_accuracy']:.4f}" if c.test else ""
                    print(f"  {method:<10} lr {lr:.0e} seed {seed}: eval_loss {row['eval_loss']:.4f} acc "
                          f"{row['accuracy']:.4f}{test} params {row['params']:,} ({row['seconds']:.1f}s)", flush=True)
        table = _aggregate(runs)
        result = {"budget": budget.caps, "grid": list(grid), "table": table, "runs": runs, "config": asdict(c)}
        write_results(result, Path(c.out))
        _print_results(c, table, budget)
        tracker.summary({f"{r['method']}@{r['lr']:g}/{k}": r[k] for r in table for k in ("eval_loss", "accuracy")})
        if tracker.wandb_run is not None:
            import wandb

            cols = list(table[0])
            tracker.log({"baselines/table": wandb.Table(columns=cols, data=[[r[k] for k in cols] for r in table])},
                        step=len(runs) + 1)  # fmt: skip
        return result
    finally:
        tracker.finish()


def _eva_scores(run_config: Any, targets: Any, rank: int, n_batches: int = 8) -> Any:
    """EVA's scores (:func:`rankrl.ranks.baselines.eva_scores`, rho 2) on ``n_batches`` train batches of the run's
    task (the batches the gradient features use), with a freshly loaded copy of the pre-trained model."""
    from rankrl.models import load_model
    from rankrl.ranks.baselines import eva_scores
    from rankrl.ranks.finetune import batches, new_live_run

    run = new_live_run(run_config)
    loaded = load_model(run_config.model, task_kind=run.task.kind, num_labels=max(len(run.task.label_names), 2),
                        seed=run_config.seed)  # fmt: skip
    return eva_scores(loaded.model, targets, list(batches(run, n_batches)), rank=rank)


def _aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (method, lr), means over seeds; ``tuned`` marks each method's lr with the lowest mean dev
    (eval-split) loss - never the test split's."""
    table = []
    keys = [k for k in ("params", "budget_used", "eval_loss", "accuracy", "test_loss", "test_accuracy", "bits",
                        "seconds") if runs and k in runs[0]]  # fmt: skip
    for key in dict.fromkeys((r["method"], r["lr"]) for r in runs):
        rows = [r for r in runs if (r["method"], r["lr"]) == key]
        agg = {"method": key[0], "lr": key[1], "seeds": len(rows)}
        for k in keys:
            agg[k] = float(np.mean([r[k] for r in rows]))
        agg["accuracy_std"] = float(np.std([r["accuracy"] for r in rows]))
        table.append(agg)
    for method in dict.fromkeys(r["method"] for r in table):
        mine = [r for r in table if r["method"] == method and math.isfinite(r["eval_loss"])]
        best = min(mine, key=lambda x: x["eval_loss"]) if mine else None
        for r in table:
            if r["method"] == method:
                r["tuned"] = r is best
    return table


def write_results(result: dict[str, Any], out: Path) -> None:
    """``results.json`` (everything) and ``results.csv`` (the table) in ``out``, each written atomically."""
    atomic_write_json(out / "results.json", result)

    def table(path: Path) -> None:
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(result["table"][0]))
            w.writeheader()
            w.writerows(result["table"])

    atomic_write(out / "results.csv", table, ".csv")


def _print_results(c: BaselinesConfig, table: list[dict[str, Any]], budget: Any) -> None:
    caps = ", ".join(f"{k} {v:,.6g}" for k, v in budget.caps.items())
    tuned = "each method's lr with the lowest dev loss" if c.lrs else "tuned uniform"
    test = c.test
    print(f"\n{c.run.model}/{c.run.task}, {c.run.steps} steps, budget {caps}, seeds {list(c.seed_list)} "
          f"(* = {tuned}; eval = dev split{', test = test split' if test else ''})")
    head = f"{'test_loss':>9} {'test_acc':>9} " if test else ""
    print(f"  {'method':<12} {'lr':>7} {'params':>9} {'used':>5} {'eval_loss':>9} {'accuracy':>9} {head}{'bits':>11} "
          f"{'seconds':>8}")  # fmt: skip
    for r in table:
        name = r["method"] + ("*" if r["tuned"] and (c.lrs or r["method"] == "uniform") else "")
        cols = f"{r['test_loss']:>9.4f} {r['test_accuracy']:>9.4f} " if test else ""
        print(f"  {name:<12} {r['lr']:>7.0e} {r['params']:>9,.0f} {r['budget_used']:>5.2f} {r['eval_loss']:>9.4f} "
              f"{r['accuracy']:>9.4f} {cols}{r['bits']:>11,.0f} {r['seconds']:>8.1f}")  # fmt: skip
    print(f"results.json / results.csv -> {c.out}")
