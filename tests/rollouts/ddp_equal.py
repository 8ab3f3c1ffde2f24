"""2-rank DDP check launched by ``tests/rollouts/test_ddp.py`` (not collected by pytest): ``RolloutGRPOTrainer``
with the uniform allocator trains bitwise like stock ``GRPOTrainer`` under the same 2-process gloo CPU launch, and
with the knapsack allocator every rank ends with the same global rollout history and round.

Usage: ``accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no
tests/rollouts/ddp_equal.py OUT.json`` (``use_cpu=True`` makes the ranks gloo CPU processes). Rank 0 writes OUT.json.
"""

from __future__ import annotations

import json
import sys
import tempfile

import torch
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from rankrl.models import load_model
from rankrl.rollouts.grpo import RolloutGRPOTrainer, knapsack_allocator
from rankrl.tasks import load_task


def digit_share(completions, **kwargs):
    """A deterministic, non-constant reward so GRPO has a gradient on an untrained model."""
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


def train(cls, out_dir, **kwargs):
    rows = load_task("arith").splits["train"][:16]
    dataset = Dataset.from_dict({"prompt": [r.text for r in rows], "target": [r.target for r in rows]})
    lm = load_model("tiny-qwen", task_kind="causal_lm", seed=0)
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    config = GRPOConfig(output_dir=out_dir, max_steps=2, per_device_train_batch_size=8, num_generations=4,
                        max_completion_length=8, temperature=1.0, seed=0, use_cpu=True, bf16=False,
                        report_to="none", logging_steps=1, gradient_checkpointing=False, save_strategy="no",
                        learning_rate=1e-2)  # fmt: skip
    trainer = cls(model=lm.model, processing_class=lm.tokenizer, reward_funcs=digit_share, args=config,
                  train_dataset=dataset, **kwargs)  # fmt: skip
    trainer.train()
    logs = [{k: v for k, v in h.items() if "time" not in k and "per_second" not in k and not k.startswith("grpo/")}
            for h in trainer.state.log_history]  # fmt: skip
    params = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    changed = any(not torch.equal(before[n], p) for n, p in params.items())
    return trainer, logs, params, changed


def main(out: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        stock, stock_logs, stock_params, changed = train(GRPOTrainer, f"{tmp}/stock")
        rollout, rollout_logs, rollout_params, _ = train(RolloutGRPOTrainer, f"{tmp}/rollout")
        knapsack = train(RolloutGRPOTrainer, f"{tmp}/knapsack", allocator=knapsack_allocator(n_min=2))[0]
    acc = rollout.accelerator
    unequal = [n for n, p in rollout_params.items() if not torch.equal(p, stock_params[n])]
    result = {
        "processes": acc.num_processes,
        "rank": acc.process_index,
        "backend": str(torch.distributed.get_backend()) if torch.distributed.is_initialized() else None,
        "logs_equal": stock_logs == rollout_logs,
        "unequal_params": unequal,
        "changed": changed,
        "losses": [h["loss"] for h in stock_logs if "loss" in h],
        "groups": rollout.last_round.counts,
        "knapsack_history": knapsack.history.state_dict(),
        "knapsack_round": [knapsack.last_round.keys, knapsack.last_round.counts],
    }
    gathered = [result]
    if acc.num_processes > 1:
        gathered = [None] * acc.num_processes
        torch.distributed.all_gather_object(gathered, result)
    if acc.is_main_process:
        with open(out, "w") as f:
            json.dump(gathered, f)


if __name__ == "__main__":
    main(sys.argv[1])
