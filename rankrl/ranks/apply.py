"""Apply rank allocations to a model: a learned policy (``rankrl apply``) or every baseline (``rankrl baselines``).

``rankrl apply``: the features of the NEW model (:mod:`rankrl.ranks.features`, gradient sensitivity on a few real
batches of ``--task``, exactly as the live env computes them), the observation the env would show at its first
decision, the policy's deterministic action, and the env's own :meth:`~rankrl.ranks.env.LoRARankEnv.decode_action`
and :meth:`~rankrl.ranks.env.LoRARankEnv.project` (budget enforced by projection). Nothing of that is restated
here: a :class:`~rankrl.ranks.env.LoRARankEnv` is built on a *features-only* calibration of the new model
(its learning-curve numbers are never used). The ranks become a PEFT ``LoraConfig`` (``adapter_config.json``) that
``LoraConfig.from_pretrained(DIR)`` loads; its keys are checked against the model (``check_pattern_keys``,
exact) and ``get_peft_model`` on a fresh copy proves every module got its rank (``check_adapter_ranks``).

Transfer: the set policy's weights do not depend on the number of rows, so a model with more adapted modules
than the policy's ``max_modules`` is handled by re-instantiating the policy with more rows and the same weights
(:func:`widen_policy`: the identical function on the real rows; no chunking, no error). A policy file from
another observation layout (feature columns, global features) is refused with :class:`PolicyLayoutError`.

``rankrl baselines``: uniform (with an lr sweep: tuned uniform LoRA is the strongest common baseline), random,
spectrum, importance, PEFT AdaLoRA and optionally a policy, all at the same budget and seeds, each a live
:class:`~rankrl.ranks.finetune.FineTuneRun`; one table as JSON + CSV.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rankrl.ranks.train import POLICY_FILE, POLICY_FORMAT, POLICY_META

__all__ = [
    "METHODS",
    "Allocation",
    "ApplyConfig",
    "BaselinesConfig",
    "LoadedPolicy",
    "PolicyLayoutError",
    "allocate",
    "apply_policy",
    "check_layout",
    "load_policy",
    "model_features",
    "plot_rank_grid",
    "rank_lora_config",
    "run_baselines",
    "widen_policy",
    "write_adapter_config",
]

METHODS: tuple[str, ...] = ("uniform", "random", "spectrum", "importance", "adalora")
_FIX = ("retrain the policy with this rankrl (`rankrl train-policy --out DIR`, then --policy DIR), or apply it with "
        "the rankrl version that trained it")  # fmt: skip


class PolicyLayoutError(ValueError):
    """A policy file does not fit this rankrl's observation layout (or is not a rank policy at all)."""


@dataclass
class LoadedPolicy:
    """A trained rank policy: the SB3 policy network and its ``policy.json`` record."""

    policy: Any
    meta: dict[str, Any]
    path: Path


def load_policy(path: str | os.PathLike) -> LoadedPolicy:
    """Load ``policy.zip`` + ``policy.json`` (a directory, or the path of either file) on CPU.

    Raises:
        PolicyLayoutError: missing or foreign ``policy.json``, or another observation layout.
    """
    from stable_baselines3 import PPO

    p = Path(path)
    folder = p if p.is_dir() else p.parent
    meta_path, zip_path = folder / POLICY_META, folder / POLICY_FILE
    if not zip_path.exists() or not meta_path.exists():
        raise PolicyLayoutError(f"--policy {path}: expected {POLICY_FILE} and {POLICY_META} in {folder}; "
                                "train one with `rankrl train-policy --out DIR`")  # fmt: skip
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != POLICY_FORMAT:
        raise PolicyLayoutError(f"{meta_path} is not a LoRA rank policy (format {meta.get('format')!r}, expected "
                                f"{POLICY_FORMAT!r}); {_FIX}")  # fmt: skip
    policy = PPO.load(zip_path, device="cpu").policy
    policy.set_training_mode(False)
    check_layout(meta, policy, meta_path)
    return LoadedPolicy(policy, meta, folder)


def check_layout(meta: Mapping[str, Any], policy: Any = None, where: Any = "policy.json") -> None:
    """Refuse a policy whose observation columns or global features differ from what this rankrl builds.

    Raises:
        PolicyLayoutError: naming what differs and the fix.
    """
    from rankrl.ranks.env import GLOBAL_NAMES
    from rankrl.ranks.features import FEATURE_NAMES

    obs = meta.get("observation", {})
    problems = []
    if list(obs.get("feature_names", [])) != list(FEATURE_NAMES):
        theirs, mine = list(obs.get("feature_names", [])), list(FEATURE_NAMES)
        problems.append(f"feature rows of {len(theirs)} columns (not here: {sorted(set(theirs) - set(mine))}, new "
                        f"here: {sorted(set(mine) - set(theirs))}) but this rankrl builds {len(mine)}")  # fmt: skip
    if list(obs.get("global_names", [])) != list(GLOBAL_NAMES):
        problems.append(f"{len(obs.get('global_names', []))} global features {obs.get('global_names')} but this "
                        f"rankrl builds {len(GLOBAL_NAMES)} {list(GLOBAL_NAMES)}")  # fmt: skip
    if policy is not None and not problems:
        space = policy.observation_space
        if space["rows"].shape[1] != len(FEATURE_NAMES) or space["globals"].shape[0] != len(GLOBAL_NAMES):
            problems.append(f"the network reads rows of {space['rows'].shape[1]} and {space['globals'].shape[0]} "
                            "globals, not what policy.json says")  # fmt: skip
    if problems:
        raise PolicyLayoutError(f"{where}: the policy was trained on another observation layout: "
                                f"{'; '.join(problems)}. Fix: {_FIX}")  # fmt: skip


def widen_policy(policy: Any, rows: int) -> Any:
    """The same set policy (same weights) for observations of ``rows`` module rows (no-op if it has as many).

    Every weight of :class:`~rankrl.set_policy.SetActorCriticPolicy` acts per row or on masked means, so
    the wider copy computes exactly the same actions on the real rows."""
    from gymnasium import spaces

    have = policy.observation_space["rows"].shape[0]
    if rows <= have:
        return policy
    old = policy.observation_space
    n_feat, high = old["rows"].shape[1], float(old["rows"].high.flat[0])
    obs_space = spaces.Dict({"rows": spaces.Box(0.0, high, (rows, n_feat), dtype=np.float32),
                             "mask": spaces.Box(0.0, 1.0, (rows,), dtype=np.float32), "globals": old["globals"]})
    params = policy._get_constructor_parameters()  # what SB3 itself rebuilds a saved policy from
    params.pop("observation_space"), params.pop("action_space")
    wide = type(policy)(obs_space, spaces.Box(-1.0, 1.0, (rows,), dtype=np.float32), **params)
    wide.load_state_dict(policy.state_dict())
    wide.set_training_mode(False)
    return wide


# -------------------------------------------------------------------------------------------- allocation
def model_features(model: str, task: str | None, *, r_max: int, seed: int = 0, n_batches: int = 4,
                   batch_size: int = 16, threads: int | None = None) -> tuple[tuple, Any, Any]:  # fmt: skip
    """``(targets, LayerFeatures, task)`` of a model: with a task, from the same live run the env starts
    (:func:`~rankrl.ranks.sim.new_live_run` + ``run.features``, cached); ``task=None`` gives the
    neutral gradient columns (shape and spectrum only) and ``task`` None."""
    from rankrl.ranks.finetune import FineTuneConfig
    from rankrl.ranks.sim import new_live_run

    if task is None:
        from rankrl.models import load_model
        from rankrl.ranks.features import compute_features
        from rankrl.ranks.targets import find_target_modules

        loaded = load_model(model, seed=seed)
        targets = tuple(find_target_modules(loaded.model))
        return targets, compute_features(loaded.model, targets, None), None
    cfg = FineTuneConfig(model=model, task=task, r_max=r_max, seed=seed, batch_size=batch_size, threads=threads)
    run = new_live_run(cfg)
    return tuple(run.targets), run.features(n_batches), run.task


@dataclass
class Allocation:
    """A policy's allocation for one model and budget.

    Attributes:
        ranks: projected rank per module (target order), what the env would train.
        desired: the decoded action before projection.
        budget: the :class:`~rankrl.ranks.budgets.Budget` projected onto.
        metrics: ``cost/*`` and ``budget/*`` of ``ranks``.
        uniform: uniform LoRA at the same budget (for comparison).
        targets: the modules.
        channel: the round's ``snr_db`` and ``bandwidth_hz`` the decision saw.
    """

    ranks: dict[str, int]
    desired: dict[str, int]
    budget: Any
    metrics: dict[str, float]
    uniform: dict[str, int]
    targets: tuple = field(default=())
    channel: dict[str, float] = field(default_factory=dict)


def allocate(loaded: LoadedPolicy, targets: tuple, static: np.ndarray, budgets: Mapping[str, float | None], *,
             snr_db: float | None = None, bandwidth_hz: float | None = None) -> Allocation:  # fmt: skip
    """The policy's first-decision allocation for a model (its feature rows ``static``) under ``budgets``
    (``budget_rank``, ``max_params``, ``max_flops``, ``max_tx_seconds``; None = uncapped). The channel defaults to
    the middle of the policy's training ranges."""
    from rankrl.ranks.baselines import uniform
    from rankrl.ranks.budgets import budget_metrics
    from rankrl.ranks.costs import allocation_cost
    from rankrl.ranks.env import LoRARankConfig, LoRARankEnv
    from rankrl.ranks.finetune import FineTuneConfig
    from rankrl.ranks.sim import SimCalibration

    meta = loaded.meta
    env_kw = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["env_config"].items()}
    env_kw.update(budgets)
    env_kw["max_modules"] = max(int(env_kw["max_modules"]), len(targets))
    run = FineTuneConfig(**meta["run_config"])
    cfg = LoRARankConfig(run=run, **env_kw)
    # features-only calibration: the env needs rows to observe, never its (unused) learning curve
    cal = SimCalibration(targets, static, run.r_max, loss0=1.0, loss_inf=1.0, rate0=0.0, rate1=0.0,
                         sensitivity=np.ones(len(targets)), run_steps=run.steps)  # fmt: skip
    env = LoRARankEnv("sim", config=cfg, calibration=cal)
    env.reset(seed=0)
    channel = env.set_channel(snr_db, bandwidth_hz)  # the round's channel as given, not drawn
    policy = widen_policy(loaded.policy, cfg.max_modules)
    action, _ = policy.predict(env.observation(), deterministic=True)
    desired = env.decode_action(action)
    ranks = env.project(desired)
    budget = env.round_budget()
    cost = allocation_cost(env.targets, ranks, precision_bits=run.precision_bits)
    metrics = {**cost.as_metrics(), **budget_metrics(env.targets, ranks, budget)}
    same = uniform(env.targets, budget, env.grid, r_max=run.r_max)
    return Allocation(ranks, desired, budget, metrics, same, tuple(env.targets), channel)


# ------------------------------------------------------------------------------------------------ export
def rank_lora_config(ranks: Mapping[str, int], *, alpha: float, dropout: float = 0.0,
                     task_type: str | None = None) -> Any:  # fmt: skip
    """A PEFT ``LoraConfig`` for per-module ranks: full module names, rank-0 modules left out, ``r`` the most
    common rank and ``rank_pattern`` the rest. ``lora_alpha`` is one value, so each module gets PEFT's
    ``alpha / r_i``, the scaling it starts with in the live env (``alpha_pattern`` stays empty)."""
    from collections import Counter

    from peft import LoraConfig

    active = {n: int(r) for n, r in ranks.items() if r > 0}
    if not active:
        raise ValueError("every module got rank 0: nothing to adapt; raise the budget")
    r = Counter(active.values()).most_common(1)[0][0]
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=sorted(active),
                      rank_pattern={n: v for n, v in active.items() if v != r}, alpha_pattern={},
                      task_type=task_type)  # fmt: skip


def write_adapter_config(ranks: Mapping[str, int], out: str | os.PathLike, model: str, *, alpha: float,
                         dropout: float = 0.0, task_kind: str | None = None, num_labels: int = 2,
                         seed: int = 0) -> Any:  # fmt: skip
    """Write ``out/adapter_config.json`` (atomically), read it back with ``LoraConfig.from_pretrained``, check its
    keys against a fresh ``model`` (exact) and that ``get_peft_model`` gives every module exactly its rank.

    Returns:
        The config as read back.
    """
    from peft import LoraConfig, get_peft_model

    from rankrl.models import load_model
    from rankrl.ranks.lora import check_adapter_ranks, check_pattern_keys

    task_type = {"classification": "SEQ_CLS", "causal_lm": "CAUSAL_LM"}.get(task_kind or "")
    config = rank_lora_config(ranks, alpha=alpha, dropout=dropout, task_type=task_type)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".adapter-", dir=out))
    try:
        config.save_pretrained(tmp)
        os.replace(tmp / "adapter_config.json", out / "adapter_config.json")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    back = LoraConfig.from_pretrained(str(out))
    fresh = load_model(model, task_kind=task_kind or "classification", num_labels=num_labels, seed=seed).model
    check_pattern_keys(fresh, back, exact=True)
    check_adapter_ranks(get_peft_model(fresh, back), {n: int(r) for n, r in ranks.items()})
    return back


def plot_rank_grid(targets: tuple, ranks: Mapping[str, int], out: str | os.PathLike, title: str = "",
                   r_max: int | None = None) -> Path:  # fmt: skip
    """Heatmap of ranks, layers (rows) x projection kinds (columns), colour scale 0..r_max, cells annotated;
    atomic PNG."""
    from rankrl.plots import annotated_heatmap
    from rankrl.ranks.targets import KINDS

    kinds = [k for k in KINDS if any(t.kind == k for t in targets)]
    layers = max(t.layer_index for t in targets) + 1
    grid = np.full((layers, len(kinds)), np.nan)
    for t in targets:
        grid[t.layer_index, kinds.index(t.kind)] = ranks[t.name]
    return annotated_heatmap(grid, [f"layer {i}" for i in range(layers)], kinds, out, title=title, vmax=r_max)


def _write_ranks(targets: tuple, ranks: Mapping[str, int], out: Path) -> None:
    (out / "ranks.json").write_text(json.dumps({t.name: int(ranks[t.name]) for t in targets}, indent=1))
    with (out / "ranks.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["module", "kind", "layer", "in_features", "out_features", "rank", "params"])
        for t in targets:
            r = int(ranks[t.name])
            w.writerow([t.name, t.kind, t.layer_index, t.in_features, t.out_features, r,
                        r * (t.in_features + t.out_features)])  # fmt: skip


# ------------------------------------------------------------------------------------------------- apply
@dataclass(frozen=True)
class ApplyConfig:
    """Apply a trained rank policy to a (new) model: ranks under a budget -> PEFT adapter_config.json (+ fine-tune)."""

    policy: str
    """directory (or file) with policy.zip + policy.json from `rankrl train-policy`"""
    model: str
    """the model to allocate for (alias, local directory or hub id); may differ from the training model"""
    out: str = "runs/apply"
    """output directory: adapter_config.json, ranks.json, ranks.csv, ranks.png, apply.json (+ finetuned/)"""
    task: str = "default"
    """task whose batches measure gradient sensitivity (and that --finetune trains); 'none': neutral gradients"""
    budget_rank: float | None = None
    """parameter cap as a mean rank (None: the policy's; this or max_params replaces its parameter cap)"""
    max_params: int | None = None
    """absolute parameter cap (None: the policy's)"""
    max_flops: float | None = None
    """FLOPs-per-token cap (None: the policy's)"""
    max_tx_seconds: float | None = None
    """transmit-seconds cap (None: the policy's)"""
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

    from rankrl.ranks.finetune import FineTuneConfig, FineTuneRun

    if config.threads:
        torch.set_num_threads(config.threads)
    loaded = load_policy(config.policy)
    meta, run = loaded.meta, loaded.meta["run_config"]
    budgets = {k: v if (v := getattr(config, k)) is not None else meta["budgets"][k] for k in meta["budgets"]}
    if config.budget_rank is not None or config.max_params is not None:  # one parameter cap: the user's replaces
        budgets.update(budget_rank=config.budget_rank, max_params=config.max_params)
    task = None if config.task == "none" else config.task
    batch_size = config.batch_size or run["batch_size"]
    targets, feats, task_obj = model_features(config.model, task, r_max=run["r_max"], seed=config.seed,
                                              n_batches=config.feature_batches, batch_size=batch_size,
                                              threads=config.threads)  # fmt: skip
    alloc = allocate(loaded, targets, feats.static, budgets, snr_db=config.snr_db, bandwidth_hz=config.bandwidth_hz)
    out = Path(config.out)
    kind = task_obj.kind if task_obj is not None else None
    lora = write_adapter_config(alloc.ranks, out, config.model, alpha=run["alpha"], dropout=run["dropout"],
                                task_kind=kind, num_labels=max(task_obj.num_labels, 2) if task_obj else 2,
                                seed=config.seed)  # fmt: skip
    _write_ranks(targets, alloc.ranks, out)
    png = plot_rank_grid(targets, alloc.ranks, out / "ranks.png", title=f"{config.model}: policy ranks "
                         f"({alloc.metrics['cost/params']:,.0f} params)", r_max=run["r_max"])  # fmt: skip
    print(f"policy {loaded.path} (trained on {meta['trained_on']['model']}/{meta['trained_on']['task']}) -> "
          f"{config.model}: {len(targets)} modules, features from {task or 'no task (neutral gradients)'}")
    print(f"  {'module':<48} {'kind':<5} {'layer':>5} {'rank':>5}")
    for t in targets:
        print(f"  {t.name:<48} {t.kind:<5} {t.layer_index:>5} {alloc.ranks[t.name]:>5}")
    caps = ", ".join(f"{k} {v:,.6g}" for k, v in alloc.budget.caps.items()) or "none"
    uni_r = next(iter(alloc.uniform.values()))
    print(f"budget: {caps} | used {alloc.metrics['cost/params']:,.0f} params, violation "
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
               "channel": alloc.channel, **alloc.metrics,
               "uniform_rank": uni_r, "finetune": result.finetune}  # fmt: skip
    (out / "apply.json").write_text(json.dumps(summary, indent=1, default=str))
    print(f"adapter_config.json (PEFT LoraConfig), ranks.json/.csv, {png.name} -> {out}")
    return result


# --------------------------------------------------------------------------------------------- baselines
@dataclass(frozen=True)
class BaselinesConfig:
    """Fine-tune with every rank baseline (and a policy) at the same budget and seeds; print and save one table."""

    model: str = "minilm"
    """model (alias, local directory or hub id)"""
    task: str = "default"
    """task ('default', 'arith', a local file/directory or a hub dataset)"""
    steps: int = 40
    """fine-tuning steps of every run"""
    lr: float = 3e-3
    """learning rate of every method except uniform, which sweeps uniform_lrs"""
    uniform_lrs: tuple[float, ...] = (1e-3, 3e-3, 1e-2)
    """learning rates tried for uniform LoRA (the best is marked: tuned uniform is the strong baseline)"""
    batch_size: int = 16
    """training batch size"""
    max_eval: int | None = 128
    """held-out rows evaluated"""
    max_train: int | None = None
    """use at most this many training rows"""
    r_max: int = 8
    """largest rank"""
    alpha: float = 16.0
    """LoRA alpha"""
    rank_grid: tuple[int, ...] | None = None
    """ranks a module may get (default: 0 and powers of two up to r_max)"""
    budget_rank: float | None = 4.0
    """parameter cap as a mean rank (every method gets the same cap)"""
    max_params: int | None = None
    """absolute parameter cap (replaces budget_rank)"""
    max_flops: float | None = None
    """FLOPs-per-token cap"""
    seeds: tuple[int, ...] = (0,)
    """training seeds; every method runs every seed"""
    methods: tuple[str, ...] = METHODS
    """baselines to run (subset of uniform, random, spectrum, importance, adalora)"""
    policy: str | None = None
    """also run a trained policy (directory with policy.zip + policy.json)"""
    adalora_worst_case: bool = True
    """AdaLoRA target_r such that no final pattern can exceed the cap (False: uniform's r, may overshoot)"""
    out: str = "runs/baselines"
    """output directory: results.json, results.csv"""
    threads: int | None = None
    """torch CPU threads (None: torch's choice)"""
    wandb: bool = True
    """log the table to W&B (offline unless configured)"""

    def __post_init__(self) -> None:
        if bad := sorted(set(self.methods) - set(METHODS)):
            raise ValueError(f"unknown methods {bad}; choose from {METHODS}")
        if not self.methods and self.policy is None:
            raise ValueError("nothing to run: give --methods or --policy")
        if not self.seeds or not self.uniform_lrs or min(self.uniform_lrs) <= 0 or self.lr <= 0:
            raise ValueError("need >= 1 seed and learning rates > 0")
        if self.budget_rank is None and self.max_params is None and self.max_flops is None:
            raise ValueError("give a budget: budget_rank, max_params or max_flops")
        if "adalora" in self.methods and self.steps < 3:
            raise ValueError("AdaLoRA needs steps >= 3")
        if self.steps < 1:
            raise ValueError("steps must be >= 1")


def run_baselines(config: BaselinesConfig) -> dict[str, Any]:
    """Run every method of ``config`` (see the module docstring); returns ``{"budget", "runs", "table"}`` and
    writes it to ``results.json`` / ``results.csv`` in ``config.out``."""
    from rankrl.ranks.baselines import importance, random_allocation, run_adalora, spectrum, uniform
    from rankrl.ranks.budgets import Budget, check_grid, pow2_grid
    from rankrl.ranks.costs import allocation_cost
    from rankrl.ranks.finetune import FineTuneConfig, FineTuneRun
    from rankrl.tasks import load_task
    from rankrl.tracking import Tracker

    c = config
    base = FineTuneConfig(model=c.model, task=c.task, steps=c.steps, lr=c.lr, batch_size=c.batch_size, alpha=c.alpha,
                          max_eval=c.max_eval, max_train=c.max_train, r_max=c.r_max, eval_every=0, seed=c.seeds[0],
                          threads=c.threads)  # fmt: skip
    targets, feats, _ = model_features(c.model, c.task, r_max=c.r_max, seed=c.seeds[0], batch_size=c.batch_size,
                                       threads=c.threads)  # fmt: skip
    cap = c.max_params or (Budget.mean_rank(targets, c.budget_rank).max_params if c.budget_rank else None)
    budget = Budget(max_params=cap, max_flops=c.max_flops)
    grid = check_grid(targets, c.rank_grid or pow2_grid(c.r_max), c.r_max)
    fixed = {"uniform": uniform(targets, budget, grid, r_max=c.r_max)}
    if "spectrum" in c.methods:
        fixed["spectrum"] = spectrum(targets, feats, budget, grid, r_max=c.r_max)
    if "importance" in c.methods:
        fixed["importance"] = importance(targets, feats, budget, grid, r_max=c.r_max)
    methods = list(c.methods)
    if c.policy is not None:
        loaded = load_policy(c.policy)
        if loaded.meta["run_config"]["r_max"] > c.r_max:
            raise ValueError(f"the policy allocates up to r_max={loaded.meta['run_config']['r_max']}; raise --r-max")
        caps = {"budget_rank": None, "max_params": cap, "max_flops": c.max_flops, "max_tx_seconds": None}
        fixed["policy"] = allocate(loaded, targets, feats.static, caps).ranks
        methods.append("policy")
    tracker = Tracker(c.out, config=asdict(c) | {"job": "baselines"}, use_wandb=c.wandb)
    runs: list[dict[str, Any]] = []
    try:
        for seed in c.seeds:
            task = load_task(c.task, seed=seed, labels=base.labels, max_train=c.max_train)  # as FineTuneRun loads it
            for method in methods:
                for lr in c.uniform_lrs if method == "uniform" else (c.lr,):
                    cfg = FineTuneConfig(**{**asdict(base), "seed": seed, "lr": lr})
                    t0 = time.time()
                    if method == "adalora":
                        res = run_adalora(cfg, budget, task=task, worst_case=c.adalora_worst_case)
                        ranks, metrics = res.ranks, res.metrics
                    else:
                        ranks = fixed[method] if method != "random" else random_allocation(
                            targets, budget, grid, seed, r_max=c.r_max)  # fmt: skip
                        run = FineTuneRun(cfg, task=task, ranks=ranks)
                        train = run.advance(cfg.steps)
                        metrics = {**train, **run.evaluate()}
                        if train.get("train/nan"):
                            metrics["quality/eval_loss"] = metrics["quality/accuracy"] = math.nan
                    cost = allocation_cost(targets, ranks, precision_bits=cfg.precision_bits)
                    row = {"method": method, "lr": lr, "seed": seed, "params": cost.params,
                           "budget_used": cost.params / cap if cap else math.nan,
                           "eval_loss": metrics["quality/eval_loss"], "accuracy": metrics["quality/accuracy"],
                           "bits": cost.bits, "seconds": time.time() - t0, "ranks": dict(ranks)}  # fmt: skip
                    runs.append(row)
                    tracker.log({k: v for k, v in row.items() if isinstance(v, int | float)}, step=len(runs))
                    print(f"  {method:<10} lr {lr:.0e} seed {seed}: eval_loss {row['eval_loss']:.4f} acc "
                          f"{row['accuracy']:.4f} params {row['params']:,} ({row['seconds']:.1f}s)", flush=True)
        table = _aggregate(runs)
        result = {"budget": budget.caps, "grid": list(grid), "table": table, "runs": runs, "config": asdict(c)}
        _write_results(result, Path(c.out))
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


def _aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    table = []
    for key in dict.fromkeys((r["method"], r["lr"]) for r in runs):
        rows = [r for r in runs if (r["method"], r["lr"]) == key]
        agg = {"method": key[0], "lr": key[1], "seeds": len(rows)}
        for k in ("params", "budget_used", "eval_loss", "accuracy", "bits", "seconds"):
            agg[k] = float(np.mean([r[k] for r in rows]))
        agg["accuracy_std"] = float(np.std([r["accuracy"] for r in rows]))
        table.append(agg)
    uni = [r for r in table if r["method"] == "uniform" and math.isfinite(r["eval_loss"])]
    for r in table:
        r["tuned"] = bool(uni) and r is min(uni, key=lambda x: x["eval_loss"])
    return table


def _write_results(result: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1, default=str))
    with (out / "results.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(result["table"][0]))
        w.writeheader()
        w.writerows(result["table"])


def _print_results(c: BaselinesConfig, table: list[dict[str, Any]], budget: Any) -> None:
    caps = ", ".join(f"{k} {v:,.6g}" for k, v in budget.caps.items())
    print(f"\n{c.model}/{c.task}, {c.steps} steps, budget {caps}, seeds {list(c.seeds)} (* = tuned uniform)")
    print(f"  {'method':<12} {'lr':>7} {'params':>9} {'used':>5} {'eval_loss':>9} {'accuracy':>9} {'bits':>11} "
          f"{'seconds':>8}")  # fmt: skip
    for r in table:
        name = r["method"] + ("*" if r["tuned"] else "")
        print(f"  {name:<12} {r['lr']:>7.0e} {r['params']:>9,.0f} {r['budget_used']:>5.2f} {r['eval_loss']:>9.4f} "
              f"{r['accuracy']:>9.4f} {r['bits']:>11,.0f} {r['seconds']:>8.1f}")  # fmt: skip
    print(f"results.json / results.csv -> {c.out}")
