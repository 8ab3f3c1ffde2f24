"""What the LLM reranker recipes share: chat prompts, the unparsable-completion count, and reading the model.

* Prompts: every recipe prompts a chat model (:func:`require_chat_template`) with candidate texts clipped to
  ``max_chars`` (:func:`clip_text`) and listed with 1-based labels (:func:`listing`).
* Rewards: a completion a recipe cannot parse gets that recipe's lowest reward and is **counted** in
  :data:`UNPARSABLE` (recipe -> count) and, under a TRL trainer, logged as ``rerank/unparsable_<recipe>`` (the
  share of unparsable completions of the call) by :func:`count_unparsable`.
* Evaluation: a scorer that parses generated text carries a :class:`ParseCount` (``scorer.parse_count``), so
  ``rankrl rerank eval`` reports how many completions fell back to a default instead of being read.
* Inference: :func:`chat_prompts` (the chat template with the generation prompt), :func:`next_token_logits`
  (the prompts' shared prefix computed once, :func:`shared_prefix_logits`; ``prefix_cache=False``: the reference,
  one left-padded forward pass per batch) and :func:`generate_texts` (greedy decoding).
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
    "common_prefix_length",
    "count_unparsable",
    "generate_texts",
    "listing",
    "next_token_logits",
    "require_chat_template",
    "shared_prefix_logits",
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


def next_token_logits(model: Any, tokenizer: Any, prompts: Sequence[str], batch_size: int = 16,
                      prefix_cache: bool = True) -> Any:  # fmt: skip
    """Logits (float32, CPU) of the token after each prompt, one row per prompt in ``prompts`` order.

    ``prefix_cache=True`` (the default) computes the same logits faster (:func:`shared_prefix_logits`): the
    prompts' common token prefix (system turn, instructions, query: everything before the first token that
    differs) goes through the model once and its KV cache is reused by every prompt, the prompts are batched
    shortest first (little padding) and only the last position reaches the LM head. ``prefix_cache=False`` is the
    reference it is tested against: each batch of ``batch_size`` prompts left-padded and run whole."""
    if prefix_cache:
        return shared_prefix_logits(model, tokenizer, prompts, batch_size)
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


def common_prefix_length(ids: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix every sequence shares, at most ``min(len) - 1`` (each keeps a token).

    >>> common_prefix_length([[1, 2, 3, 4], [1, 2, 5]]), common_prefix_length([[1, 2], [1, 2]])
    (2, 1)
    """
    if not ids:
        return 0
    limit = min(map(len, ids)) - 1
    first = ids[0]
    n = 0
    while n < limit and all(seq[n] == first[n] for seq in ids):
        n += 1
    return n


def shared_prefix_logits(model: Any, tokenizer: Any, prompts: Sequence[str], batch_size: int = 16) -> Any:
    """:func:`next_token_logits` with the shared prefix computed once (see there); equal to the reference path
    (``prefix_cache=False``) to float tolerance, same token ids.

    Every prompt is tokenized whole, so the split at the common prefix changes no token. The prefix's KV cache
    (one row) is expanded to each batch in a fresh ``DynamicCache`` (the cache grows by concatenation, so the
    prefix tensors are never written); the rest of each prompt is left-padded within its batch (prompts sorted
    by length) with explicit positions and an attention mask that hides the pads, and ``logits_to_keep=1`` runs
    the LM head on the last position only. With one prompt there is nothing to share: one plain forward pass."""
    import torch
    from transformers import DynamicCache

    ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    if not ids:
        return torch.empty(0)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    shared = common_prefix_length(ids) if len(ids) > 1 else 0
    device = model.device
    model.eval()
    out: list[Any] = [None] * len(ids)
    with torch.inference_mode():
        prefix: list[tuple[Any, Any]] = []
        if shared:
            cache = model(input_ids=torch.tensor([ids[0][:shared]], device=device), use_cache=True,
                          logits_to_keep=1).past_key_values  # fmt: skip
            prefix = [(layer[0], layer[1]) for layer in cache]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            rests = [ids[i][shared:] for i in batch]
            width = max(map(len, rests))
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.ones((len(batch), shared + width), dtype=torch.long)
            positions = torch.full((len(batch), width), shared, dtype=torch.long)
            for row, rest in enumerate(rests):
                pad = width - len(rest)
                input_ids[row, pad:] = torch.tensor(rest)
                mask[row, shared : shared + pad] = 0
                positions[row, pad:] = torch.arange(shared, shared + len(rest))
            kw: dict[str, Any] = {}
            if shared:
                kw["past_key_values"] = DynamicCache(
                    ddp_cache_data=[(k.expand(len(batch), -1, -1, -1), v.expand(len(batch), -1, -1, -1))
                                    for k, v in prefix], config=model.config)  # fmt: skip
            logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                           position_ids=positions.to(device), use_cache=bool(shared), logits_to_keep=1,
                           **kw).logits[:, -1, :].float().cpu()  # fmt: skip
            for row, i in enumerate(batch):
                out[i] = logits[row]
    return torch.stack(out)


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
