"""Prompts with verifiable answers for rollout-allocation GRPO runs (the CLI job and the live env backend).

:func:`build_dataset` turns a causal-LM task of :mod:`rankrl.tasks` (``arith``, ``gsm8k`` or a path) into TRL's
``prompt`` / ``target`` rows with a stable ``prompt_id`` column, the key the allocators and histories use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["GSM8K_INSTRUCTION", "build_dataset", "resolve_task"]

GSM8K_INSTRUCTION = "Solve the problem. End your answer with '#### <number>'."


def resolve_task(task: str) -> str:
    """``gsm8k`` -> the shared local copy when present, else the hub dataset."""
    if task != "gsm8k":
        return task
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        local = base.parent / "shared" / "data" / "gsm8k"
        if local.exists():
            return str(local)
    return "openai/gsm8k:main"


def build_dataset(
    task: str,
    tokenizer: Any,
    seed: int,
    *,
    max_prompts: int | None = None,
    prompt_format: str = "auto",
    model: str = "the model",
) -> Any:
    """Prompt/target rows (with a stable ``prompt_id``) for TRL.

    Args:
        task: ``arith``, ``gsm8k`` or a JSONL/dir path (:func:`rankrl.tasks.load_task`); must be a causal-LM task.
        tokenizer: the model's tokenizer (its chat template is needed for chat prompts).
        seed: seeds the task's train sample.
        max_prompts: use at most this many training prompts.
        prompt_format: ``plain`` (the text as is), ``chat`` (a user turn) or ``auto`` (plain for arith).
        model: the model's name, for the error message when it has no chat template.
    """
    from datasets import Dataset

    from rankrl.tasks import load_task

    loaded = load_task(resolve_task(task), seed=seed, max_train=max_prompts)
    if loaded.kind != "causal_lm":
        raise ValueError(f"task {task!r} is a {loaded.kind} task; rollout budgets need prompts with answers")
    rows = loaded.splits["train"]
    chat = prompt_format == "chat" or (prompt_format == "auto" and loaded.name != "arith")
    if chat and not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"model {model!r} has no chat template; pass --prompt_format plain")
    suffix = f"\n{GSM8K_INSTRUCTION}" if chat else ""
    prompts = [[{"role": "user", "content": r.text + suffix}] if chat else r.text for r in rows]
    return Dataset.from_dict(
        {"prompt": prompts, "target": [r.target for r in rows], "prompt_id": [str(i) for i in range(len(rows))]}
    )
