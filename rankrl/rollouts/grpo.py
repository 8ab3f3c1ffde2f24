"""GRPO with a per-prompt rollout budget (Knapsack RL) on top of TRL 1.16's ``GRPOTrainer``.

Stock TRL repeats every prompt ``num_generations`` (G) times and normalises advantages over fixed groups of G.
:class:`RolloutGRPOTrainer` generates N_i rollouts for prompt i instead, with ``sum_i N_i`` equal to the round's row
budget (so the compute saving is real: a prompt given 2 rollouts costs 2 generations, not G), and computes advantages
over the true variable-size groups. Model, sampler, generation, reward calls, loss, optimizer and logging stay TRL's.

How (the one override, ``_generate_and_score_completions``; see ``../shared/notes/trl-grpo-1.16.md``):

1. TRL's ``RepeatSampler`` hands each rank its local round: whole groups of G identical rows. We read the group
   keys, ask the allocator for N_i, and rebuild the round as N_i copies of each prompt's row (same row count).
2. The stock method then generates one completion per row, scores them, and computes log-probs; its advantages use
   ``rewards.view(-1, G)``, i.e. groups that straddle our prompts, so step 3 replaces them.
3. Advantages are recomputed over the real groups with a NaN-padded (groups x max N_i) matrix and
   ``nanmean``/``nanstd``: the stock operation sequence, bitwise identical to it when every N_i == G (tested in one
   process, ``tests/rollouts/test_grpo.py``, and under 2 gloo DDP ranks, ``tests/rollouts/test_ddp.py``). A
   group of one rollout gets advantage 0. The rewards are read back from ``self._logs["rewards"]``, where the stock
   method stores the gathered per-function rewards of the round (the output dict carries only advantages), so no
   second method is overridden or wrapped.

Multi-process (``accelerate launch``): each rank allocates its own local round. Every rank keeps its row count
(TRL requires equal rows per rank), group sizes and keys are gathered so advantages, metrics and the shared
:class:`~rankrl.rollouts.history.RolloutHistory` are global and identical on every rank. Evaluation keeps TRL's
fixed groups.

Note the loss weighs each completion 1/B whatever its group size, so a prompt's share of the gradient grows with
N_i; that is Knapsack RL's intent (liziniu/KnapsackRL) and stock TRL's loss, unchanged.

Example::

    trainer = RolloutGRPOTrainer(model=lm.model, processing_class=lm.tokenizer, reward_funcs=numeric_answer_reward,
                                args=GRPOConfig(..., num_generations=8), train_dataset=ds,
                                allocator=knapsack_allocator(n_min=2, n_max=16))
"""

from __future__ import annotations

import copy
import itertools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from accelerate.utils import gather_object
from trl import GRPOTrainer
from trl.trainer.utils import nanstd

from rankrl.rollouts.history import RolloutHistory
from rankrl.rollouts.knapsack import allocate, allocate_uniform

__all__ = [
    "Allocator",
    "RolloutGRPOTrainer",
    "RolloutRound",
    "group_advantages",
    "group_metrics",
    "knapsack_allocator",
    "prompt_key",
    "uniform_allocator",
]


# keys of this round's prompt groups (may repeat if the dataset does), the history, the round's row budget -> N_i.
# The budget is an argument (the issue sketch left it implicit) because an allocator cannot know it otherwise.
Allocator = Callable[[list[str], RolloutHistory, int], Sequence[int]]


def uniform_allocator(keys: list[str], history: RolloutHistory, budget: int) -> np.ndarray:
    """The stock split: ``budget`` spread evenly (G each when budget = G x prompts). An :data:`Allocator`."""
    return allocate_uniform(len(keys), budget)


def knapsack_allocator(n_min: int = 2, n_max: int | None = None, prior: tuple[float, float] = (1.0, 1.0)) -> Allocator:
    """An :data:`Allocator` maximising the Knapsack RL value from each prompt's success history.

    Args:
        n_min: fewest rollouts per prompt (2: a group of one never has an advantage).
        n_max: most rollouts per prompt (None: no cap).
        prior: Beta prior (alpha, beta) of the success-rate estimate; unseen prompts get its mean.
    """

    def knapsack(keys: list[str], history: RolloutHistory, budget: int) -> np.ndarray:
        return allocate(history.success_rates(keys, prior), budget, n_min=n_min, n_max=n_max)

    return knapsack


def prompt_key(row: dict[str, Any]) -> str:
    """A row's prompt key: its ``prompt_id`` column if present, else the prompt text (JSON for conversations)."""
    if "prompt_id" in row:
        return str(row["prompt_id"])
    prompt = row["prompt"]
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, ensure_ascii=False, default=str)


def _group_starts(keys: list[str], num_generations: int) -> list[int]:
    """Start row of each prompt group of a local round; fails when rows are not whole groups of G."""
    n, g = len(keys), num_generations
    runs_ok = n % g == 0 and all(len(set(keys[s : s + g])) == 1 for s in range(0, n, g))
    if not runs_ok:
        raise ValueError(
            f"this rank's round of {n} rows is not made of whole groups of num_generations={g} identical prompts, "
            "so prompts cannot be de-duplicated and re-allocated. A group is split across ranks or rounds when the "
            "local rows per round (per_device_train_batch_size * steps_per_generation) are not a multiple of "
            "num_generations: make them a multiple (e.g. raise per_device_train_batch_size or steps_per_generation)."
        )
    return list(range(0, n, g))


def _validate_allocation(counts: Sequence[int], n_groups: int, budget: int) -> list[int]:
    out = [int(c) for c in np.asarray(counts).ravel()]
    if len(out) != n_groups:
        raise ValueError(
            f"the allocator returned {len(out)} rollout counts for {n_groups} prompts in this round; return one "
            "count per prompt key it was given, in the same order"
        )
    if any(c < 1 for c in out):
        raise ValueError(f"the allocator gave a prompt fewer than 1 rollout ({out}); every prompt needs N_i >= 1")
    if sum(out) != budget:
        raise ValueError(
            f"the allocation {out} sums to {sum(out)} rollouts but the round's row budget is {budget} "
            "(per_device_train_batch_size * steps_per_generation); return counts that sum exactly to the budget "
            "argument, e.g. with rankrl.rollouts.knapsack.allocate(p, budget)"
        )
    return out


def _pad_groups(values: torch.Tensor, sizes: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Rows (grouped, in order) -> NaN-padded ``(groups, max size, ...)`` tensor and the (group, column) index."""
    group = torch.repeat_interleave(torch.arange(sizes.numel(), device=values.device), sizes)
    starts = torch.cumsum(sizes, 0) - sizes
    col = torch.arange(values.size(0), device=values.device) - torch.repeat_interleave(starts, sizes)
    padded = values.new_full((sizes.numel(), int(sizes.max()), *values.shape[1:]), float("nan"))
    padded[group, col] = values
    return padded, (group, col)


def group_advantages(
    rewards_per_func: torch.Tensor,
    weights: torch.Tensor,
    sizes: Sequence[int],
    scale_rewards: str = "group",
    aggregation: str = "sum_then_normalize",
) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO advantages over consecutive groups of the given sizes, TRL 1.16's op sequence on a NaN-padded matrix.

    Args:
        rewards_per_func: ``(rows, reward funcs)`` rewards, NaN where a function abstained; rows grouped in order.
        weights: ``(reward funcs,)`` reward weights.
        sizes: rows per group, summing to ``rows``.
        scale_rewards: ``"group"``, ``"batch"`` or ``"none"`` (TRL's ``GRPOConfig.scale_rewards``).
        aggregation: ``"sum_then_normalize"`` or ``"normalize_then_sum"`` (``multi_objective_aggregation``).

    Returns:
        ``(advantages, std_is_zero)`` per row; rows of a one-rollout group and unscorable rows get advantage 0.
    """
    sizes_t = torch.as_tensor(list(sizes), dtype=torch.long, device=rewards_per_func.device)
    if int(sizes_t.sum()) != rewards_per_func.size(0) or bool((sizes_t < 1).any()):
        raise ValueError(f"group sizes {list(sizes)} must be >= 1 and sum to {rewards_per_func.size(0)} rows")
    w = weights.to(rewards_per_func.device).unsqueeze(0)
    unscorable = torch.isnan(rewards_per_func).all(dim=1)
    single = torch.repeat_interleave(sizes_t == 1, sizes_t)
    max_n = int(sizes_t.max())
    if aggregation == "sum_then_normalize":
        rewards = (rewards_per_func * w).nansum(dim=1)
        rewards[unscorable] = torch.nan
        padded, _ = _pad_groups(rewards, sizes_t)
        mean = torch.nanmean(padded, dim=1).repeat_interleave(sizes_t, dim=0)
        if scale_rewards in ("group", "none"):
            std = nanstd(padded, dim=1).repeat_interleave(sizes_t, dim=0) if max_n > 1 else torch.zeros_like(rewards)
        elif scale_rewards == "batch":
            std = nanstd(rewards).expand_as(rewards) if rewards.numel() > 1 else torch.zeros_like(rewards)
        else:
            raise ValueError(f"scale_rewards must be 'batch', 'group' or 'none', got {scale_rewards!r}")
        std = torch.where(single, torch.zeros_like(std), std)  # a one-rollout group has no spread (nanstd: NaN)
        advantages = rewards - mean
        if scale_rewards != "none":
            advantages = advantages / (std + 1e-4)
    elif aggregation == "normalize_then_sum":
        padded, index = _pad_groups(rewards_per_func, sizes_t)
        mean_k = torch.nanmean(padded, dim=1, keepdim=True)
        std_k = nanstd(padded, dim=1, keepdim=True) if max_n > 1 else torch.zeros_like(mean_k)
        reward_k = ((padded - mean_k) / (std_k + 1e-4))[index]
        rewards = (reward_k * w).nansum(dim=1)
        rewards[unscorable | single] = torch.nan  # one-rollout groups carry no signal: keep them out of batch stats
        std = nanstd(rewards).expand_as(rewards) if rewards.numel() > 1 else torch.zeros_like(rewards)
        advantages = (rewards - torch.nanmean(rewards)) / (std + 1e-4)
    else:
        raise ValueError(f"aggregation must be 'sum_then_normalize' or 'normalize_then_sum', got {aggregation!r}")
    advantages = torch.nan_to_num(advantages, nan=0.0)
    advantages[single] = 0.0
    return advantages, torch.isclose(std, torch.zeros_like(std))


def group_metrics(rewards: torch.Tensor, sizes: Sequence[int]) -> dict[str, float]:
    """``grpo/*`` metrics of one round: rewards (weighted sum per row, NaN = unscorable) in groups of ``sizes``.

    A group is non-zero when its scorable rewards are not all equal (so a one-rollout group never is).
    """
    sizes_t = torch.as_tensor(list(sizes), dtype=torch.long, device=rewards.device)
    padded, _ = _pad_groups(rewards.float(), sizes_t)
    valid = ~torch.isnan(padded)
    hi = torch.where(valid, padded, -torch.inf).amax(dim=1)
    lo = torch.where(valid, padded, torch.inf).amin(dim=1)
    nonzero = (valid.sum(dim=1) >= 2) & (hi > lo)
    counts = sizes_t.float()
    return {
        "grpo/frac_nonzero_groups": nonzero.float().mean().item(),
        "grpo/effective_rollout_ratio": (counts * nonzero).sum().item() / counts.sum().item(),
        "grpo/rollouts_per_prompt_mean": counts.mean().item(),
        "grpo/rollouts_per_prompt_max": counts.max().item(),
        "grpo/rollouts_per_prompt_min": counts.min().item(),
    }


@dataclass
class RolloutRound:
    """The last training round over all ranks (read it from a callback, e.g. to log a ``wandb.Histogram``).

    Attributes:
        keys: prompt key per group, rank 0's groups first.
        counts: rollouts per group (the histogram of rollouts per prompt).
        rewards: weighted reward per rollout, one list per group (NaN = unscorable).
    """

    keys: list[str] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    rewards: list[list[float]] = field(default_factory=list)


class RolloutGRPOTrainer(GRPOTrainer):
    """TRL's ``GRPOTrainer`` generating ``allocator``-chosen rollouts per prompt; otherwise stock.

    Args:
        *args: ``GRPOTrainer`` arguments.
        allocator: decides N_i per prompt each round (default :func:`uniform_allocator`, i.e. stock GRPO).
        success_threshold: a rollout's weighted reward counts as a success in the history when >= this.
        history: the :class:`RolloutHistory` to update and allocate from (shared with an env or policy); new if None.
        **kwargs: ``GRPOTrainer`` keyword arguments.

    Attributes:
        history: per-prompt success outcomes, updated with every training round's rewards (all ranks).
        last_round: the last training round's keys, rollout counts and rewards (:class:`RolloutRound`).
    """

    def __init__(
        self,
        *args: Any,
        allocator: Allocator | None = None,
        success_threshold: float = 0.5,
        history: RolloutHistory | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.allocator: Allocator = allocator if allocator is not None else uniform_allocator
        self.success_threshold = float(success_threshold)
        self.history = history if history is not None else RolloutHistory()
        self.last_round = RolloutRound()
        local_rows = self.args.per_device_train_batch_size * self.args.steps_per_generation
        if local_rows % self.num_generations:
            raise ValueError(
                f"each rank's round holds per_device_train_batch_size * steps_per_generation = {local_rows} rows, "
                f"not a multiple of num_generations = {self.num_generations}: a prompt's rows would be split across "
                f"ranks ({self.accelerator.num_processes} processes) and could not be re-allocated per rank. Make "
                "the local rows a multiple of num_generations (raise per_device_train_batch_size or "
                "steps_per_generation)."
            )
        if self.use_vllm and self.vllm_mode == "server":
            raise ValueError(
                "vLLM server mode generates n=num_generations completions per de-duplicated prompt "
                "(prompts[::num_generations]), which cannot follow a variable allocation; use vllm_mode='colocate' "
                "or transformers generation"
            )
        if len(set(self.reward_func_names)) != len(self.reward_func_names):
            raise ValueError(
                f"reward functions need distinct names, got {self.reward_func_names}: their rewards are read back "
                "per name from the trainer's logs (give each function a distinct __name__)"
            )

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, torch.Tensor | Any]:
        """Re-allocate the round's rollouts per prompt, run the stock method, redo advantages over true groups."""
        if not self.model.training:  # evaluation keeps TRL's fixed groups of num_generations_eval
            return super()._generate_and_score_completions(inputs)
        keys = [prompt_key(row) for row in inputs]
        starts = _group_starts(keys, self.num_generations)
        group_keys = [keys[s] for s in starts]
        budget = len(inputs)
        counts = _validate_allocation(self.allocator(group_keys, self.history, budget), len(group_keys), budget)
        # shallow copies: the stock method may write rollout_func extra fields into each row
        rows = [copy.copy(inputs[s]) for s, n in zip(starts, counts, strict=True) for _ in range(n)]
        output = super()._generate_and_score_completions(rows)

        per_rank = gather_object([(group_keys, counts)])  # rank order == order of the gathered rewards
        rank = self.accelerator.process_index
        offset = sum(sum(c) for _, c in per_rank[:rank])
        all_keys = [k for ks, _ in per_rank for k in ks]
        all_counts = [n for _, cs in per_rank for n in cs]
        rewards_per_func = self._round_rewards(sum(all_counts))
        advantages, std_is_zero = group_advantages(
            rewards_per_func, self.reward_weights, all_counts, self.scale_rewards, self.multi_objective_aggregation
        )
        output["advantages"] = advantages[offset : offset + budget]

        # Replace what the stock method logged from its fixed-size groups (a no-op when the allocation is uniform).
        metrics = self._metrics["train"]
        metrics["frac_reward_zero_std"][-1] = std_is_zero.float().mean().item()
        logged = self._logs["advantages"]
        for _ in range(advantages.numel()):
            logged.pop()
        logged.extend(advantages.tolist())

        rewards = (rewards_per_func * self.reward_weights.to(rewards_per_func.device).unsqueeze(0)).nansum(dim=1)
        rewards[torch.isnan(rewards_per_func).all(dim=1)] = torch.nan
        for name, value in group_metrics(rewards, all_counts).items():
            metrics[name].append(value)
        row_keys = [k for k, n in zip(all_keys, all_counts, strict=True) for _ in range(n)]
        values = rewards.tolist()
        scored = [(k, r >= self.success_threshold) for k, r in zip(row_keys, values, strict=True) if not math.isnan(r)]
        self.history.update([k for k, _ in scored], [ok for _, ok in scored])  # unscorable rows are not trials
        bounds = list(itertools.accumulate(all_counts, initial=0))
        self.last_round = RolloutRound(all_keys, all_counts, [values[a:b] for a, b in itertools.pairwise(bounds)])
        return output

    def _round_rewards(self, n_rows: int) -> torch.Tensor:
        """The round's gathered ``(rows, reward funcs)`` rewards, as the stock method appended them to its logs."""
        columns = []
        for name in self.reward_func_names:
            logged = self._logs["rewards"][name]
            if len(logged) < n_rows:
                raise RuntimeError(
                    f"expected the {n_rows} rewards of this round in the trainer's logs for {name!r}, found "
                    f"{len(logged)} (log deque maxlen {logged.maxlen}); this TRL version logs rewards differently"
                )
            columns.append(list(itertools.islice(logged, len(logged) - n_rows, len(logged))))
        device = self.accelerator.device
        return torch.tensor(columns, dtype=torch.float32, device=device).T.contiguous()
