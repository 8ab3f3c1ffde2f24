"""ProRank (Li et al. 2025, arXiv 2506.03487): GRPO prompt warmup, then fine-grained score learning, for small LMs.

A small LM prompted zero-shot for a relevance score mostly answers in free text (SmolLM2 gave 100% unparsable
ERank completions), so a GRPO reward on the score has nothing to learn from. ProRank first teaches the *format*
with RL and only then learns fine-grained scores from the answer token's distribution. Both stages train one LoRA
adapter, from one ``rankrl rerank train --recipe prorank`` command:

* Rows: one per (query, doc), ``group_size`` docs per query drawn (seeded, kept in BM25 order) from its top
  ``depth`` candidates (default: the top ``group_size``); columns ``prompt`` (:func:`prorank_messages`: answer
  ``1`` relevant or ``0`` irrelevant), ``query_id``, ``doc_id``, ``gain``, ``label`` (1 when ``gain > 0``) and
  ``target`` (``gain / g_max``, ``g_max`` the largest gain in the collection's qrels).
* Stage 1, prompt warmup (``--max_steps`` GRPO steps, stock ``GRPOTrainer``, no SFT):
  :func:`prorank_warmup_reward` = format reward + correct binary judgment.
* Stage 2, fine-grained score learning (``--score_steps`` steps at ``--score_learning_rate``, :func:`score_learning`,
  run by job.py's ``Recipe.post_grpo`` hook on the GRPO trainer's model): no new layers; the two answer tokens'
  distribution at the answer's first position, ``p = softmax(logit("0"), logit("1"))``, is trained toward the graded
  label with a soft cross-entropy ``-(y log p1 + (1 - y) log p0)``, ``y = gain / g_max`` (Cranfield gains 0-4 ->
  0, .25, .5, .75, 1). The paper reads the score from the answer tokens' logits in the same way; the soft-label
  loss is this recipe's choice (the stored material did not give the paper's exact stage-2 loss).
* Inference (``rerank eval``): :func:`relevance_probabilities`, ``p("1")`` of that two-token softmax, one
  forward pass per candidate with the query's shared prefix computed once (no generation, nothing to parse).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rankrl.rerank.collections import Collection
from rankrl.rerank.evaluate import Scorer
from rankrl.rerank.prompts import chat_prompts, clip_text, count_unparsable, next_token_logits
from rankrl.rerank.recipes.base import Recipe, RecipeOptions
from rankrl.rewards import completion_text

__all__ = [
    "FORMAT_REWARD",
    "RECIPE",
    "answer_tokens",
    "parse_answer",
    "prorank_messages",
    "prorank_warmup_reward",
    "relevance_probabilities",
    "rows",
    "score_learning",
]

#: stage-1 reward of any well-formed answer (right or wrong); a correct judgment adds 1, an unparsable answer gets 0
FORMAT_REWARD = 0.2

_ANSWER = re.compile(r"\s*(?:answer\s*[:=]?\s*)?([01])\s*\.?\s*", re.IGNORECASE)


def prorank_messages(query: str, doc: str, max_chars: int = 300) -> list[dict[str, str]]:
    """ProRank's pointwise prompt: a binary relevance judgment, one digit (the answer set {"0", "1"}).

    >>> prorank_messages("wing lift", "a wing")[0]["content"].splitlines()[:2]
    ['Query: wing lift', 'Passage: a wing']
    """
    text = (f"Query: {query}\nPassage: {clip_text(doc, max_chars)}\nIs the passage relevant to the query? "
            "Answer with one digit only: 1 (relevant) or 0 (irrelevant).")  # fmt: skip
    return [{"role": "user", "content": text}]


def parse_answer(text: str) -> int | None:
    """0 or 1 when the completion is just that digit (optionally ``Answer: 1`` / a trailing dot), else None.

    >>> [parse_answer(t) for t in ("1", " answer: 0.", "10", "Yes", "1 because", "")]
    [1, 0, None, None, None, None]
    """
    m = _ANSWER.fullmatch(text)
    return int(m.group(1)) if m else None


def prorank_warmup_reward(completions: Sequence[Any], label: Sequence[int], format_reward: float = FORMAT_REWARD,
                          **kwargs: Any) -> list[float]:  # fmt: skip
    """ProRank stage 1 (prompt warmup): ``format_reward`` for a well-formed answer (:func:`parse_answer`) plus 1 when
    it equals the binary ``label`` (1: the doc is judged relevant); an unparsable completion gets 0 and is counted
    (``rerank/unparsable_prorank``). Any answer, even a wrong one, out-earns free text, so GRPO first learns the
    format, then the judgment.

    >>> prorank_warmup_reward(["1", " 0.", "Yes, it is relevant", "0"], label=[1, 1, 1, 0])
    [1.2, 0.2, 0.0, 1.2]
    """
    texts = [completion_text(c) for c in completions]
    if len(label) != len(texts):
        raise ValueError(f"prorank_warmup_reward needs one label per completion, got {len(label)} for {len(texts)}")
    answers = [parse_answer(t) for t in texts]
    count_unparsable("prorank", sum(a is None for a in answers), len(texts), kwargs.get("log_metric"))
    return [0.0 if a is None else format_reward + float(a == int(y)) for a, y in zip(answers, label, strict=True)]


def _g_max(coll: Collection) -> float:
    return float(max((g for j in coll.qrels.values() for g in j.values()), default=1) or 1)


def rows(coll: Collection, qid: str, docs: list[str], rng: random.Random, opts: RecipeOptions) -> list[dict]:
    """``group_size`` rows (fewer when the query has fewer candidates), one per doc, drawn from the top ``depth``
    by ``rng`` and kept in BM25 order; ``label`` = gain > 0, ``target`` = gain / g_max (clipped to [0, 1])."""
    judged = coll.qrels.get(qid, {})
    picked = docs
    if len(docs) > opts.group_size:
        picked = [docs[i] for i in sorted(rng.sample(range(len(docs)), opts.group_size))]
    g_max = _g_max(coll)
    out = []
    for d in picked:
        gain = judged.get(d, 0)
        out.append({"prompt": prorank_messages(coll.queries[qid], coll.docs[d], opts.max_chars), "query_id": qid,
                    "doc_id": d, "gain": gain, "label": int(gain > 0),
                    "target": min(max(gain / g_max, 0.0), 1.0)})  # fmt: skip
    return out


def answer_tokens(tokenizer: Any) -> list[int]:
    """The token ids of "0" and "1" (each must be one token: the score is read at one position)."""
    ids = []
    for s in ("0", "1"):
        tok = tokenizer.encode(s, add_special_tokens=False)
        if len(tok) != 1:
            raise ValueError(f"prorank needs {s!r} to be a single token, the tokenizer gives {tok}")
        ids.append(tok[0])
    return ids


def relevance_probabilities(model: Any, tokenizer: Any, query: str, docs: Sequence[str], max_chars: int = 300,
                            batch_size: int = 16, prefix_cache: bool = True) -> list[float]:  # fmt: skip
    """ProRank's score of each doc: ``p("1")`` of the softmax over the answer tokens {"0", "1"} at the answer's first
    position (the expected score of the binary answer), in [0, 1]. All of a query's candidates go through
    :func:`~rankrl.rerank.prompts.next_token_logits` together (``prefix_cache``: the shared prefix once)."""
    import torch

    ids = answer_tokens(tokenizer)
    messages = [prorank_messages(query, d, max_chars) for d in docs]
    logits = next_token_logits(model, tokenizer, chat_prompts(tokenizer, messages), batch_size, prefix_cache)
    return torch.softmax(logits[:, ids], -1)[:, 1].tolist()


def scorer(model: Any, tokenizer: Any, opts: RecipeOptions) -> Scorer:
    """:func:`relevance_probabilities` of each candidate."""
    return lambda q, docs: relevance_probabilities(model, tokenizer, q, docs, opts.max_chars,
                                                   prefix_cache=opts.prefix_cache)  # fmt: skip


# ---------------------------------------------------------------------------------------------- stage 2
def score_learning(model: Any, tokenizer: Any, rows: Any, steps: int, learning_rate: float, batch_size: int = 8,
                   seed: int = 0, stop: Any = None, autocast: Any = None, log: Any = None) -> list[float]:  # fmt: skip
    """ProRank stage 2: ``steps`` AdamW steps on ``model``'s trainable parameters (its LoRA adapter) minimising the
    soft cross-entropy between the answer tokens' distribution ``softmax(logit("0"), logit("1"))`` after each
    prompt and ``(1 - target, target)``; returns the loss of every step.

    ``rows``: the training rows (``prompt``, ``target``), visited in seeded shuffled order, ``batch_size`` per step,
    reshuffled when exhausted. ``stop`` (truthy: stop after the current step), ``autocast`` (a context manager
    factory, e.g. ``accelerator.autocast``) and ``log(step, loss)`` are optional. Every process of a multi-process
    run computes the same batches on the same weights, so their copies stay equal without gradient syncing."""
    import contextlib

    import torch

    ids = answer_tokens(tokenizer)
    prompts = chat_prompts(tokenizer, rows["prompt"])
    targets = torch.tensor([float(t) for t in rows["target"]])
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("score_learning: the model has no trainable parameters (expected a LoRA adapter)")
    opt = torch.optim.AdamW(params, lr=learning_rate)
    device = next(model.parameters()).device
    rng = random.Random(seed)
    order: list[int] = []
    losses: list[float] = []
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    model.train()
    try:
        for step in range(steps):
            if stop:
                break
            if len(order) < batch_size:
                fresh = list(range(len(prompts)))
                rng.shuffle(fresh)
                order += fresh
            batch, order = order[:batch_size], order[batch_size:]
            enc = tokenizer([prompts[i] for i in batch], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(device)  # fmt: skip
            with autocast() if autocast is not None else contextlib.nullcontext():
                logits = model(**enc, use_cache=False).logits[:, -1, :]
            logp = torch.log_softmax(logits.float()[:, ids], -1)
            y = targets[batch].to(device)
            loss = -(y * logp[:, 1] + (1 - y) * logp[:, 0]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if log is not None:
                log(step + 1, losses[-1])
    finally:
        tokenizer.padding_side = side
        opt.zero_grad(set_to_none=True)
        model.eval()
    return losses


def post_grpo(trainer: Any, train_rows: Any, args: Any, stop: Any) -> None:
    """job.py's hook after GRPO (the prompt warmup): :func:`score_learning` on the GRPO trainer's model for
    ``args.score_steps`` steps at ``args.score_learning_rate`` (batch: ``per_device_train_batch_size``), each step's
    loss appended to ``<output_dir>/metrics.jsonl`` as ``score/loss`` at step ``GRPO steps + i``."""
    if not args.score_steps:
        return
    cfg = trainer.args
    metrics = Path(cfg.output_dir) / "metrics.jsonl"
    base = trainer.state.global_step
    main = trainer.accelerator.is_main_process

    def log(step: int, loss: float) -> None:
        if main:
            with metrics.open("a") as f:
                f.write(json.dumps({"step": base + step, "score/loss": loss, "score/step": step}) + "\n")

    losses = score_learning(trainer.model, trainer.processing_class, train_rows, args.score_steps,
                            args.score_learning_rate, cfg.per_device_train_batch_size, cfg.seed, stop,
                            trainer.accelerator.autocast, log)  # fmt: skip
    if main and losses:
        print(f"prorank score learning: {len(losses)} steps, loss {losses[0]:.4f} -> {losses[-1]:.4f}")


RECIPE = Recipe(name="prorank", candidates=lambda opts: opts.depth, rows=rows, reward=prorank_warmup_reward,
                scorer=scorer, post_grpo=post_grpo, features=frozenset({"depth"}),
                skip_note="no rows")  # fmt: skip
