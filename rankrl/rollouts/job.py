"""``rankrl rollouts train``: GRPO with a per-prompt rollout allocator (uniform, Knapsack RL or a learned policy) on
a verifiable-answer task, through :class:`~rankrl.rollouts.grpo.RolloutGRPOTrainer` (stock TRL otherwise).

Every ``GRPOConfig`` flag works (TRL's own parser); rankrl adds the model/task/allocator fields of
:class:`RolloutsArgs`. Metrics go to TRL's loggers (W&B by default, offline unless configured) and to
``<output_dir>/metrics.jsonl``; the rollouts-per-prompt histogram goes to W&B each round.

Resume: ``--resume_from_checkpoint DIR`` (or ``true``: the newest ``checkpoint-N``) continues TRL's state, the
rollout history (and a learned allocator's own state) saved as ``rollout_history.json`` in every checkpoint, and
``metrics.jsonl`` cut back to the checkpoint's step; flags that change the run must match ``run_args.json``.
SIGINT / SIGTERM finish the current step, save ``checkpoint-N`` and exit with status 130.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rankrl.atomic import atomic_write_text
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


#: the rollout history (and a learned allocator's state) inside each TRL checkpoint folder
HISTORY_FILE = "rollout_history.json"


def run_rollouts_train(args: RolloutsArgs, config: Any, allocator: Allocator) -> int:
    """Train; returns 0, or 130 after a SIGINT / SIGTERM saved a checkpoint. ``config`` is a ``trl.GRPOConfig``
    (its ``num_generations`` is set from ``args.rollouts_per_prompt``; a different value set on it is refused)."""
    from peft import LoraConfig

    from rankrl.interrupt import EXIT_INTERRUPTED, stop_on_signals
    from rankrl.models import load_model
    from rankrl.resume import checkpoint_step, prepare_grpo_run
    from rankrl.rewards import numeric_answer_reward
    from rankrl.rollouts.grpo import RolloutGRPOTrainer
    from rankrl.tracking import trainer_stop_callback, wandb_mode

    if "wandb" in (config.report_to or []):
        os.environ.setdefault("WANDB_MODE", wandb_mode())
    resume = prepare_grpo_run(args, config, args.rollouts_per_prompt, "--rollouts_per_prompt", "rankrl rollouts train")
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
    resume_step = None
    if resume is not None:
        resume_step = checkpoint_step(resume)
        load_history(trainer, allocator, resume)
    trainer.add_callback(_round_logger(trainer, Path(config.output_dir), resume_step))
    trainer.add_callback(history_checkpoint_callback(trainer, allocator))
    print(f"rollouts train | model {args.model} | task {args.task} ({len(dataset)} prompts) | allocator "
          f"{args.allocator} | {args.rollouts_per_prompt} rollouts/prompt on average"
          + (f" | resuming from step {resume_step} ({resume})" if resume else ""))  # fmt: skip
    with stop_on_signals() as stop:
        trainer.add_callback(trainer_stop_callback(stop))
        trainer.train(resume_from_checkpoint=resume)
    if stop:
        step = trainer.state.global_step
        print(f"{stop.name}: stopped after step {step}; checkpoint -> {Path(config.output_dir) / f'checkpoint-{step}'}"
              f"; continue with the same flags and --resume_from_checkpoint true")  # fmt: skip
        return EXIT_INTERRUPTED
    trainer.save_model(config.output_dir)
    _print_summary(Path(config.output_dir) / "metrics.jsonl")
    return 0


def history_checkpoint_callback(trainer: Any, allocator: Any) -> Any:
    """A ``TrainerCallback`` writing the trainer's rollout history (and the allocator's ``state_dict()``, if it has
    one) as JSON into every checkpoint folder TRL saves (main process; the history is identical on every rank)."""
    from transformers import TrainerCallback

    class RolloutHistoryCheckpoint(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:
                return
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            saved = {"step": state.global_step, "history": trainer.history.state_dict(),
                     "allocator": allocator.state_dict() if hasattr(allocator, "state_dict") else None}  # fmt: skip
            atomic_write_text(folder / HISTORY_FILE, json.dumps(saved))

    return RolloutHistoryCheckpoint()


def load_history(trainer: Any, allocator: Any, checkpoint: str | Path) -> None:
    """Restore what :func:`history_checkpoint_callback` saved in ``checkpoint`` into the trainer and allocator."""
    from rankrl.rollouts.history import RolloutHistory

    path = Path(checkpoint) / HISTORY_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{checkpoint} has no {HISTORY_FILE}: the rollout history cannot be restored, so the "
                                "allocator would restart from nothing; resume from a checkpoint saved by rankrl "
                                "rollouts train, or start a fresh run")  # fmt: skip
    saved = json.loads(path.read_text())
    trainer.history = RolloutHistory.from_state_dict(saved["history"])
    if saved.get("allocator") is not None:
        if not hasattr(allocator, "load_state_dict"):
            raise ValueError(f"{path} holds a learned allocator's state but --allocator is not a learned allocator")
        allocator.load_state_dict(saved["allocator"])


def _round_logger(trainer: Any, out_dir: Path, resume_step: int | None = None) -> Any:
    """Every TRL log row to ``metrics.jsonl``; the rollouts histogram to W&B."""
    from rankrl.tracking import trainer_metrics_callback

    def histogram(args: Any) -> None:
        counts = trainer.last_round.counts
        if counts and "wandb" in (args.report_to or []):
            import wandb

            if wandb.run is not None:
                wandb.log({"grpo/rollouts_per_prompt": wandb.Histogram(counts)}, commit=False)

    return trainer_metrics_callback(out_dir, on_log=histogram, resume_step=resume_step)


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
