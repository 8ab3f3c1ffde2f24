"""``rankrl rollouts train``: GRPO with a per-prompt rollout allocator (uniform, Knapsack RL or a learned policy) on
a verifiable-answer task, through :class:`~rankrl.rollouts.grpo.RolloutGRPOTrainer` (stock TRL otherwise).

Every ``GRPOConfig`` flag works (TRL's own parser); rankrl adds the model/task/allocator fields of
:class:`RolloutsArgs`. Metrics go to TRL's loggers (W&B by default, offline unless configured) and to
``<output_dir>/metrics.jsonl``; the rollouts-per-prompt histogram goes to W&B each round.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rankrl.rollouts.data import build_dataset
from rankrl.rollouts.grpo import Allocator


@dataclass
class RolloutsArgs:
    """rankrl's fields of ``rankrl rollouts train`` (every GRPOConfig flag is accepted too)."""

    model: str = "tiny-qwen"
    """model alias (tiny-qwen, tiny-llama, smollm2), local directory or hub id"""
    task: str = "arith"
    """'arith' (embedded, verifiable sums), 'gsm8k' (../shared/data/gsm8k, else the hub) or a JSONL/dir path"""
    allocator: str = "knapsack"
    """'uniform' (stock GRPO), 'knapsack' (Knapsack RL from each prompt's history) or a trained allocator dir"""
    rollouts_per_prompt: int = 8
    """average rollouts per prompt; the round's total is this x prompts (= TRL's num_generations)"""
    n_min: int = 2
    """fewest rollouts a prompt gets"""
    n_max: int = 64
    """most rollouts a prompt gets"""
    lora_r: int = 16
    """LoRA rank of all linear projections (0: full fine-tune)"""
    max_prompts: int | None = None
    """use at most this many training prompts"""
    prompt_format: str = "auto"
    """'plain' (the text as is), 'chat' (a user turn via the chat template) or 'auto' (plain for arith)"""

    def __post_init__(self) -> None:
        if self.rollouts_per_prompt < 2:
            raise ValueError("--rollouts_per_prompt must be >= 2 (GRPO needs a group)")
        if not 1 <= self.n_min <= self.rollouts_per_prompt <= self.n_max:
            raise ValueError("need 1 <= --n_min <= --rollouts_per_prompt <= --n_max")
        if self.prompt_format not in ("auto", "plain", "chat"):
            raise ValueError("--prompt_format must be auto, plain or chat")


def run_rollouts_train(args: RolloutsArgs, config: Any, allocator: Allocator) -> int:
    """Train; returns 0. ``config`` is a ``trl.GRPOConfig`` (its ``num_generations`` is set from ``args``)."""
    from peft import LoraConfig

    from rankrl.models import load_model
    from rankrl.rewards import numeric_answer_reward
    from rankrl.rollouts.grpo import RolloutGRPOTrainer
    from rankrl.tracking import wandb_mode

    if "wandb" in (config.report_to or []):
        os.environ.setdefault("WANDB_MODE", wandb_mode())
    config.num_generations = args.rollouts_per_prompt
    loaded = load_model(args.model, task_kind="causal_lm", seed=config.seed)
    dataset = build_dataset(args.task, loaded.tokenizer, config.seed, max_prompts=args.max_prompts,
                            prompt_format=args.prompt_format, model=args.model)  # fmt: skip
    peft_config = None
    if args.lora_r:
        peft_config = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, target_modules="all-linear",
                                 task_type="CAUSAL_LM")  # fmt: skip
    trainer = RolloutGRPOTrainer(
        model=loaded.model,
        processing_class=loaded.tokenizer,
        reward_funcs=numeric_answer_reward,
        args=config,
        train_dataset=dataset,
        peft_config=peft_config,
        allocator=allocator,
    )
    trainer.add_callback(_round_logger(trainer, Path(config.output_dir)))
    print(f"rollouts train | model {args.model} | task {args.task} ({len(dataset)} prompts) | allocator "
          f"{args.allocator} | {args.rollouts_per_prompt} rollouts/prompt on average")  # fmt: skip
    trainer.train()
    trainer.save_model(config.output_dir)
    _print_summary(Path(config.output_dir) / "metrics.jsonl")
    return 0


def _round_logger(trainer: Any, out_dir: Path) -> Any:
    """Every TRL log row to ``metrics.jsonl``; the rollouts histogram to W&B."""
    from rankrl.tracking import trainer_metrics_callback

    def histogram(args: Any) -> None:
        counts = trainer.last_round.counts
        if counts and "wandb" in (args.report_to or []):
            import wandb

            if wandb.run is not None:
                wandb.log({"grpo/rollouts_per_prompt": wandb.Histogram(counts)}, commit=False)

    return trainer_metrics_callback(out_dir, on_log=histogram)


def _print_summary(path: Path) -> None:
    from rankrl.tracking import read_metrics

    rows = [r for r in read_metrics(path) if "reward" in r]
    if not rows:
        return
    keys = ["reward", "grpo/frac_nonzero_groups", "grpo/effective_rollout_ratio", "grpo/rollouts_per_prompt_max"]
    print(f"\n{'metric':<34}{'first':>10}{'last':>10}{'mean':>10}")
    for key in keys:
        vals = [r[key] for r in rows if key in r]
        if vals:
            print(f"{key:<34}{vals[0]:>10.3f}{vals[-1]:>10.3f}{sum(vals) / len(vals):>10.3f}")
    print(f"metrics -> {path}")
