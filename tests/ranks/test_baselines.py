"""Baseline allocators: feasible, budget-filling, score-following; AdaLoRA really prunes only when told to."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rankrl.models import load_model
from rankrl.ranks.baselines import (
    adalora_config,
    adalora_ranks,
    adalora_step,
    adalora_target_r,
    eva,
    eva_scores,
    importance,
    random_allocation,
    run_adalora,
    spectrum,
    uniform,
)
from rankrl.ranks.budgets import Budget, BudgetError, feasible, total_costs
from rankrl.ranks.features import STATIC_FEATURE_NAMES, LayerFeatures, compute_features
from rankrl.ranks.finetune import FineTuneConfig
from rankrl.targets import find_target_modules

GRID = (0, 1, 2, 4, 8, 16)


def _row(name, fin, fout):
    return SimpleNamespace(name=name, in_features=fin, out_features=fout, max_rank=min(fin, fout))


def _features(targets, **columns):
    static = np.zeros((len(targets), len(STATIC_FEATURE_NAMES)), dtype=np.float32)
    static[:, STATIC_FEATURE_NAMES.index("grad_sens_rel")] = 1.0
    for name, values in columns.items():
        static[:, STATIC_FEATURE_NAMES.index(name)] = values
    return LayerFeatures(tuple(targets), static)


def _used(targets, ranks, budget):
    return total_costs(targets, ranks, budget)["params"] / budget.max_params


SAME = [_row(f"m{i}", 64, 64) for i in range(6)]
MIXED = [_row("q", 64, 64), _row("up", 64, 256), _row("down", 256, 64), _row("v", 64, 64), _row("s", 32, 32)]


def test_uniform_is_the_largest_uniform_grid_rank():
    b = Budget.mean_rank(MIXED, 6.0)  # between grid ranks 4 and 8
    assert uniform(MIXED, b, GRID) == {t.name: 4 for t in MIXED}
    b8 = Budget.uniform_equivalent(MIXED, 8)
    assert uniform(MIXED, b8, GRID) == {t.name: 8 for t in MIXED}
    assert _used(MIXED, uniform(MIXED, b8, GRID), b8) == 1
    with pytest.raises(ValueError, match="raise it or allow rank 0"):
        uniform(MIXED, Budget(max_params=100), (4, 8))


def test_random_allocation_is_feasible_full_and_seeded():
    b = Budget.uniform_equivalent(MIXED, 4)
    a = random_allocation(MIXED, b, GRID, 0)
    assert a == random_allocation(MIXED, b, GRID, np.random.default_rng(0))
    assert feasible(MIXED, a, b) and _used(MIXED, a, b) >= 0.8
    assert any(random_allocation(MIXED, b, GRID, s) != a for s in range(1, 6))
    with pytest.raises(TypeError, match="Generator or an int seed"):
        random_allocation(MIXED, b, GRID, None)


def test_spectrum_and_importance_follow_their_scores_and_differ():
    flat = np.array([0.9, 0.7, 0.5, 0.3, 0.2, 0.1])
    feats = _features(SAME, eff_rank_frac=flat, grad_sens_rel=flat[::-1] * 3)
    b = Budget.uniform_equivalent(SAME, 4)
    spec = [spectrum(SAME, feats, b, GRID)[t.name] for t in SAME]
    imp = [importance(SAME, feats, b, GRID)[t.name] for t in SAME]
    assert spec == sorted(spec, reverse=True) and spec[0] > spec[-1]  # flatter spectrum -> more rank
    assert imp == sorted(imp) and imp[-1] > imp[0]  # more sensitive -> more rank
    assert spec != imp
    for got in (spec, imp):
        ranks = {t.name: r for t, r in zip(SAME, got, strict=True)}
        assert feasible(SAME, ranks, b) and _used(SAME, ranks, b) >= 0.8


def test_importance_refuses_features_without_gradients():
    with pytest.raises(ValueError, match="no gradient information"):
        importance(SAME, _features(SAME), Budget.uniform_equivalent(SAME, 4), GRID)
    with pytest.raises(ValueError, match="features lack modules"):
        spectrum(MIXED, _features(SAME), Budget.uniform_equivalent(MIXED, 4), GRID)


def test_every_baseline_is_feasible_on_a_real_model():
    loaded = load_model("tiny-bert", num_labels=2)
    targets = find_target_modules(loaded.model)
    enc = loaded.tokenizer(["a fine film", "dull and slow", "great cast", "awful"], padding=True, return_tensors="pt")
    feats = compute_features(loaded.model, targets, [{**enc, "labels": torch.tensor([1, 0, 1, 0])}])
    b = Budget.uniform_equivalent(targets, 4, flops=True)
    allocations = {
        "uniform": uniform(targets, b, GRID),
        "random": random_allocation(targets, b, GRID, 0),
        "spectrum": spectrum(targets, feats, b, GRID),
        "importance": importance(targets, feats, b, GRID),
    }
    for name, ranks in allocations.items():
        assert set(ranks) == {t.name for t in targets}, name
        assert feasible(targets, ranks, b) and _used(targets, ranks, b) >= 0.8, name
    assert allocations["spectrum"] != allocations["importance"]


def test_eva_redistributes_rank_by_the_inputs_spectra_and_spends_the_budget():
    """PEFT's EVA gives each module its share of rank x modules components (at most rho x rank); the scores follow
    the activations (other inputs, other scores) and the allocation spends the parameter cap like every rule."""
    loaded = load_model("tiny-bert", num_labels=2)
    targets = find_target_modules(loaded.model)
    gen = torch.Generator().manual_seed(0)

    def inputs(vocab):
        ids = torch.randint(5, vocab, (4 * 8, 12), generator=gen)
        return [{"input_ids": ids[i : i + 8], "attention_mask": torch.ones(8, 12, dtype=torch.long),
                 "labels": torch.zeros(8, dtype=torch.long)} for i in range(0, 32, 8)]  # fmt: skip

    scores = eva_scores(loaded.model, targets, inputs(100), rank=2)
    assert scores.shape == (len(targets),) and scores.min() >= 0 and scores.max() <= 1
    assert scores.sum() * 2.0 * 2 == pytest.approx(2 * len(targets))  # EVA's budget: rank x modules components
    assert len(set(scores.round(6))) > 1  # redistributed, not uniform
    assert not np.allclose(scores, eva_scores(loaded.model, targets, inputs(8), rank=2))  # 3 token ids: other spectra
    b = Budget.uniform_equivalent(targets, 2)
    ranks = eva(targets, scores, b, GRID)
    assert feasible(targets, ranks, b) and _used(targets, ranks, b) >= 0.8 and ranks != uniform(targets, b, GRID)
    with pytest.raises(ValueError, match="rank >= 1"):
        eva_scores(loaded.model, targets, inputs(100), rank=0)


# -------------------------------------------------------------------------------------------------- AdaLoRA
def test_adalora_config_from_budget():
    b = Budget.uniform_equivalent(MIXED, 4)
    cfg = adalora_config(MIXED, b, 100)
    assert (cfg.target_r, cfg.init_r, cfg.total_step, cfg.tinit, cfg.tfinal, cfg.deltaT) == (4, 6, 100, 10, 20, 1)
    assert adalora_target_r(MIXED, Budget.mean_rank(MIXED, 6.5)) == 6
    # worst case: AdaLoRA may pile init_r on the widest modules; that must still fit
    # (r=3, init_r=5: 15 rank units on up, down, q cost 5 * (320 + 320 + 128) = the cap exactly; r=4 would not fit)
    assert adalora_target_r(MIXED, b, worst_case=True) == 3
    assert feasible(MIXED, {"up": 5, "down": 5, "q": 5, "v": 0, "s": 0}, b)
    assert not feasible(MIXED, {"up": 6, "down": 6, "q": 6, "v": 2, "s": 0}, b)
    one = Budget.uniform_equivalent(MIXED, 1)  # uniform rank 1 fits; AdaLoRA's worst case (init_r 2 on the widest) not
    assert adalora_target_r(MIXED, one) == 1
    with pytest.raises(BudgetError, match="pass --no_adalora_worst_case"):
        adalora_target_r(MIXED, one, worst_case=True)
    with pytest.raises(ValueError, match="target_r < init_r"):
        adalora_config(MIXED, Budget.uniform_equivalent(MIXED, 32), 100)  # uniform 32 = every module's cap
    with pytest.raises(ValueError, match="total_steps >= 3"):
        adalora_config(MIXED, b, 2)
    with pytest.raises(ValueError, match="no pruning phase"):
        adalora_config(MIXED, b, 10, tinit=5, tfinal=5)


TINY = dict(model="tiny-bert", task="default", steps=16, batch_size=8, max_eval=32, eval_every=0, lr=5e-3, threads=1)


def _nonzero_E(model):
    out = {}
    for name, module in model.base_model.model.named_modules():
        if hasattr(module, "lora_E") and "default" in module.lora_E:
            out[name] = int((module.lora_E["default"] != 0).sum())
    return out


def test_adalora_prunes_only_when_update_and_allocate_is_called():
    config = FineTuneConfig(**TINY)
    loaded = load_model("tiny-bert", num_labels=2)
    targets = find_target_modules(loaded.model)
    budget = Budget.uniform_equivalent(targets, 4)

    pruned = run_adalora(config, budget)
    init_r, target_r = pruned.config.init_r, pruned.config.target_r
    assert (init_r, target_r) == (6, 4)
    assert pruned.config.rank_pattern is not None
    assert set(pruned.ranks) == {t.name for t in targets}
    assert sum(pruned.ranks.values()) <= target_r * len(targets) < init_r * len(targets)
    assert len(set(pruned.ranks.values())) > 1  # re-allocated, not uniformly shrunk
    assert _nonzero_E(pruned.model) == pruned.ranks  # pruned triplets are masked to exactly zero
    assert np.isfinite(pruned.metrics["quality/eval_loss"]) and "budget/violation" in pruned.metrics
    assert pruned.metrics["cost/params"] == total_costs(targets, pruned.ranks, budget)["params"]

    frozen = run_adalora(config, budget, reallocate=False)
    assert frozen.config.rank_pattern is None
    assert frozen.ranks == {t.name: init_r for t in targets} == _nonzero_E(frozen.model)
    assert adalora_ranks(frozen.model) == frozen.ranks


def test_adalora_step_needs_gradients():
    loaded = load_model("tiny-bert", num_labels=2)
    targets = find_target_modules(loaded.model)
    from peft import get_peft_model

    model = get_peft_model(loaded.model, adalora_config(targets, Budget.uniform_equivalent(targets, 2), 10))
    with pytest.raises(RuntimeError, match="before optimizer.zero_grad"):
        adalora_step(model, 1)
