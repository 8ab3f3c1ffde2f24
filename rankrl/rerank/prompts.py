"""What the LLM reranker recipes share: chat prompts, the unparsable-completion count, and reading the model.

* Prompts: every recipe prompts a chat model (:func:`require_chat_template`) with candidate texts clipped to
  ``max_chars`` (:func:`clip_text`) and listed with 1-based labels (:func:`listing`).
* Rewards: a completion a recipe cannot parse gets that recipe's lowest reward and is **counted** in
  :data:`UNPARSABLE` (recipe -> count) and, under a TRL trainer, logged as ``rerank/unparsable_<recipe>`` (the
  share of unparsable completions of the call) by :func:`count_unparsable`.
* Evaluation: a scorer that parses generated text carries a :class:`ParseCount` (``scorer.parse_count``), so
  ``rankrl rerank eval`` reports how many completions fell back to a default instead of being read.
* Inference: :func:`chat_prompts` (the chat template with the generation prompt), :func:`next_token_logits`
  (one left-padded forward pass per batch) and :func:`generate_texts` (greedy decoding).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "UNPARSABLE",
    "ParseCount",
    "chat_prompts",
    "clip_text",
    "count_unparsable",
    "generate_texts",
    "listing",
    "next_token_logits",
    "require_chat_template",
]

#: recipe -> number of completions that could not be parsed (reward 0); reset with ``UNPARSABLE.clear()``.
UNPARSABLE: Counter = Counter()


@dataclass
class ParseCount:
    """Completions an inference scorer read (``total``) and could not parse (``failed``, each given a fallback)."""

    failed: int = 0
    total: int = 0
    what: str = "completions"
    """what was parsed, for messages"""
    fallback: str = "a default"
    """what an unparsable completion became, for messages"""

    def add(self, failed: int, total: int) -> None:
        self.failed += int(failed)
        self.total += int(total)


def require_chat_template(tokenizer: Any, model_name: str) -> None:
    """Raise ``ValueError`` when ``tokenizer`` has no chat template (all the recipes prompt as a chat)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"model {model_name} has no chat template; pass --chat_template or use a chat model")


def clip_text(text: str, max_chars: int) -> str:
    """``text`` cut to at most ``max_chars`` at a word boundary, marked with `` ...`` when cut."""
    return text if len(text) <= max_chars else text[:max_chars].rsplit(" ", 1)[0] + " ..."


def listing(docs: Sequence[str], max_chars: int) -> str:
    """The candidates one per line with 1-based labels, each clipped to ``max_chars``.

    >>> listing(["a wing", "a fish that swims"], 12).splitlines()
    ['[1] a wing', '[2] a fish that ...']
    """
    return "\n".join(f"[{i}] {clip_text(d, max_chars)}" for i, d in enumerate(docs, 1))


def count_unparsable(recipe: str, bad: int, total: int, log_metric: Callable | None) -> None:
    """Count unparsable completions (module counter) and log their share through TRL's ``log_metric`` hook."""
    UNPARSABLE[recipe] += bad
    if log_metric is not None and total:
        log_metric(f"rerank/unparsable_{recipe.replace('-', '_')}", bad / total)


def chat_prompts(tokenizer: Any, messages: Sequence[list[dict]]) -> list[str]:
    """Each chat rendered by the tokenizer's template, ending with the assistant turn's opening."""
    return [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in messages]


def next_token_logits(model: Any, tokenizer: Any, prompts: Sequence[str], batch_size: int = 16) -> Any:
    """Logits (float32, CPU) of the token after each prompt: one left-padded forward pass per batch."""
    import torch

    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    out = []
    try:
        model.eval()
        for i in range(0, len(prompts), batch_size):
            enc = tokenizer(list(prompts[i : i + batch_size]), return_tensors="pt", padding=True,
                            add_special_tokens=False)  # fmt: skip
            with torch.no_grad():
                out.append(model(**enc.to(model.device)).logits[:, -1, :].float().cpu())
    finally:
        tokenizer.padding_side = side
    return torch.cat(out)


def generate_texts(model: Any, tokenizer: Any, messages: Sequence[list[dict]], max_new_tokens: int) -> list[str]:
    """Greedy completions of the chats ``messages`` (one left-padded batch), special tokens dropped."""
    import torch

    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        enc = tokenizer(chat_prompts(tokenizer, messages), return_tensors="pt", padding=True,
                        add_special_tokens=False).to(model.device)  # fmt: skip
        with torch.no_grad():
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    finally:
        tokenizer.padding_side = side
    return tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
