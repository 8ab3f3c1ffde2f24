"""Closed-form rank allocations that learned policies are measured against, all under the same :class:`Budget`.

Every function returns ``{module name: rank}`` on the given grid and within the budget (they go through
:func:`rankrl.ranks.rounding.allocate_by_scores`, so they fill the budget as far as the grid allows):

* :func:`uniform` - the largest grid rank every module can have at once (plain LoRA).
* :func:`random_allocation` - random scores; the floor any learned allocator has to beat.
* :func:`spectrum` - LaMDA++-like, from the pre-trained weight spectrum alone (no data).
* :func:`importance` - AdaLoRA-like, from first-order gradient sensitivity measured on real batches.
* :func:`eva` - EVA's rank redistribution (PEFT ``EvaConfig``, rho 2) from the input activations' spectra.

:func:`run_adalora` is the real thing: PEFT's ``AdaLoraConfig`` trained with the same data, batches, optimizer
and learning-rate schedule as :class:`~rankrl.ranks.finetune.FineTuneRun`, calling
``update_and_allocate`` after every optimizer step - without that call AdaLoRA never prunes and is just an
SVD-parameterised LoRA at ``init_r`` (peft#1327, peft#1801).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from rankrl.ranks.budgets import Budget, BudgetError, budget_metrics, check_grid, feasible, unit_costs
from rankrl.ranks.rounding import allocate_by_scores

if TYPE_CHECKING:
    from rankrl.ranks.features import LayerFeatures
    from rankrl.ranks.finetune import FineTuneConfig
    from rankrl.targets import TargetModule

__all__ = [
    "AdaLoraResult",
    "adalora_config",
    "adalora_ranks",
    "adalora_step",
    "adalora_target_r",
    "eva",
    "eva_scores",
    "importance",
    "importance_scores",
    "random_allocation",
    "run_adalora",
    "spectrum",
    "spectrum_scores",
    "uniform",
]


# ------------------------------------------------------------------------------------ closed-form baselines
def uniform(
    targets: Sequence[TargetModule], budget: Budget, grid: Sequence[int], *, r_max: int | None = None
) -> dict[str, int]:
    """The largest grid rank that every module can have at once within ``budget``.

    Pure uniform on purpose: leftover budget is not handed to a subset of modules, since any rule for
    choosing that subset would already be a (non-uniform) allocation policy.

    Raises:
        ValueError: bad grid, or even the grid's smallest rank everywhere exceeds the budget.
    """
    levels = check_grid(targets, grid, r_max)
    for r in reversed(levels):
        ranks = {t.name: r for t in targets}
        if feasible(targets, ranks, budget):
            return ranks
    # the minimum allocation is infeasible: let the shared check raise its "raise it or allow rank 0" error
    return allocate_by_scores(targets, np.ones(len(targets)), budget, levels)


def random_allocation(
    targets: Sequence[TargetModule],
    budget: Budget,
    grid: Sequence[int],
    rng: np.random.Generator | int,
    *,
    r_max: int | None = None,
    utility: str = "log1p",
) -> dict[str, int]:
    """Scores drawn uniformly from [0, 1), then :func:`~rankrl.ranks.rounding.allocate_by_scores`.

    Args:
        rng: a generator or a seed (required: an implicit global RNG would make baselines irreproducible).
    """
    if isinstance(rng, bool) or not isinstance(rng, (np.random.Generator, int, np.integer)):
        raise TypeError(f"rng must be a numpy Generator or an int seed, got {type(rng).__name__}")
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(int(rng))
    scores = gen.random(len(targets))
    return allocate_by_scores(targets, scores, budget, grid, r_max=r_max, utility=utility)


def spectrum_scores(targets: Sequence[TargetModule], features: LayerFeatures) -> np.ndarray:
    """``eff_rank_frac`` of each module's pre-trained weight: entropy effective rank / max rank, in (0, 1].

    LaMDA++ (Azizi, Kundu & Pedram, EMNLP Findings 2024, arXiv:2406.12832) allocates LoRA ranks from a
    normalised analysis of the pre-trained weights' singular values, with no data and no training. We use
    the normalised effective rank as that spectral score (our choice, not the paper's exact formula): a flat
    spectrum spreads the weight's energy over many directions, so a few update directions are less likely
    to cover what adaptation has to change there, and the module gets more rank; a module dominated by a
    few directions gets less. Being a fraction of the module's own max rank, the score compares modules of
    different widths (and models) on one scale.
    """
    return _column(targets, features, "eff_rank_frac")


def importance_scores(targets: Sequence[TargetModule], features: LayerFeatures) -> np.ndarray:
    """``grad_sens_rel``: AdaLoRA's first-order sensitivity ``mean |W * dL/dW|`` of the pre-trained weight,
    relative to its mean over modules (Zhang et al., ICLR 2023; see :func:`rankrl.ranks.features.gradient_sensitivity`).

    Raises:
        ValueError: when the features carry no gradient information (computed without batches, every value
            exactly the neutral 1.0).
    """
    scores = _column(targets, features, "grad_sens_rel")
    if len(scores) > 1 and np.all(scores == 1.0):
        raise ValueError(
            "features have no gradient information (grad_sens_rel is the neutral 1.0 everywhere): compute them "
            "with batches, e.g. run.features() or compute_features(model, targets, batches)"
        )
    return scores


def spectrum(
    targets: Sequence[TargetModule],
    features: LayerFeatures,
    budget: Budget,
    grid: Sequence[int],
    *,
    r_max: int | None = None,
    utility: str = "log1p",
) -> dict[str, int]:
    """LaMDA++-like allocation from the weight spectrum (:func:`spectrum_scores`)."""
    scores = spectrum_scores(targets, features)
    return allocate_by_scores(targets, scores, budget, grid, r_max=r_max, utility=utility)


def importance(
    targets: Sequence[TargetModule],
    features: LayerFeatures,
    budget: Budget,
    grid: Sequence[int],
    *,
    r_max: int | None = None,
    utility: str = "log1p",
) -> dict[str, int]:
    """AdaLoRA-like allocation from gradient sensitivity (:func:`importance_scores`), decided once up front
    (for AdaLoRA's own pruning during training see :func:`run_adalora`)."""
    scores = importance_scores(targets, features)
    return allocate_by_scores(targets, scores, budget, grid, r_max=r_max, utility=utility)


def eva_scores(model: Any, targets: Sequence[TargetModule], inputs: Sequence[Mapping[str, Any]], *, rank: int,
               rho: float = 2.0) -> np.ndarray:  # fmt: skip
    """EVA's data-driven rank redistribution (Paischer et al. 2024, "One Initialization to Rule them All"), computed
    by PEFT (``peft.tuners.lora.eva.get_eva_state_dict`` with ``EvaConfig(rho=rho)``): an incremental SVD of each
    module's input activations on ``inputs`` (batches of the train split, labels dropped, padding masked), then the
    ``rank x len(targets)`` components that explain the most variance over all modules, at most ``rho x rank`` per
    module. Returns each module's EVA rank / (rho x rank), in [0, 1].

    EVA counts rank, not parameters; :func:`eva` spends a parameter budget with these scores, so it is EVA's
    redistribution under the same cap as every other method (not EVA's initialisation of A: every method here starts
    from the same LoRA init).
    """
    import torch
    from peft import EvaConfig, LoraConfig
    from peft.tuners.lora.eva import get_eva_state_dict

    if rank < 1 or rho < 1:
        raise ValueError(f"EVA needs rank >= 1 and rho >= 1, got rank {rank}, rho {rho}")
    config = LoraConfig(r=int(rank), target_modules=[t.name for t in targets], init_lora_weights="eva",
                        eva_config=EvaConfig(rho=float(rho), use_label_mask=False))  # fmt: skip
    batches = [{k: v for k, v in b.items() if k != "labels"} for b in inputs]
    with torch.no_grad():
        state = get_eva_state_dict(model, batches, peft_config=config, show_progress_bar=False)
    found = {name: int(a.shape[0]) for name, a in state.items()}
    if missing := [t.name for t in targets if t.name not in found]:
        raise ValueError(f"EVA returned no components for {missing[:3]}")
    return np.array([found[t.name] / (rho * rank) for t in targets], dtype=np.float64)


def eva(
    targets: Sequence[TargetModule],
    scores: np.ndarray,
    budget: Budget,
    grid: Sequence[int],
    *,
    r_max: int | None = None,
    utility: str = "log1p",
) -> dict[str, int]:
    """EVA-style allocation: :func:`eva_scores` spent under ``budget`` by the same greedy as every scored rule."""
    return allocate_by_scores(targets, scores, budget, grid, r_max=r_max, utility=utility)


def _column(targets: Sequence[TargetModule], features: LayerFeatures, column: str) -> np.ndarray:
    from rankrl.ranks.features import STATIC_FEATURE_NAMES

    row = {name: i for i, name in enumerate(features.names)}
    if missing := [t.name for t in targets if t.name not in row]:
        raise ValueError(f"features lack modules {missing[:3]}; compute them for the same targets")
    values = features.static[[row[t.name] for t in targets], STATIC_FEATURE_NAMES.index(column)]
    return np.clip(values.astype(np.float64), 0.0, None)


# -------------------------------------------------------------------------------------------------- AdaLoRA
def adalora_target_r(
    targets: Sequence[TargetModule], budget: Budget, *, r_max: int | None = None, worst_case: bool = False
) -> int:
    """AdaLoRA's ``target_r`` (final average rank) for ``budget``.

    AdaLoRA budgets a total rank count ``target_r * n_modules``, blind to module shapes, so its final
    allocation can cost more parameters than uniform ``target_r`` when it favours wide modules.

    Args:
        worst_case: ``False`` (default): the largest r such that uniform r fits, i.e. the same budget as the
            uniform baseline in AdaLoRA's own terms. ``True``: the largest r such that *every* allocation
            AdaLoRA can end with (total rank <= n r, each module <= init_r) fits - guaranteed feasible, but
            a smaller budget than the other baselines get.

    Raises:
        BudgetError: when not even r = 1 fits (the message names the flags that fix it).
    """
    cap = min(t.max_rank for t in targets)
    if r_max is not None:
        cap = min(cap, r_max)
    units = unit_costs(targets, budget)
    caps = np.array(list(budget.caps.values()))
    # share of the tightest cap one rank unit of each module uses; most expensive first
    share = np.max(np.stack(list(units.values())) / caps[:, None], axis=0) if len(caps) else np.zeros(len(targets))
    order = np.argsort(-share, kind="stable")
    for r in range(cap, 0, -1):
        ranks = {t.name: r for t in targets}
        if worst_case:
            left, init_r = r * len(targets), _default_init_r(r, cap)
            for i in order:
                take = min(init_r, left)
                ranks[targets[i].name], left = take, left - take
        if feasible(targets, ranks, budget):
            return r
    raise BudgetError("the budget is below what AdaLoRA needs at target_r 1" + (
        " when every allocation it can end with must fit (--adalora_worst_case); pass --no_adalora_worst_case (the "
        "uniform baseline's budget in AdaLoRA's rank terms) or raise the budget (--budget.rank / --budget.params)"
        if worst_case else ": raise the budget (--budget.rank / --budget.params)"))  # fmt: skip


def _default_init_r(target_r: int, cap: int) -> int:
    # AdaLoRA's paper and PEFT's defaults start at 1.5 x the target (init_r=12, target_r=8)
    return min(cap, max(target_r + 1, math.ceil(1.5 * target_r)))


def adalora_config(
    targets: Sequence[TargetModule],
    budget: Budget,
    total_steps: int,
    *,
    r_max: int | None = None,
    target_r: int | None = None,
    init_r: int | None = None,
    tinit: int | None = None,
    tfinal: int | None = None,
    deltaT: int | None = None,
    alpha: float = 16.0,
    dropout: float = 0.0,
    task_type: str = "SEQ_CLS",
    worst_case: bool = False,
    **extra: Any,
) -> Any:
    """A PEFT ``AdaLoraConfig`` for ``targets`` whose rank budget comes from ``budget``.

    Defaults: ``target_r`` from :func:`adalora_target_r`; ``init_r = max(target_r + 1, ceil(1.5 target_r))``
    capped at the smallest module's ``min(in, out)``; ``tinit`` 10 % and ``tfinal`` 20 % of the steps (at least
    1 each: AdaLoRA's ``lora_E`` starts at zero, so every sensitivity is 0 until the first update and pruning
    at step 1 would mask by ties alone); ``deltaT = max(1, total_steps // 100)``. ``extra`` goes to
    ``AdaLoraConfig`` (``beta1``, ``beta2``, ``orth_reg_weight``, ...); unknown keys raise there.

    Raises:
        ValueError: fewer than 3 steps, ``init_r <= target_r`` (nothing to prune; PEFT would crash in
            ``kthvalue`` with k = 0, peft#2337), or a schedule without a pruning phase.
    """
    from peft import AdaLoraConfig

    if total_steps < 3:
        raise ValueError(f"AdaLoRA needs total_steps >= 3 (warm-up, pruning, final phase), got {total_steps}")
    cap = min(t.max_rank for t in targets)
    target_r = adalora_target_r(targets, budget, r_max=r_max, worst_case=worst_case) if target_r is None else target_r
    init_r = _default_init_r(target_r, cap) if init_r is None else init_r
    if not 1 <= target_r < init_r <= cap:
        raise ValueError(
            f"AdaLoRA prunes from init_r down to target_r, so it needs 1 <= target_r < init_r <= min(in, out)={cap}; "
            f"got target_r={target_r}, init_r={init_r}: lower the budget or target_r, or raise init_r"
        )
    tinit = max(1, round(0.1 * total_steps)) if tinit is None else tinit
    tfinal = max(1, round(0.2 * total_steps)) if tfinal is None else tfinal
    deltaT = max(1, total_steps // 100) if deltaT is None else deltaT
    if not (0 <= tinit < total_steps - tfinal and tfinal >= 1 and deltaT >= 1):
        raise ValueError(
            f"schedule tinit={tinit}, tfinal={tfinal}, deltaT={deltaT} leaves no pruning phase in {total_steps} "
            "steps; need 0 <= tinit < total_steps - tfinal, tfinal >= 1 and deltaT >= 1"
        )
    return AdaLoraConfig(
        init_r=init_r, target_r=target_r, tinit=tinit, tfinal=tfinal, deltaT=deltaT, total_step=total_steps,
        lora_alpha=alpha, lora_dropout=dropout, target_modules=[t.name for t in targets], task_type=task_type,
        **extra,
    )  # fmt: skip


def adalora_step(model: Any, step: int) -> None:
    """AdaLoRA's per-step bookkeeping: update sensitivities, prune to the scheduled budget, and after
    ``total_step - tfinal`` keep the final pattern masked.

    Call it after ``optimizer.step()`` and before ``optimizer.zero_grad()`` (it reads ``.grad``) with the
    1-based number of optimizer steps done: PEFT finalises the pattern when ``step == total_step - tfinal``
    exactly, which a 0-based count never reaches when ``tfinal = 0``.
    """
    tuner = model.base_model
    adapter = tuner.trainable_adapter_name
    missing = [n for n, p in tuner.model.named_parameters() if "lora_" in n and adapter in n and p.grad is None]
    if missing:
        raise RuntimeError(
            f"{missing[0]} has no gradient: call adalora_step after loss.backward() and optimizer.step(), "
            "before optimizer.zero_grad()"
        )
    tuner.update_and_allocate(step)


def adalora_ranks(model: Any) -> dict[str, int]:
    """Current rank of every AdaLoRA module: the number of kept triplets in PEFT's ``rank_pattern``, or the
    allocated ``init_r`` when nothing was pruned yet. Keys are module names of the base model."""
    from peft.tuners.adalora import AdaLoraLayer

    tuner = model.base_model
    adapter = getattr(tuner, "trainable_adapter_name", "default")
    pattern = tuner.peft_config[adapter].rank_pattern or {}
    out = {}
    for name, module in tuner.model.named_modules():
        if not isinstance(module, AdaLoraLayer) or adapter not in module.lora_E:
            continue
        # keys carry the adapter name until save_pretrained strips it (and mutates the config) - accept both
        kept = pattern.get(f"{name}.lora_E.{adapter}", pattern.get(f"{name}.lora_E"))
        out[name] = int(sum(bool(x) for x in kept)) if kept is not None else int(module.r[adapter])
    return out


@contextlib.contextmanager
def _without_orth_reg(model: Any) -> Iterator[None]:
    # AdaLoraModel.forward adds orth_reg_weight * ||P^T P - I|| to any loss it returns; evaluation must
    # report the task loss only, comparable with the LoRA runs
    config = model.base_model.peft_config[model.base_model.trainable_adapter_name]
    weight = config.orth_reg_weight
    config.orth_reg_weight = 0.0
    try:
        yield
    finally:
        config.orth_reg_weight = weight


@dataclass
class AdaLoraResult:
    """Outcome of :func:`run_adalora`.

    Attributes:
        ranks: final rank per target module (AdaLoRA's ``rank_pattern`` after allocation).
        config: the ``AdaLoraConfig`` trained.
        metrics: last evaluation, ``train/loss`` (mean of the last ``eval_every`` steps, orthogonal
            regulariser included), ``cost/*`` of ``ranks`` and ``budget/*`` against the budget.
        model: the trained PEFT model.
    """

    ranks: dict[str, int]
    config: Any
    metrics: dict[str, float]
    model: Any


def run_adalora(
    config: FineTuneConfig,
    budget: Budget,
    *,
    loaded: Any = None,
    task: Any = None,
    tracker: Any = None,
    reallocate: bool = True,
    test: bool = False,
    **adalora_kwargs: Any,
) -> AdaLoraResult:
    """Fine-tune with PEFT AdaLoRA for ``config.steps`` steps on exactly FineTuneRun's data and schedule.

    The run *is* a :class:`FineTuneRun` (its data pipeline, batch order, learning-rate schedule, optimizer groups
    and evaluation; nothing of that is restated here) training the AdaLoRA model it is handed through
    ``adapter=``, with ``update_and_allocate`` as its public per-step hook (between ``optimizer.step()`` and
    ``zero_grad()``, as PEFT requires). The base weights and classification head start identical to the LoRA
    baselines' (same loading, same seed).

    Args:
        config: the run (model, task, steps, lr, batch size, ...); ``ranks``/``r_max``/``shrink`` are unused.
        budget: sets AdaLoRA's ``target_r`` (see :func:`adalora_config`); the final ranks are checked against
            it in ``metrics["budget/violation"]`` (AdaLoRA counts ranks, not parameters, so it may exceed it).
        loaded: an already loaded model (wrapped by AdaLoRA in place).
        task: an already loaded task.
        tracker: a :class:`rankrl.tracking.Tracker`.
        reallocate: ``False`` skips ``update_and_allocate`` (AdaLoRA as users often run it by mistake: an
            SVD-LoRA at ``init_r`` that never prunes); for ablations.
        test: also score the task's test split at the end (``quality/test_loss``, ``quality/test_accuracy``).
        adalora_kwargs: forwarded to :func:`adalora_config` (``target_r``, ``init_r``, ``tinit``, ...).
    """
    from peft import get_peft_model

    from rankrl.ranks.costs import allocation_cost
    from rankrl.ranks.finetune import FineTuneRun, load_run_inputs
    from rankrl.ranks.lora import PEFT_TASK_TYPES, check_pattern_keys

    task, loaded = load_run_inputs(config, task=task, loaded=loaded)
    made: dict[str, Any] = {}

    def adapter(base: Any, targets: list) -> Any:
        made["config"] = adalora_config(targets, budget, config.steps, alpha=config.alpha, dropout=config.dropout,
                                        task_type=PEFT_TASK_TYPES[task.kind], **adalora_kwargs)  # fmt: skip
        check_pattern_keys(base, made["config"], exact=True)
        return get_peft_model(base, made["config"])

    run = FineTuneRun(config, loaded=loaded, task=task, tracker=tracker, adapter=adapter)
    model, ada_config, targets = run.model, made["config"], run.targets
    if reallocate:
        run.step_hooks.append(lambda r, step: adalora_step(r.model, step))
    metrics: dict[str, float] = {}
    chunk = config.eval_every or config.steps
    while not run.finished:
        train = run.advance(chunk)
        if train.get("train/nan"):
            metrics["train/nan"] = 1.0
            break
        if config.eval_every and not run.finished:
            with _without_orth_reg(model):
                run.evaluate()
    with _without_orth_reg(model):
        metrics.update(run.evaluate())
        if test:
            metrics.update(run.evaluate("test"))

    ranks = adalora_ranks(model)
    metrics["train/loss"] = train["train/loss"]
    cost = allocation_cost(targets, ranks, precision_bits=budget.precision_bits, optimizer=budget.optimizer)
    metrics.update(cost.as_metrics())
    metrics.update(budget_metrics(targets, ranks, budget))
    for i, t in enumerate(targets):
        metrics[f"rank/layer_{i}"] = float(ranks[t.name])
    run.log({k: v for k, v in metrics.items() if not k.startswith("quality/")})  # quality/ already logged
    return AdaLoraResult(ranks=ranks, config=ada_config, metrics=metrics, model=model)
