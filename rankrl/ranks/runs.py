"""A dataset of live LoRA runs: one JSONL row per run (allocation, budget, final eval loss and accuracy), grown by
``rankrl collect-runs`` and read by the learned surrogate (:mod:`rankrl.ranks.surrogate`).

Each row is one constant allocation fine-tuned live for a whole run (:func:`rankrl.ranks.finetune.new_live_run`)
and evaluated at step 0 and at the end. Allocations are *structures* spent at a mean-rank budget by the same
rounding the policy's shares go through (:func:`rankrl.ranks.rounding.allocate_by_shares`), so every structure of
a budget has (up to one grid step) the same parameters:

- ``uniform``: shares in proportion to each module's cost (= LoRA at the budget's rank everywhere);
- ``attention`` / ``mlp``: the same, only on the attention (q, k, v, o) or only on the MLP (up, down, gate) modules;
- ``qv``: only on q and v (the classic LoRA default);
- ``depth-up`` / ``depth-down``: cost x (depth + 1) or cost x (layers - depth): more rank to the late / early layers;
- ``random-K``: cost x a log-normal draw per module (seeded by K and the run seed), about a quarter of modules off.

The run settings are part of every row and of its key; a row whose key is already in the file is not run again,
so an interrupted collection resumes where it stopped. Each row is appended with one ``write`` of one line and
flushed and fsynced before the next run starts; a half-written last line (a crash mid-write) is ignored when read
and cut off by the next append.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rankrl.ranks.budgets import Budget, BudgetSpec, pow2_grid
from rankrl.ranks.rounding import allocate_by_shares

__all__ = [
    "ATTENTION_KINDS",
    "MLP_KINDS",
    "ROW_VERSION",
    "STRUCTURES",
    "CollectRunsConfig",
    "collect_runs",
    "read_runs",
    "structure_shares",
]

ROW_VERSION = 1
ATTENTION_KINDS = frozenset({"q", "k", "v", "o"})
MLP_KINDS = frozenset({"up", "down", "gate"})
#: named structures (``random-K`` is also accepted for any K >= 0)
STRUCTURES = ("uniform", "attention", "mlp", "qv", "depth-up", "depth-down")
#: run settings that make two rows comparable (part of every row's key)
RUN_KEYS = ("model", "task", "labels", "seed", "steps", "lr", "r_max", "batch_size", "max_length", "max_eval",
            "max_train", "alpha", "warmup_steps")  # fmt: skip


def structure_shares(targets: Sequence[Any], structure: str, seed: int = 0) -> np.ndarray:
    """Each module's share of the budget for a named structure (see the module docstring), in target order.

    >>> from types import SimpleNamespace as T
    >>> ts = [T(kind="q", layer_index=0, num_layers=2, in_features=4, out_features=4),
    ...       T(kind="up", layer_index=1, num_layers=2, in_features=4, out_features=12)]
    >>> structure_shares(ts, "uniform").tolist(), structure_shares(ts, "mlp").tolist()
    ([0.3333333333333333, 0.6666666666666666], [0.0, 1.0])
    """
    cost = np.array([t.in_features + t.out_features for t in targets], dtype=np.float64)
    kinds = [t.kind for t in targets]
    depth = np.array([t.layer_index for t in targets], dtype=np.float64)
    layers = np.array([t.num_layers for t in targets], dtype=np.float64)
    if structure == "uniform":
        w = cost
    elif structure == "attention":
        w = cost * np.array([k in ATTENTION_KINDS for k in kinds])
    elif structure == "mlp":
        w = cost * np.array([k in MLP_KINDS for k in kinds])
    elif structure == "qv":
        w = cost * np.array([k in ("q", "v") for k in kinds])
    elif structure == "depth-up":
        w = cost * (depth + 1)
    elif structure == "depth-down":
        w = cost * (layers - depth)
    elif structure.startswith("random-") and structure[7:].isdigit():
        rng = np.random.default_rng([int(structure[7:]), seed, 7919])
        w = cost * rng.lognormal(0.0, 1.0, len(targets)) * (rng.random(len(targets)) > 0.25)
        if not w.any():
            w[int(rng.integers(len(targets)))] = 1.0
    else:
        raise ValueError(f"unknown structure {structure!r}; use one of {', '.join(STRUCTURES)} or random-K")
    if not w.sum() > 0:
        raise ValueError(f"structure {structure!r} gives no module of this model any share (no such kinds)")
    return w / w.sum()


@dataclass(frozen=True)
class CollectRunsConfig:
    """Fine-tune a model live once per (structure, budget, seed) and append one JSONL row per run to --out: the
    dataset the learned surrogate of ``rankrl train-policy --surrogate`` is fitted on. Rows already in --out (same
    run settings, structure, budget and seed) are skipped, so a stopped collection resumes."""

    model: str = "minilm"
    """model alias (minilm, smollm2, tiny-bert, tiny-llama, tiny-qwen), local directory or hub id"""
    task: str = "default"
    """task: 'default' (embedded), 'arith', a local file/directory (e.g. ../shared/data/sst2), or a hub name"""
    labels: str = "coarse"
    """TREC-style tasks: 'coarse' (6 classes) or 'fine' (50)"""
    budgets: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
    """mean-rank budgets (each structure is spent at each)"""
    structures: tuple[str, ...] = (*STRUCTURES, "random-0", "random-1", "random-2")
    """allocation structures (uniform, attention, mlp, qv, depth-up, depth-down, random-K)"""
    top: bool = True
    """also run uniform LoRA at r_max (every module at the top rank) once per seed"""
    seeds: tuple[int, ...] = (0,)
    """run seeds (initialisation, data order); every structure runs at every seed (paired)"""
    steps: int = 40
    """optimizer steps per run (the train-policy episode's default)"""
    lr: float = 3e-3
    """AdamW learning rate (the train-policy episode's default)"""
    r_max: int = 8
    """directions per module (grid: 0 and powers of two up to it)"""
    batch_size: int = 16
    """training batch size"""
    max_length: int = 64
    """tokens per example"""
    max_eval: int = 256
    """held-out rows evaluated at step 0 and at the end"""
    max_train: int | None = None
    """use at most this many training rows"""
    alpha: float = 16.0
    """LoRA alpha"""
    warmup_steps: int = 0
    """linear warm-up steps"""
    threads: int | None = None
    """torch CPU threads"""
    out: str = "benchmarks/results/rank_runs.jsonl"
    """the dataset: one JSON row per run, appended"""
    limit: int | None = None
    """run at most this many new rows, then stop (the rest on the next call)"""
    extra: dict[str, str] = field(default_factory=dict)
    """free-form tags stored in every new row (e.g. --extra purpose=heldout)"""

    def __post_init__(self) -> None:
        if not self.budgets or any(not (math.isfinite(b) and 0 < b <= self.r_max) for b in self.budgets):
            raise ValueError(f"--budgets must be mean ranks in (0, r_max={self.r_max}], got {self.budgets}")
        for s in self.structures:
            if s not in STRUCTURES and not (s.startswith("random-") and s[7:].isdigit()):
                raise ValueError(f"--structures: unknown {s!r}; use {', '.join(STRUCTURES)} or random-K")
        if self.steps < 1 or self.r_max < 1 or self.max_eval < 1:
            raise ValueError("--steps, --r_max and --max_eval must be >= 1")

    def run_config(self, seed: int) -> Any:
        from rankrl.ranks.finetune import FineTuneConfig

        return FineTuneConfig(model=self.model, task=self.task, labels=self.labels, seed=seed, steps=self.steps,
                              lr=self.lr, r_max=self.r_max, batch_size=self.batch_size, max_length=self.max_length,
                              max_eval=self.max_eval, max_train=self.max_train, alpha=self.alpha,
                              warmup_steps=self.warmup_steps, eval_every=0, threads=self.threads)  # fmt: skip


def row_key(row: Mapping[str, Any]) -> str:
    """What makes a run unique in the dataset: its run settings, structure, budget and seed."""
    return json.dumps([row.get(k) for k in (*RUN_KEYS, "structure", "budget_rank")], default=str)


def read_runs(path: str | os.PathLike, *, where: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The rows of a dataset file (``[]`` when it does not exist), optionally only those whose fields equal
    ``where``'s. A torn last line (a crash mid-append) is skipped; any other bad line raises with its number."""
    p = Path(path)
    if not p.exists():
        return []
    lines = p.read_text().splitlines()
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) and not p.read_text().endswith("\n"):
                continue  # the torn tail of an interrupted append
            raise ValueError(f"{p}:{i}: not a JSON row; fix or delete that line") from None
        if row.get("version") != ROW_VERSION:
            raise ValueError(f"{p}:{i}: row version {row.get('version')} is not {ROW_VERSION}; recollect")
        if where is None or all(row.get(k) == v for k, v in where.items()):
            rows.append(row)
    return rows


def _append(path: Path, row: Mapping[str, Any]) -> None:
    """One line per run, appended in one write and fsynced: earlier rows are never rewritten, so nothing already
    collected can be lost; a crash mid-write leaves at most a torn last line, which :func:`read_runs` skips."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = path.read_bytes() if path.exists() else b""
    if data and not data.endswith(b"\n"):  # the torn tail of a crashed append was never a row: cut it off
        os.truncate(path, data.rfind(b"\n") + 1)
    with open(path, "ab") as f:
        f.write((json.dumps(row, sort_keys=True) + "\n").encode())
        f.flush()
        os.fsync(f.fileno())


def plan(config: CollectRunsConfig) -> list[tuple[int, str, float]]:
    """``(seed, structure, budget_rank)`` of every run the config asks for, in run order (top rank first)."""
    out = []
    for seed in config.seeds:
        if config.top:
            out.append((seed, "uniform", float(config.r_max)))
        out += [(seed, s, float(b)) for b in config.budgets for s in config.structures
                if not (config.top and s == "uniform" and b == config.r_max)]  # fmt: skip
    return out


def allocation(targets: Sequence[Any], structure: str, budget_rank: float, r_max: int, seed: int = 0) -> dict:
    """The ranks of a structure spent at a mean-rank budget (the policy's rounding; see the module docstring)."""
    cap = BudgetSpec(rank=budget_rank).param_cap(targets)
    return allocate_by_shares(targets, structure_shares(targets, structure, seed), Budget(max_params=cap),
                              pow2_grid(r_max), r_max=r_max)  # fmt: skip


def collect_runs(config: CollectRunsConfig) -> list[dict[str, Any]]:
    """Run every planned row that is not in ``config.out`` yet; returns the new rows (each already appended)."""
    from rankrl.ranks.costs import allocation_cost
    from rankrl.ranks.finetune import load_run_inputs, new_live_run

    out = Path(config.out)
    done = {row_key(r) for r in read_runs(out)}
    todo = []
    for seed, structure, b in plan(config):
        settings = {**asdict(config.run_config(seed)), "structure": structure, "budget_rank": b}
        if row_key(settings) not in done:
            todo.append((seed, structure, b))
    if config.limit is not None:
        todo = todo[: config.limit]
    print(f"collect-runs: {len(todo)} run(s) to do for {config.model} on {config.task} -> {out} "
          f"({len(done)} row(s) already there)", flush=True)  # fmt: skip
    new: list[dict[str, Any]] = []
    task_cache: dict[int, Any] = {}
    for i, (seed, structure, b) in enumerate(todo):
        rc = config.run_config(seed)
        if seed not in task_cache:
            task_cache[seed] = load_run_inputs(rc)[0]
        t0 = time.perf_counter()
        run = new_live_run(rc, task=task_cache[seed])
        targets = tuple(run.targets)
        ranks = allocation(targets, structure, b, config.r_max, seed)
        first = run.evaluate()
        run.set_ranks(ranks)
        train = run.advance(config.steps)
        last = run.evaluate()
        cost = allocation_cost(targets, ranks, precision_bits=32)
        full = allocation_cost(targets, {t.name: config.r_max for t in targets}, precision_bits=32)
        row = {
            "version": ROW_VERSION,
            **{k: getattr(rc, k) for k in RUN_KEYS},
            "structure": structure,
            "budget_rank": b,
            "modules": [[t.kind, t.layer_index, t.num_layers, t.in_features, t.out_features] for t in targets],
            "ranks": [int(ranks[t.name]) for t in targets],
            "params": int(cost.params),
            "params_frac": float(cost.params / full.params),
            "loss0": float(first["quality/eval_loss"]),
            "acc0": float(first["quality/accuracy"]),
            "eval_loss": float(last["quality/eval_loss"]),
            "accuracy": float(last["quality/accuracy"]),
            "train_nan": bool(train.get("train/nan", False)),
            "seconds": round(time.perf_counter() - t0, 2),
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()} {os.cpu_count()} cpu",
            **({"tags": dict(config.extra)} if config.extra else {}),
        }
        _append(out, row)
        new.append(row)
        print(f"[{i + 1}/{len(todo)}] seed {seed} {structure:>10} @ mean rank {b:g}: eval loss {row['loss0']:.4f} -> "
              f"{row['eval_loss']:.4f}, acc {row['accuracy']:.3f}, {row['params']:,} params "
              f"({row['seconds']:.1f} s)", flush=True)  # fmt: skip
        del run
    return new
