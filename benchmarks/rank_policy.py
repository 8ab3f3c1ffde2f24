"""Rank policies vs rank baselines on live MiniLM fine-tunes: SST-2 and TREC 6/50, extreme budgets, bits frontier.

Everything is a live :class:`~rankrl.ranks.finetune.FineTuneRun` (MiniLM-L6, LoRA on all 36 linear modules, seq 64,
batch 16, ``--steps`` optimizer steps, grid 0/1/2/4/8): the budget caps adapter parameters at a mean rank (1 =
*extreme*: uniform is rank 1 everywhere, every non-uniform method must leave some modules at rank 0).

Methods (all at the same budget, paired seeds: same data order and same init of head and adapters):

* ``uniform`` - rank r everywhere; ``spectrum`` (effective rank of the weights, LaMDA++-like); ``importance``
  (first-order gradient sensitivity, AdaLoRA-like); ``random`` (drawn per seed);
* ``policy-sst2`` - PPO set policy trained by :func:`rankrl.ranks.train.train_policy` on the sim calibrated from
  live probes of minilm/SST-2 (one-shot allocation, quality-only reward: the budget is enforced by projection);
* ``policy-default`` - the ``rankrl train-policy`` default policy (trained on minilm/embedded default task, budget
  mean rank 4, 4 decisions), applied unchanged: the TRANSFER row (another task; on TREC both policies transfer).

Protocol (so that no method gets a better-tuned lr than another, and the test numbers are not the selection's):

1. ``select``: every method x ``--lrs`` on selection seeds 100, 101 at sst2-r1, scored on the SST-2 dev split
   (872 rows); each method keeps its own best lr (mean dev accuracy) - an lr sweep per method.
2. ``report``: sst2-r1, every method at its lr, report seeds 0..4, scored on the test split (1,821 rows).
3. ``frontier``: sst2-r2 (mean rank 2 = tuned uniform-r2, the issue's reference) for uniform and policy-sst2,
   seeds 0..4 -> bits each method needs to reach tuned uniform-r2's test accuracy (within one
   standard error), by log-linear interpolation between its r1 and r2 points (goal: policy >= 30% fewer bits).
4. ``trec``: trec6-r1 and trec50-r1 (../shared/data/trec_qc, coarse and fine labels), every method but random
   and AdaLoRA at its SST-2 lr, seeds 0..2, test split (500 rows) (the committed run: ``--methods`` uniform,
   importance and both policies, to fit the session's CPU time).

Runs append to a JSONL cache (``--work``), so phases resume after an interruption and can be split across
processes (``--worker i/n`` takes every n-th pending run: one thread each, one process per core). ``summary``
(run after every phase) writes ``benchmarks/results/rank_policy.json`` and ``.png`` and prints the tables.

Test accuracy: :meth:`FineTuneRun.evaluate` scores the eval (dev) split; this benchmark encodes the ``test`` split
with the run's private ``_encode`` and swaps it in for one ``evaluate()`` call (private API, fine for a benchmark).

    python benchmarks/rank_policy.py --phase all               # ~2 h on one core (60 steps)
    python benchmarks/rank_policy.py --worker 0/2 & python benchmarks/rank_policy.py --worker 1/2   # 2 cores
    python benchmarks/rank_policy.py --phase summary
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import os
import platform
import time
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
RESULTS = Path(__file__).resolve().parent / "results"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CACHE = Path(os.environ.get("RANKRL_CACHE", Path.home() / ".cache" / "rankrl"))
MODEL, R_MAX = "minilm", 8
CELLS = {  # name -> (data dir, labels, budget as mean rank)
    "sst2-r1": ("sst2", "coarse", 1.0),
    "sst2-r2": ("sst2", "coarse", 2.0),
    "trec6-r1": ("trec_qc", "coarse", 1.0),
    "trec50-r1": ("trec_qc", "fine", 1.0),
}
METHODS = ("uniform", "spectrum", "importance", "random", "policy-sst2", "policy-default", "adalora")
SELECT_SEEDS, REPORT_SEEDS, TREC_SEEDS = (100, 101), (0, 1, 2, 3, 4), (0, 1, 2)
FRONTIER_METHODS = ("uniform", "policy-sst2")
NOT_COVERED = [
    "MiniLM <-> SmolLM2 transfer on a causal task (the transfer rows are to another task: default -> SST-2/TREC, "
    "SST-2 -> TREC)",
    "AdaLoRA on TREC (SST-2 only)",
    "the issue's 300-step runs (60 steps here: ~75 s per run on one core incl. test evaluation)",
]


def task_dir(cell: str) -> str:
    return os.path.relpath(SHARED / CELLS[cell][0], Path.cwd())


def atomic_json(data: dict, path: Path) -> None:
    from rankrl.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=1, default=str))


def by_length(rows) -> tuple:
    """Rows sorted by text length: evaluate() trims each batch to its longest row, so this only saves padding
    (accuracy and mean loss do not depend on the order)."""
    return tuple(sorted(rows, key=lambda r: len(r.text)))


# ---------------------------------------------------------------------------------------------- allocations
class Allocations:
    """Every method's ranks per cell (fixed methods from seed-0 features, as run_baselines does; random per seed)."""

    def __init__(self, a) -> None:
        self.a = a
        self._cells: dict[str, dict] = {}
        self._policies: dict[str, object] = {}
        self.policy_info: dict[str, dict] = {}

    def policy(self, name: str):
        from rankrl.ranks.policy import POLICY_FILE, load_policy

        if name not in self._policies:
            given = {"policy-sst2": self.a.policy_sst2, "policy-default": self.a.policy_default}[name]
            out = Path(given) if given else CACHE / "bench-rank-policy" / name
            out.parent.mkdir(parents=True, exist_ok=True)
            with open(out.parent / f".{name}.lock", "w") as lock:  # two workers: one trains, the other waits
                fcntl.flock(lock, fcntl.LOCK_EX)
                if not (out / POLICY_FILE).exists():
                    self.policy_info[name] = train_rank_policy(name, out, self.a.threads)
            loaded = load_policy(out)
            self._policies[name] = loaded
            meta = json.loads((out / "policy.json").read_text())
            self.policy_info.setdefault(name, {"path": str(out), "trained_on": meta.get("trained_on"),
                                               "timesteps": meta.get("timesteps"),
                                               "train_config": meta.get("train_config")})  # fmt: skip
        return self._policies[name]

    def cell(self, cell: str) -> dict:
        if cell not in self._cells:
            from rankrl.ranks.budgets import Budget, check_grid, pow2_grid
            from rankrl.ranks.finetune import FineTuneConfig, new_live_run

            _, labels, rank = CELLS[cell]
            cfg = FineTuneConfig(model=MODEL, task=task_dir(cell), labels=labels, r_max=R_MAX, seed=0, batch_size=16,
                                 threads=self.a.threads)  # fmt: skip
            run = new_live_run(cfg)
            targets, feats = tuple(run.targets), run.features(4)
            cap = Budget.mean_rank(targets, rank).max_params
            self._cells[cell] = {"targets": targets, "feats": feats, "budget": Budget(max_params=cap), "cap": cap,
                                 "grid": check_grid(targets, pow2_grid(R_MAX), R_MAX), "fixed": {}}  # fmt: skip
        return self._cells[cell]

    def ranks(self, cell: str, method: str, seed: int) -> dict[str, int]:
        from rankrl.ranks import baselines as B

        c = self.cell(cell)
        t, f, b, g = c["targets"], c["feats"], c["budget"], c["grid"]
        if method == "random":
            return B.random_allocation(t, b, g, seed, r_max=R_MAX)
        if method not in c["fixed"]:
            if method.startswith("policy-"):
                from rankrl.ranks.budgets import BudgetSpec
                from rankrl.ranks.policy import allocate

                spec = BudgetSpec(rank=None, params=c["cap"])
                c["fixed"][method] = dict(allocate(self.policy(method), t, f.static, spec).ranks)
            else:
                fn = {"uniform": B.uniform, "spectrum": B.spectrum, "importance": B.importance}[method]
                args = (t, b, g) if method == "uniform" else (t, f, b, g)
                c["fixed"][method] = dict(fn(*args, r_max=R_MAX))
        return c["fixed"][method]


def train_rank_policy(name: str, out: Path, threads: int) -> dict:
    """policy-sst2: one-shot allocation at mean rank 1 on the minilm/SST-2 sim, quality-only reward.
    policy-default: exactly ``rankrl train-policy``'s defaults (what ``make demo`` trains)."""
    from dataclasses import replace

    from rankrl.ranks.budgets import BudgetSpec
    from rankrl.ranks.env import LoRARankConfig
    from rankrl.ranks.finetune import FineTuneConfig
    from rankrl.ranks.train import TrainPolicyConfig, train_policy

    if name == "policy-sst2":
        run = FineTuneConfig(model=MODEL, task=task_dir("sst2-r1"), steps=60, lr=2e-3, batch_size=16, max_eval=256,
                             r_max=R_MAX, eval_every=0, seed=0, threads=threads)  # fmt: skip
        env = LoRARankConfig(run=run, decisions=1, budget=BudgetSpec(rank=1.0), w_params=0.0, w_tx=0.0)
        cfg = TrainPolicyConfig(env=env, probes=4, timesteps=2048, n_steps=128, ppo_batch_size=64, out=str(out),
                                wandb=False, progress=False)  # fmt: skip
    else:
        default = TrainPolicyConfig()
        cfg = replace(default, env=replace(default.env, run=replace(default.run, threads=threads)), out=str(out),
                      wandb=False, progress=False)  # fmt: skip
    print(f"training {name} -> {out} ...", flush=True)
    t0 = time.time()
    res = train_policy(cfg)
    return {
        "path": str(out),
        "source": "trained by this benchmark",
        "config": asdict(cfg),
        "seconds": time.time() - t0,
        "live_check": {k: {kk: v[kk] for kk in ("accuracy", "eval_loss", "params")} for k, v in res.live.items()},
    }


# ---------------------------------------------------------------------------------------------- runs
def one_run(allocs: Allocations, cell: str, method: str, lr: float, seed: int, split: str, steps: int) -> dict:
    from rankrl.ranks.costs import allocation_cost
    from rankrl.ranks.finetune import FineTuneConfig, FineTuneRun
    from rankrl.tasks import load_task

    _, labels, _ = CELLS[cell]
    cfg = FineTuneConfig(model=MODEL, task=task_dir(cell), labels=labels, steps=steps, lr=lr, batch_size=16,
                         max_length=64, alpha=16.0, max_eval=None, r_max=R_MAX, eval_every=0, seed=seed,
                         threads=allocs.a.threads)  # fmt: skip
    task = load_task(cfg.task, seed=seed, labels=labels)  # as FineTuneRun loads it
    if method == "adalora":
        return adalora_run(allocs, cfg, task, cell, lr, seed, split, steps)
    ranks = allocs.ranks(cell, method, seed)
    targets = allocs.cell(cell)["targets"]
    t0 = time.time()
    run = FineTuneRun(cfg, task=task, ranks=ranks)
    train = run.advance(steps)
    t_train = time.time() - t0
    run._eval = run._encode(by_length(task.splits["eval" if split == "dev" else "test"]))
    res = run.evaluate()
    nan = bool(train.get("train/nan"))
    cost = allocation_cost(targets, ranks, precision_bits=cfg.precision_bits)
    return {"cell": cell, "method": method, "lr": lr, "seed": seed, "split": split, "steps": steps,
            "params": int(cost.params), "bits": float(cost.bits),
            "zero_rank_modules": sum(1 for r in ranks.values() if r == 0), "train_loss": train["train/loss"],
            "loss": math.nan if nan else res["quality/eval_loss"], "acc": math.nan if nan else res["quality/accuracy"],
            "train_seconds": t_train, "seconds": time.time() - t0, "ranks": dict(ranks),
            "date": datetime.now().isoformat(timespec="seconds")}  # fmt: skip


def adalora_run(allocs: Allocations, cfg, task, cell: str, lr: float, seed: int, split: str, steps: int) -> dict:
    """PEFT AdaLoRA (``update_and_allocate`` every step, target_r from the same budget) through
    :func:`rankrl.ranks.baselines.run_adalora`; the scored split is handed in as the task's eval split."""
    from dataclasses import replace

    from rankrl.ranks.baselines import run_adalora

    scored = by_length(task.splits["eval" if split == "dev" else "test"])
    t0 = time.time()
    res = run_adalora(cfg, allocs.cell(cell)["budget"], task=replace(task, splits={**task.splits, "eval": scored}))
    m = res.metrics
    nan = bool(m.get("train/nan"))
    return {"cell": cell, "method": "adalora", "lr": lr, "seed": seed, "split": split, "steps": steps,
            "params": int(m["cost/params"]), "bits": float(m["cost/bits"]),
            "zero_rank_modules": sum(1 for r in res.ranks.values() if r == 0), "train_loss": m["train/loss"],
            "loss": math.nan if nan else m["quality/eval_loss"], "acc": math.nan if nan else m["quality/accuracy"],
            "budget_violation": m.get("budget/violation"), "train_seconds": time.time() - t0,
            "seconds": time.time() - t0, "ranks": dict(res.ranks),
            "date": datetime.now().isoformat(timespec="seconds")}  # fmt: skip


def key(r: dict) -> tuple:
    return (r["cell"], r["method"], float(r["lr"]), int(r["seed"]), r["split"], int(r["steps"]))


def load_runs(work: Path) -> dict[tuple, dict]:
    runs = {}
    for f in sorted(work.glob("runs*.jsonl")):
        for line in f.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                runs[key(r)] = r
    return runs


def best_lrs(runs: dict, lrs, steps: int) -> dict[str, float]:
    """Each method's lr with the best mean dev accuracy over the selection seeds (ties: lower dev loss)."""
    out = {}
    for m in METHODS:
        scored = []
        for lr in lrs:
            rows = [runs.get(("sst2-r1", m, float(lr), s, "dev", steps)) for s in SELECT_SEEDS]
            if all(rows):
                scored.append((np.mean([r["acc"] for r in rows]), -np.mean([r["loss"] for r in rows]), lr))
        if len(scored) == len(lrs):
            out[m] = max(scored)[2]
    return out


def jobs(phase: str, runs: dict, a) -> list[tuple]:
    ms = a.methods or METHODS
    if phase == "select":
        return [("sst2-r1", m, float(lr), s, "dev") for s in SELECT_SEEDS for m in ms for lr in a.lrs]
    lrs = best_lrs(runs, a.lrs, a.steps)
    missing = [m for m in ms if m not in lrs]
    if missing:
        raise LookupError(f"phase {phase}: lr selection incomplete for {missing}; run --phase select first")
    if phase == "report":
        return [("sst2-r1", m, lrs[m], s, "test") for s in REPORT_SEEDS for m in ms]
    if phase == "frontier":
        return [("sst2-r2", m, lrs[m], s, "test") for s in REPORT_SEEDS for m in ms if m in FRONTIER_METHODS]
    if phase == "trec":
        return [(c, m, lrs[m], s, "test") for c in ("trec6-r1", "trec50-r1") for s in TREC_SEEDS for m in ms
                if m not in ("random", "adalora")]  # fmt: skip
    raise ValueError(phase)


def same_allocation_run(allocs: Allocations, runs: dict, cell: str, method: str, lr: float, seed: int, split: str,
                        steps: int) -> dict | None:  # fmt: skip
    """The result of an identical run already done under another method's name, or None.

    Two fixed allocations can coincide (both policies ask for ~rank 2 everywhere and the budget projection cuts the
    same modules); a run is deterministic given (allocation, lr, seed, steps, split) - checked: identical accuracy to
    the last digit for such pairs on 4 seeds - so the result is reused, marked ``reused_from``."""
    if method in ("random", "adalora"):
        return None
    ranks = allocs.ranks(cell, method, seed)
    for k, r in runs.items():
        if k[0] == cell and k[1] != method and k[2:] == (lr, seed, split, steps) and r["ranks"] == ranks:
            return {**r, "method": method, "reused_from": k[1], "date": datetime.now().isoformat(timespec="seconds")}
    return None


def run_phase(phase: str, a, allocs: Allocations) -> None:
    from tqdm import tqdm

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    i, n = (int(x) for x in a.worker.split("/"))
    for waited in range(121):  # another worker may still be finishing the lr selection
        try:
            done = load_runs(work)
            todo = [j for j in jobs(phase, done, a) if (*j, a.steps) not in done]
            break
        except LookupError as e:
            if n == 1 or waited == 120:
                raise SystemExit(str(e)) from None
            print(f"{e}: waiting for the other workers ({waited / 2:.0f} min)", flush=True)
            time.sleep(30)
    mine = todo[i::n]
    print(f"phase {phase}: {len(todo)} runs pending, worker {i}/{n} takes {len(mine)}", flush=True)
    with open(work / f"runs-{phase}-{i}of{n}.jsonl", "a") as fh:
        for cell, method, lr, seed, split in tqdm(mine, desc=phase, unit="run"):
            done = load_runs(work)  # re-read: another worker may have finished runs meanwhile
            if (cell, method, lr, seed, split, a.steps) in done:
                continue
            r = same_allocation_run(allocs, done, cell, method, lr, seed, split, a.steps)
            r = r or one_run(allocs, cell, method, lr, seed, split, a.steps)
            fh.write(json.dumps(r) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
            tqdm.write(f"  {cell} {method:<15} lr {lr:g} seed {seed:>3} {split}: acc {r['acc']:.4f} params "
                       f"{r['params']:,} zero-rank {r['zero_rank_modules']:>2} ({r['seconds']:.0f}s)")  # fmt: skip


# ---------------------------------------------------------------------------------------------- summary
def stats(rows: list[dict]) -> dict:
    acc = np.array([r["acc"] for r in rows], dtype=float)
    return {"n": len(rows), "acc": float(acc.mean()), "acc_std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
            "acc_se": float(acc.std(ddof=1) / math.sqrt(len(acc))) if len(acc) > 1 else 0.0,
            "params": float(np.mean([r["params"] for r in rows])), "bits": float(np.mean([r["bits"] for r in rows])),
            "zero_rank_modules": float(np.mean([r["zero_rank_modules"] for r in rows])),
            "lr": rows[0]["lr"], "seconds": float(np.mean([r["seconds"] for r in rows]))}  # fmt: skip


def paired_tests(x: list[float], y: list[float]) -> dict:
    from scipy import stats as st

    d = np.array(x) - np.array(y)
    res = {"mean_diff_points": float(100 * d.mean()), "n": len(d), "ttest_p": None, "wilcoxon_p": None}
    if len(d) > 1 and np.all(np.isfinite(d)) and not np.allclose(d, d[0]):
        res["ttest_p"] = float(st.ttest_rel(x, y).pvalue)
    if len(d) > 1 and np.any(d != 0):
        res["wilcoxon_p"] = float(st.wilcoxon(x, y).pvalue)
    return res


def cell_table(runs: dict, cell: str, seeds, lrs: dict, steps: int) -> dict:
    rows = {m: [runs.get((cell, m, lrs[m], s, "test", steps)) for s in seeds] for m in METHODS if m in lrs}
    rows = {m: v for m, v in rows.items() if all(v)}
    table = {m: stats(v) for m, v in rows.items()}
    if "uniform" in rows:
        ref = [r["acc"] for r in rows["uniform"]]
        for m, v in rows.items():
            if m != "uniform":
                table[m]["vs_uniform"] = paired_tests([r["acc"] for r in v], ref)
    baselines = [m for m in table if not m.startswith("policy")]
    for p in [m for m in table if m.startswith("policy")]:
        if baselines:
            best = max(baselines, key=lambda m: table[m]["acc"])
            table[p]["vs_best_baseline"] = {"baseline": best,
                                            "points": 100 * (table[p]["acc"] - table[best]["acc"]),
                                            **paired_tests([r["acc"] for r in rows[p]],
                                                           [r["acc"] for r in rows[best]])}  # fmt: skip
    return table


def bits_to_match(r1: dict, r2: dict, target: float) -> dict:
    """Bits at which the method reaches ``target`` test accuracy, interpolating accuracy linearly in log2(bits)
    between its mean-rank-1 and -2 points. Reaching it already at r1 gives an upper bound (<= r1 bits)."""
    if r1["acc"] >= target:
        return {"bits": r1["bits"], "bound": "<="}
    if r2["acc"] < target:
        return {"bits": r2["bits"], "bound": ">"}
    lo, hi = math.log2(r1["bits"]), math.log2(r2["bits"])
    t = (target - r1["acc"]) / (r2["acc"] - r1["acc"])
    return {"bits": 2 ** (lo + t * (hi - lo)), "bound": "="}


def sim_vs_live(runs: dict, steps: int) -> dict:
    """How well policy-sst2's sim (cached calibration: no new live runs) orders live runs it never saw: Spearman
    rho between the sim's predicted eval loss and the live dev loss after ``steps`` steps, over the selection runs
    at the calibration's own lr (different seeds from the probes; allocations uniform/spectrum/importance/random/
    policies). :func:`rankrl.ranks.sim.sim_vs_live_rank_correlation` does the comparison."""
    from rankrl.ranks.sim import calibrate, sim_vs_live_rank_correlation
    from rankrl.ranks.train import TrainPolicyConfig

    meta = CACHE / "bench-rank-policy" / "policy-sst2" / "policy.json"
    if not meta.exists():
        return {"skipped": "policy-sst2 not trained yet"}
    cfg = TrainPolicyConfig.from_dict(json.loads(meta.read_text())["train_config"])
    try:
        cal = calibrate(cfg.env, cfg.probes, cfg.probe_steps or cfg.run.steps, probe_evals=cfg.probe_evals,
                        cache_only=True)  # fmt: skip
    except FileNotFoundError as e:
        return {"skipped": str(e)}
    held = [r for k, r in sorted(runs.items()) if k[0] == "sst2-r1" and k[4] == "dev" and k[5] == steps
            and math.isclose(k[2], cfg.lr) and math.isfinite(r["loss"])]  # fmt: skip
    if len(held) < 3:
        return {"skipped": f"only {len(held)} held-out live runs at lr {cfg.lr:g}"}
    order = [t.name for t in cal.targets]
    allocs = [[r["ranks"][n] for n in order] for r in held]
    rho = sim_vs_live_rank_correlation(cal, allocs, [r["loss"] for r in held], step=steps)
    return {"spearman_rho": rho, "n_configs": len(held), "lr": cfg.lr, "steps": steps,
            "calibration": {"probes": cfg.probes, "probe_steps": cfg.probe_steps or cfg.run.steps, "rate0": cal.rate0,
                            "rate1": cal.rate1, "loss0": cal.loss0, "loss_inf": cal.loss_inf},
            "pairs": [{"method": r["method"], "seed": r["seed"], "live_dev_loss": r["loss"],
                       "sim_loss": cal.predict_loss(al, steps)}
                      for r, al in zip(held, allocs, strict=True)]}  # fmt: skip


def summary(a, allocs: Allocations | None) -> dict:
    import torch

    runs = load_runs(Path(a.work))
    lrs = best_lrs(runs, a.lrs, a.steps)
    select = {m: {f"{lr:g}": float(np.mean([runs[("sst2-r1", m, float(lr), s, "dev", a.steps)]["acc"]
                                             for s in SELECT_SEEDS]))
                  for lr in a.lrs if all(("sst2-r1", m, float(lr), s, "dev", a.steps) in runs for s in SELECT_SEEDS)}
              for m in METHODS}  # fmt: skip
    tables = {"sst2-r1": cell_table(runs, "sst2-r1", REPORT_SEEDS, lrs, a.steps),
              "sst2-r2": cell_table(runs, "sst2-r2", REPORT_SEEDS, lrs, a.steps),
              "trec6-r1": cell_table(runs, "trec6-r1", TREC_SEEDS, lrs, a.steps),
              "trec50-r1": cell_table(runs, "trec50-r1", TREC_SEEDS, lrs, a.steps)}  # fmt: skip
    goals: dict = {}
    try:
        simcorr = sim_vs_live(runs, a.steps)
    except Exception as e:  # a report on the side: never lose the tables over it
        simcorr = {"skipped": f"{type(e).__name__}: {e}"}
    t1, t2 = tables["sst2-r1"], tables["sst2-r2"]
    if "uniform" in t2:
        target = t2["uniform"]["acc"] - t2["uniform"]["acc_se"]
        frontier = {m: bits_to_match(t1[m], t2[m], target) for m in FRONTIER_METHODS if m in t1 and m in t2}
        for f in frontier.values():
            f["vs_uniform_r2_bits"] = f["bits"] / t2["uniform"]["bits"]
        goals["frontier"] = {"target_test_acc": target, "reference": "tuned uniform r2 mean - 1 SE",
                             "methods": frontier,
                             "goal": ">= 30% fewer bits than uniform to match tuned uniform-r2"}  # fmt: skip
        if "policy-sst2" in frontier and "uniform" in frontier:
            saving = 1 - frontier["policy-sst2"]["bits"] / frontier["uniform"]["bits"]
            goals["frontier"] |= {"policy_bit_saving_vs_uniform": saving, "met": bool(saving >= 0.30)}
    for cell in ("sst2-r1", "trec6-r1", "trec50-r1"):
        for p in ("policy-sst2", "policy-default"):
            v = tables[cell].get(p, {}).get("vs_best_baseline")
            if v:
                goals[f"{cell}/{p}"] = {"goal": ">= 1 point over the best baseline at the extreme budget",
                                        "best_baseline": v["baseline"], "points": v["points"],
                                        "met": bool(v["points"] >= 1.0)}  # fmt: skip
    result = {"benchmark": "rank_policy", "date": datetime.now().isoformat(timespec="seconds"),
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                          "threads_per_run": a.threads},
              "config": {"model": MODEL, "modules": 36, "steps": a.steps, "batch_size": 16, "max_length": 64,
                         "r_max": R_MAX, "alpha": 16.0, "grid": [0, 1, 2, 4, 8], "precision_bits": 32,
                         "cells": {c: {"data": CELLS[c][0], "labels": CELLS[c][1], "mean_rank_budget": CELLS[c][2]}
                                   for c in CELLS},
                         "lrs_swept": a.lrs, "select_seeds": SELECT_SEEDS, "report_seeds": REPORT_SEEDS,
                         "trec_seeds": TREC_SEEDS, "selection": "per method, mean dev acc on sst2-r1 selection seeds",
                         "test_eval": "run._encode(test split) swapped into run._eval for evaluate() (private API)"},
              "policies": allocs.policy_info if allocs else {}, "lr_selection_dev_acc": select, "chosen_lr": lrs,
              "tables": tables, "goals": goals, "sim_vs_live": simcorr, "not_covered": NOT_COVERED,
              "runs": sorted(runs.values(), key=key)}  # fmt: skip
    out = Path(a.out)
    if out.exists():  # keep the policy records of an earlier summary when this process trained none
        old = json.loads(out.read_text())
        result["policies"] = {**old.get("policies", {}), **result["policies"]}
    atomic_json(result, out)
    try:
        plot(tables, out.with_suffix(".png"))
    except Exception as e:  # the plot is optional
        print(f"(plot skipped: {e})")
    print_tables(result)
    return result


def print_tables(res: dict) -> None:
    fmt = lambda p: "-" if p is None else f"{p:.3f}"  # noqa: E731
    print(f"\nlr per method (best mean dev acc on sst2-r1, seeds {SELECT_SEEDS}): {res['chosen_lr']}")
    for cell, table in res["tables"].items():
        if not table:
            continue
        print(f"\n{cell}: test accuracy, mean +- std over seeds; d / p = paired vs uniform (t-test, Wilcoxon)")
        print(f"  {'method':<15} {'lr':>6} {'params':>7} {'Mbits':>6} {'0-rank':>6} {'test acc':>15} {'d':>6} "
              f"{'t p':>6} {'wil p':>6}")  # fmt: skip
        for m, s in table.items():
            v = s.get("vs_uniform", {})
            print(f"  {m:<15} {s['lr']:>6g} {s['params']:>7,.0f} {s['bits'] / 1e6:>6.2f} "
                  f"{s['zero_rank_modules']:>6.1f} "
                  f"{100 * s['acc']:>7.2f} +- {100 * s['acc_std']:<4.2f} {v.get('mean_diff_points', 0):>+6.2f} "
                  f"{fmt(v.get('ttest_p')):>6} {fmt(v.get('wilcoxon_p')):>6}")  # fmt: skip
    sc = res["sim_vs_live"]
    if "spearman_rho" in sc:
        print(f"\nsim vs live (policy-sst2's calibration, {sc['n_configs']} held-out live runs at lr {sc['lr']:g}): "
              f"Spearman rho {sc['spearman_rho']:.3f} (sim rate1 {sc['calibration']['rate1']:.4f})")  # fmt: skip
    else:
        print(f"\nsim vs live: {sc.get('skipped')}")
    for g, v in res["goals"].items():
        print(f"goal {g}: {json.dumps(v, default=str)}")
    print("NOT covered: " + "; ".join(NOT_COVERED))


def plot(tables: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [c for c in tables if tables[c]]
    if not cells:
        return
    fig, axes = plt.subplots(1, len(cells), figsize=(3.4 * len(cells), 3.4), squeeze=False)
    for ax, cell in zip(axes[0], cells, strict=True):
        names = list(tables[cell])
        x = np.arange(len(names))
        ax.bar(x, [100 * tables[cell][n]["acc"] for n in names], yerr=[100 * tables[cell][n]["acc_std"] for n in names],
               capsize=3, color=["C1" if n.startswith("policy") else "C0" for n in names])  # fmt: skip
        lo = min(100 * tables[cell][n]["acc"] for n in names)
        ax.set_ylim(max(0, lo - 6), None)
        ax.set_xticks(x, names, rotation=45, ha="right", fontsize=7)
        ax.set_title(f"{cell} (test acc %)", fontsize=9)
    fig.suptitle("minilm, LoRA rank allocation at equal parameter budget, mean +- std over seeds", fontsize=9)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phase", default="all", choices=["all", "select", "report", "frontier", "trec", "summary"])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--lrs", type=float, nargs="+", default=[2e-3, 5e-3])
    ap.add_argument("--worker", default="0/1", help="i/n: take every n-th pending run (one process per core)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--methods", nargs="+", default=None, choices=METHODS, help="run only these methods' runs")
    ap.add_argument("--policy-sst2", default=None, help="existing policy dir (default: train and cache one)")
    ap.add_argument("--policy-default", default=None, help="existing policy dir (default: train and cache one)")
    ap.add_argument("--work", default=str(CACHE / "bench-rank-policy"), help="run cache (JSONL, resumable)")
    ap.add_argument("--out", default=str(RESULTS / "rank_policy.json"))
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    for d in ("sst2", "trec_qc"):
        if not (SHARED / d).is_dir():
            raise SystemExit(f"rank_policy benchmark: {SHARED / d} is absent (needs ../shared/data); nothing to run")
    allocs = Allocations(a)
    phases = ["select", "report", "frontier", "trec"] if a.phase == "all" else [a.phase]
    for ph in phases:
        if ph != "summary":
            run_phase(ph, a, allocs)
        summary(a, allocs)


if __name__ == "__main__":
    main()
