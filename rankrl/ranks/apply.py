"""``rankrl apply``: a trained rank policy -> a PEFT ``adapter_config.json`` for any model (+ an optional fine-tune).

The features of the NEW model (:mod:`rankrl.ranks.features`, gradient sensitivity on a few real batches of
``--task``, exactly as the live env computes them), the observation the env would show at its first decision, the
policy's deterministic action, and the env's own :meth:`~rankrl.ranks.env.LoRARankEnv.decode_action` and
:meth:`~rankrl.ranks.env.LoRARankEnv.project` (budget enforced by projection): :func:`rankrl.ranks.policy.allocate`.
The ranks become a PEFT ``LoraConfig`` (``adapter_config.json``, :func:`rankrl.ranks.lora.write_adapter_config`)
that ``LoraConfig.from_pretrained(DIR)`` loads; its keys are checked against the model (exact) and
``get_peft_model`` on a fresh copy proves every module got its rank.
"""

from __future__ import annotations

import csv
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rankrl.atomic import atomic_write, atomic_write_json
from rankrl.ranks.budgets import BudgetSpec
from rankrl.ranks.policy import Allocation, PolicyLayoutError, load_policy

__all__ = ["ApplyConfig", "ApplyResult", "PolicyLayoutError", "apply_policy", "plot_rank_grid", "write_ranks"]


def plot_rank_grid(targets: tuple, ranks: Mapping[str, int], out: str | os.PathLike, title: str = "",
                   r_max: int | None = None) -> Path:  # fmt: skip
    """Heatmap of ranks, layers (rows) x projection kinds (columns), colour scale 0..r_max, cells annotated;
    atomic PNG."""
    from rankrl.plots import annotated_heatmap
    from rankrl.targets import KINDS

    kinds = [k for k in KINDS if any(t.kind == k for t in targets)]
    layers = max(t.layer_index for t in targets) + 1
    grid = np.full((layers, len(kinds)), np.nan)
    for t in targets:
        grid[t.layer_index, kinds.index(t.kind)] = ranks[t.name]
    return annotated_heatmap(grid, [f"layer {i}" for i in range(layers)], kinds, out, title=title, vmax=r_max)


def write_ranks(targets: tuple, ranks: Mapping[str, int], out: Path) -> None:
    """``ranks.json`` ({module: rank}) and ``ranks.csv`` (one row per module with its shape and params) in ``out``,
    each written atomically: a failure half-way leaves the previous file whole."""
    atomic_write_json(out / "ranks.json", {t.name: int(ranks[t.name]) for t in targets})

    def table(path: Path) -> None:
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["module", "kind", "layer", "in_features", "out_features", "rank", "params"])
            for t in targets:
                r = int(ranks[t.name])
                w.writerow([t.name, t.kind, t.layer_index, t.in_features, t.out_features, r,
                            r * (t.in_features + t.out_features)])  # fmt: skip

    atomic_write(out / "ranks.csv", table, ".csv")


# ------------------------------------------------------------------------------------------------- apply
@dataclass(frozen=True)
class ApplyConfig:
    """Apply a trained rank policy to a (new) model: ranks under a budget -> PEFT adapter_config.json (+ fine-tune)."""

    policy: str
    """directory (or file) with policy.safetensors + policy.json from `rankrl train-policy`"""
    model: str
    """the model to allocate for (alias, local directory or hub id); may differ from the training model"""
    out: str = "runs/apply"
    """output directory: adapter_config.json, ranks.json, ranks.csv, ranks.png, apply.json (+ finetuned/)"""
    task: str = "default"
    """task whose batches measure gradient sensitivity (and that --finetune trains); 'none': neutral gradients"""
    budget: BudgetSpec = field(default_factory=lambda: BudgetSpec(rank=None))
    """caps replacing the policy's (--budget.rank / --budget.params replace its parameter cap; None: the policy's)"""
    snr_db: float | None = None
    """channel SNR of the decision in dB (None: middle of the policy's training range)"""
    bandwidth_hz: float | None = None
    """channel bandwidth in Hz (None: middle of the policy's training range)"""
    feature_batches: int = 4
    """real batches for the gradient-sensitivity features"""
    finetune: bool = False
    """fine-tune with the allocated ranks afterwards and print accuracy before/after"""
    steps: int | None = None
    """--finetune steps (None: the policy's episode length)"""
    lr: float | None = None
    """--finetune learning rate (None: the policy's)"""
    batch_size: int | None = None
    """batch size of the feature batches and --finetune (None: the policy's)"""
    max_eval: int | None = 500
    """--finetune: held-out rows evaluated"""
    seed: int = 0
    """seed of the model head, data order and features"""
    threads: int | None = None
    """torch CPU threads (None: torch's choice)"""

    def __post_init__(self) -> None:
        if self.feature_batches < 1:
            raise ValueError(f"feature_batches must be >= 1, got {self.feature_batches}")
        if self.finetune and self.task == "none":
            raise ValueError("--finetune needs a task to train on; pass --task")
        for name in ("steps", "batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 or None")


@dataclass
class ApplyResult:
    """What :func:`apply_policy` wrote and measured."""

    allocation: Allocation
    lora_config: Any
    out: Path
    finetune: dict[str, dict[str, float]] = field(default_factory=dict)


def apply_policy(config: ApplyConfig) -> ApplyResult:
    """Everything ``rankrl apply`` does (see the module docstring); prints the table and writes ``config.out``."""
    import torch

    from rankrl.ranks.finetune import FineTuneConfig, FineTuneRun, model_features
    from rankrl.ranks.lora import write_adapter_config
    from rankrl.ranks.policy import allocate

    if config.threads:
        torch.set_num_threads(config.threads)
    loaded = load_policy(config.policy)
    meta, run = loaded.meta, loaded.meta["run_config"]
    budget = BudgetSpec.from_meta(meta["budgets"]).merged(config.budget)
    task = None if config.task == "none" else config.task
    batch_size = config.batch_size or run["batch_size"]
    targets, feats, task_obj = model_features(config.model, task, r_max=run["r_max"], seed=config.seed,
                                              n_batches=config.feature_batches, batch_size=batch_size,
                                              threads=config.threads)  # fmt: skip
    alloc = allocate(loaded, targets, feats.static, budget, snr_db=config.snr_db, bandwidth_hz=config.bandwidth_hz)
    out = Path(config.out)
    kind = task_obj.kind if task_obj is not None else None
    lora = write_adapter_config(alloc.ranks, out, config.model, alpha=run["alpha"], dropout=run["dropout"],
                                task_kind=kind, num_labels=max(task_obj.num_labels, 2) if task_obj else 2,
                                seed=config.seed)  # fmt: skip
    write_ranks(targets, alloc.ranks, out)
    png = plot_rank_grid(targets, alloc.ranks, out / "ranks.png", title=f"{config.model}: policy ranks "
                         f"({alloc.metrics['cost/params']:,.0f} params)", r_max=run["r_max"])  # fmt: skip
    print(f"policy {loaded.path} (trained on {meta['trained_on']['model']}/{meta['trained_on']['task']}) -> "
          f"{config.model}: {len(targets)} modules, features from {task or 'no task (neutral gradients)'}")
    print(f"  {'module':<48} {'kind':<5} {'layer':>5} {'rank':>5}")
    for t in targets:
        print(f"  {t.name:<48} {t.kind:<5} {t.layer_index:>5} {alloc.ranks[t.name]:>5}")
    caps = ", ".join(f"{k} {v:,.6g}" for k, v in alloc.budget.caps.items()) or "none"
    uni_r = next(iter(alloc.uniform.values()))
    spent = "" if alloc.spend == 1.0 else f" (the policy chose to spend {alloc.spend:.0%} of it)"
    print(f"budget: {caps} | used {alloc.metrics['cost/params']:,.0f} params{spent}, violation "
          f"{alloc.metrics['budget/violation']:.3g} | uniform at this budget: rank {uni_r} everywhere")
    result = ApplyResult(alloc, lora, out)
    if config.finetune:
        if config.lr is None and config.steps and config.steps > run["steps"]:
            warnings.warn(f"--finetune runs {config.steps} steps at the policy's lr {run['lr']:g}, which was set for "
                          f"{run['steps']}-step episodes; a longer run usually needs a lower --lr (e.g. 1e-3 for "
                          "200 MiniLM steps: at 3e-3 it stayed at chance)", stacklevel=2)  # fmt: skip
        ft = FineTuneConfig(model=config.model, task=config.task, r_max=run["r_max"], alpha=run["alpha"],
                            dropout=run["dropout"], steps=config.steps or run["steps"],
                            lr=run["lr"] if config.lr is None else config.lr,
                            batch_size=batch_size, max_eval=config.max_eval, eval_every=0, seed=config.seed,
                            threads=config.threads)  # fmt: skip
        from tqdm.auto import tqdm

        fine = FineTuneRun(ft, ranks=alloc.ranks)
        before = fine.evaluate()
        with tqdm(total=ft.steps, desc="finetune", unit="step") as bar:
            fine.advance(ft.steps, progress=bar)
        after = fine.evaluate()
        fine.lora.export(out / "finetuned")
        result.finetune = {"before": before, "after": after}
        for k in ("quality/eval_loss", "quality/accuracy"):
            print(f"  {k:<20} {before[k]:.4f} -> {after[k]:.4f}")
        if not after["quality/eval_loss"] < 0.999 * before["quality/eval_loss"]:  # diverged or flat: say so
            print(f"WARNING: eval loss did not fall ({before['quality/eval_loss']:.4f} -> "
                  f"{after['quality/eval_loss']:.4f}); lower --lr (now {ft.lr:g}) or check the task")  # fmt: skip
        print(f"fine-tuned adapter -> {out / 'finetuned'}")
    summary = {"policy": str(loaded.path), "model": config.model, "task": task, "budget": alloc.budget.caps,
               "channel": alloc.channel, **alloc.metrics, "spend": alloc.spend,
               "uniform_rank": uni_r, "finetune": result.finetune}  # fmt: skip
    atomic_write_json(out / "apply.json", summary)
    print(f"adapter_config.json (PEFT LoraConfig), ranks.json/.csv, {png.name} -> {out}")
    return result


