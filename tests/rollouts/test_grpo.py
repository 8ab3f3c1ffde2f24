"""RolloutGRPOTrainer: stock-equal under a uniform allocation, exact variable groups otherwise, loud errors.

The same claims under 2 DDP ranks (gloo on CPU, ``accelerate launch --multi_gpu --num_processes 2``) are tested by
``tests/rollouts/test_ddp.py``, which launches ``tests/rollouts/ddp_equal.py``.
"""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
import torch

pytest.importorskip("trl")

from datasets import Dataset  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

import rankrl.rewards  # noqa: E402
from rankrl.models import load_model  # noqa: E402
from rankrl.rollouts.grpo import (  # noqa: E402
    RolloutGRPOTrainer,
    group_advantages,
    group_metrics,
    knapsack_allocator,
    prompt_key,
    uniform_allocator,
)
from rankrl.rollouts.history import RolloutHistory  # noqa: E402
from rankrl.tasks import load_task  # noqa: E402


def digit_share(completions, **kwargs):
    """A deterministic, non-constant reward so GRPO has a gradient on an untrained model."""
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


def _config(tmp_path, **overrides):
    kw = dict(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, num_generations=4,
              max_completion_length=8, temperature=1.0, seed=0, use_cpu=True, bf16=False, report_to="none",
              logging_steps=1, gradient_checkpointing=False, save_strategy="no", learning_rate=1e-2)  # fmt: skip
    kw.update(overrides)
    return GRPOConfig(**kw)


def _dataset(n=8):
    rows = load_task("arith").splits["train"][:n]
    return Dataset.from_dict({"prompt": [r.text for r in rows], "target": [r.target for r in rows]})


def _trainer(cls, tmp_path, reward=digit_share, **kwargs):
    lm = load_model("tiny-qwen", task_kind="causal_lm", seed=0)
    config = kwargs.pop("args", None) or _config(tmp_path)
    return cls(model=lm.model, processing_class=lm.tokenizer, reward_funcs=reward, args=config,
               train_dataset=_dataset(), **kwargs)  # fmt: skip


def _fixed(counts):
    return lambda keys, history, budget: list(counts)


def _round(a="12+7=", b="30-4=", g=4):
    return [{"prompt": a, "target": "19"}] * g + [{"prompt": b, "target": "26"}] * g


# ----------------------------------------------------------------------------------------------- live (TRL)
def test_uniform_allocation_equals_stock_grpo(tmp_path):
    stock = _trainer(GRPOTrainer, tmp_path / "stock")
    before = {n: p.detach().clone() for n, p in stock.model.named_parameters()}
    stock.train()
    budget = _trainer(RolloutGRPOTrainer, tmp_path / "budget")
    budget.train()

    def logs(trainer):
        return [{k: v for k, v in h.items() if "time" not in k and "per_second" not in k and not k.startswith("grpo/")}
                for h in trainer.state.log_history]  # fmt: skip

    losses = [h["loss"] for h in logs(stock) if "loss" in h]
    assert len(losses) == 2 and losses == [h["loss"] for h in logs(budget) if "loss" in h]
    assert logs(stock) == logs(budget)  # grad norms, rewards, frac_reward_zero_std, entropy... all bitwise equal
    after_stock = dict(stock.model.named_parameters())
    for name, p in budget.model.named_parameters():
        assert torch.equal(p, after_stock[name]), name
    assert any(not torch.equal(before[n], p) for n, p in after_stock.items())  # the comparison is not vacuous
    assert budget.state.log_history[0]["grpo/rollouts_per_prompt_max"] == 4
    assert len(budget.history) > 0


def test_variable_allocation_reaches_reward_and_centres_each_group(tmp_path):
    seen = []

    def pattern(prompts, completions, **kwargs):
        # prompt A always succeeds; prompt B alternates 0, 1, 0, 1, ... over its own rows
        seen.extend(prompts)
        out, k = [], 0
        for p in prompts:
            out.append(1.0 if p == "12+7=" else float(k % 2))
            k += p != "12+7="
        return out

    config = _config(tmp_path, per_device_train_batch_size=8)
    trainer = _trainer(RolloutGRPOTrainer, tmp_path, reward=pattern, args=config, allocator=_fixed([2, 6]))
    trainer.model.train()
    out = trainer._generate_and_score_completions(_round())
    assert seen == ["12+7="] * 2 + ["30-4="] * 6
    assert out["completion_ids"].shape[0] == 8
    adv = out["advantages"]
    assert torch.all(adv[:2] == 0)  # all-equal group
    assert abs(adv[2:].sum().item()) < 1e-5
    expected = (torch.tensor([0.0, 1, 0, 1, 0, 1]) - 0.5) / (math.sqrt(0.25 * 6 / 5) + 1e-4)
    torch.testing.assert_close(adv[2:], expected)
    m = trainer._metrics["train"]
    assert m["grpo/frac_nonzero_groups"] == [0.5]
    assert m["grpo/effective_rollout_ratio"] == [0.75]
    assert (m["grpo/rollouts_per_prompt_max"], m["grpo/rollouts_per_prompt_min"]) == ([6.0], [2.0])
    assert m["frac_reward_zero_std"] == [0.25]  # recomputed over the true groups (stock's fixed groups say 0.5)
    assert trainer.last_round.counts == [2, 6] and trainer.last_round.rewards[0] == [1.0, 1.0]
    assert trainer.history.counts("12+7=") == (2, 2) and trainer.history.counts("30-4=") == (3, 6)
    assert list(trainer._logs["advantages"]) == adv.tolist()

    seen.clear()
    trainer.allocator = _fixed([1, 7])
    out = trainer._generate_and_score_completions(_round())
    assert len(seen) == 8 and seen.count("12+7=") == 1
    assert out["advantages"][0].item() == 0.0  # a group of one has no advantage
    assert abs(out["advantages"][1:].sum().item()) < 1e-5
    for values in trainer._metrics["train"].values():
        assert all(math.isfinite(v) for v in values)
    grpo = {k: v for k, v in trainer._metrics["train"].items() if k.startswith("grpo/frac") or "ratio" in k}
    assert all(0.0 <= v <= 1.0 for vals in grpo.values() for v in vals)


def test_bad_allocations_and_rounds_raise_clear_errors(tmp_path):
    trainer = _trainer(RolloutGRPOTrainer, tmp_path, args=_config(tmp_path, per_device_train_batch_size=8))
    trainer.model.train()
    for counts, match in [([8], "2 prompts"), ([4, 4, 1], "3 rollout counts"), ([3, 3], "sums to 6"),
                          ([0, 8], "fewer than 1")]:  # fmt: skip
        trainer.allocator = _fixed(counts)
        with pytest.raises(ValueError, match=match):
            trainer._generate_and_score_completions(_round())
    trainer.allocator = uniform_allocator
    split = [{"prompt": "12+7="}] * 3 + [{"prompt": "30-4="}] * 5
    with pytest.raises(ValueError, match="split across ranks"):
        trainer._generate_and_score_completions(split)


def test_knapsack_run_logs_grpo_metrics(tmp_path):
    # steps_per_generation=2: one round of 2 prompts x 4 rows is generated, then split into 2 optimizer steps
    config = _config(tmp_path, steps_per_generation=2)
    trainer = _trainer(RolloutGRPOTrainer, tmp_path, reward=rankrl.rewards.numeric_answer_reward, args=config,
                       allocator=knapsack_allocator(n_min=2))  # fmt: skip
    trainer.train()
    logged = trainer.state.log_history[0]
    for key in ("grpo/frac_nonzero_groups", "grpo/effective_rollout_ratio"):
        assert 0.0 <= logged[key] <= 1.0
    assert logged["grpo/rollouts_per_prompt_min"] >= 2 and sum(trainer.last_round.counts) == 8
    assert len(trainer.last_round.counts) == 2
    assert sum(trainer.history.counts(k)[1] for k in trainer.last_round.keys) == 8  # one round: 8 scored rollouts


# ----------------------------------------------------------------------------------------------- pure pieces
def test_group_advantages_match_trl_fixed_groups_bitwise():
    from trl.trainer.utils import nanstd

    torch.manual_seed(0)
    rpf = torch.rand(12, 2)
    rpf[3, 1] = torch.nan
    w = torch.tensor([1.0, 0.5])
    r = (rpf * w).nansum(dim=1)
    std = nanstd(r.view(-1, 4), dim=1).repeat_interleave(4)
    stock = (r - torch.nanmean(r.view(-1, 4), dim=1).repeat_interleave(4)) / (std + 1e-4)
    adv, zero = group_advantages(rpf, w, [4, 4, 4])
    assert torch.equal(adv, stock) and not zero.any()
    adv, _ = group_advantages(rpf, w, [3, 1, 8], scale_rewards="batch")
    assert adv[3] == 0 and abs(adv[:3].sum()) < 1e-5 and abs(adv[4:].sum()) < 1e-5
    adv, _ = group_advantages(rpf, w, [2, 10], aggregation="normalize_then_sum")
    assert torch.isfinite(adv).all()


def test_group_metrics_known_pattern():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.5])
    m = group_metrics(rewards, [2, 4, 1, 1])
    assert m["grpo/frac_nonzero_groups"] == 0.25 and m["grpo/effective_rollout_ratio"] == 0.5
    assert (m["grpo/rollouts_per_prompt_min"], m["grpo/rollouts_per_prompt_max"]) == (1, 4)


def test_knapsack_allocator_favours_mixed_history():
    # 12 outcomes each: with only 4, the Beta(1, 1) prior leaves the all-0 prompt at p = 1/6, "hard but solvable",
    # which Knapsack RL values as much as p = 1/2 (it then gets 5 of 12 rollouts, like the mixed one)
    history = RolloutHistory()
    history.update(["zero"] * 12 + ["one"] * 12 + ["mixed"] * 12, [0] * 12 + [1] * 12 + [1, 0] * 6)
    counts = knapsack_allocator(n_min=2)(["zero", "mixed", "one"], history, 12)
    assert sum(counts) == 12 and counts[1] > max(counts[0], counts[2]) and min(counts) >= 2
    assert list(uniform_allocator(["a", "b", "c"], history, 12)) == [4, 4, 4]
    np.testing.assert_allclose(history.success_rates(["mixed", "new"]), [0.5, 0.5])


def test_history_window_and_prompt_keys():
    history = RolloutHistory(window=2)
    history.update(["a"] * 3, [True, False, False])
    assert history.outcomes("a") == [0, 0] and "b" not in history and history.counts("b") == (0, 0)
    assert prompt_key({"prompt": "1+1=", "prompt_id": 7}) == "7"
    assert prompt_key({"prompt": [{"role": "user", "content": "hi"}]}).startswith("[{")
    with pytest.raises(ValueError, match="window"):
        RolloutHistory(window=0)


def test_reward_doctests():
    assert doctest.testmod(rankrl.rewards).failed == 0
