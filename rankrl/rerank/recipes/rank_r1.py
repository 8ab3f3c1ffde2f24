"""Rank-R1 (setwise): pick the most relevant of ``window`` labelled candidates, reasoning first.

Completion ``<think>...</think><answer>[i]</answer>``; reward 1 if the format matches and candidate ``[i]`` is
relevant (its label is in the row's ``relevant`` list), else 0 (malformed: counted in
:data:`rankrl.rerank.prompts.UNPARSABLE`).

* Rows: one per query, its ``window`` BM25 candidates in a seeded shuffled order (so the answer is not always
  ``[1]``); columns ``prompt``, ``query_id``, ``doc_ids``, ``relevant``. Stock ``GRPOTrainer``.
* Inference: :func:`setwise_rank`, greedy top-10 selection by a tournament tree of windows, each window decided
  by generating (``setwise_pick="generate"``) or by the most probable label (``"likelihood"``,
  :func:`setwise_label_picks`).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import Any

from rankrl.rerank.collections import Collection
from rankrl.rerank.evaluate import Scorer
from rankrl.rerank.prompts import (
    ParseCount,
    chat_prompts,
    count_unparsable,
    generate_texts,
    listing,
    next_token_logits,
)
from rankrl.rerank.recipes.base import Recipe, RecipeOptions
from rankrl.rewards import completion_text

__all__ = [
    "RECIPE",
    "SETWISE_PICKS",
    "SETWISE_PREFILL",
    "parse_setwise",
    "rank_r1_messages",
    "rank_r1_reward",
    "setwise_label_picks",
    "setwise_rank",
]

_SETWISE = re.compile(r"\s*<think>.*?</think>\s*<answer>\s*\[(\d+)\]\s*</answer>\s*", re.DOTALL)

#: how setwise inference picks a window's winner (see :func:`scorer`)
SETWISE_PICKS = ("generate", "likelihood")
#: the assistant turn's opening for setwise likelihood picks: empty reasoning, the answer's label opened
SETWISE_PREFILL = "<think></think>\n<answer>["


def rank_r1_messages(query: str, docs: Sequence[str], max_chars: int = 300) -> list[dict[str, str]]:
    """Rank-R1 setwise prompt: pick the most relevant of the labelled candidates, reasoning first.

    >>> rank_r1_messages("wing lift", ["a wing", "a fish"])[0]["content"].splitlines()[-2:]
    ['[1] a wing', '[2] a fish']
    """
    text = (f"Query: {query}\nWhich passage is the most relevant to the query? Think step by step inside "
            "<think></think>, then give only its label inside <answer></answer>, e.g. <answer>[1]</answer>.\n"
            f"{listing(docs, max_chars)}")  # fmt: skip
    return [{"role": "user", "content": text}]


def parse_setwise(text: str) -> int | None:
    """The label ``i`` of a well-formed ``<think>...</think><answer>[i]</answer>`` completion, else None.

    >>> parse_setwise("<think>wing matches</think> <answer>[2]</answer>"), parse_setwise("[2]")
    (2, None)
    """
    m = _SETWISE.fullmatch(text)
    return int(m.group(1)) if m else None


def rank_r1_reward(completions: Sequence[Any], relevant: Sequence[Sequence[int]], **kwargs: Any) -> list[float]:
    """Rank-R1: 1.0 when the format matches and the answered label is relevant, else 0.0 (malformed: counted).

    Args:
        completions: one completion per row.
        relevant: per row, the labels (1-based, as in the prompt) of the candidates with gain > 0.
        **kwargs: other columns; ``log_metric`` (TRL hook) logs the unparsable share.

    >>> ok = "<think>the first one talks about wings</think><answer>[1]</answer>"
    >>> rank_r1_reward([ok, ok.replace("[1]", "[3]"), "[1]"], relevant=[[1, 2], [1, 2], [1]])
    [1.0, 0.0, 0.0]
    """
    picks = [parse_setwise(completion_text(c)) for c in completions]
    count_unparsable("rank-r1", sum(p is None for p in picks), len(picks), kwargs.get("log_metric"))
    return [1.0 if p is not None and p in set(rel) else 0.0 for p, rel in zip(picks, relevant, strict=True)]


def rows(coll: Collection, qid: str, docs: list[str], rng: random.Random, opts: RecipeOptions) -> list[dict]:
    """One row: the query's ``window`` candidates shuffled by ``rng``, and the labels of the relevant ones."""
    judged = coll.qrels.get(qid, {})
    rng.shuffle(docs)
    return [{"prompt": rank_r1_messages(coll.queries[qid], [coll.docs[d] for d in docs], opts.max_chars),
             "query_id": qid, "doc_ids": docs,
             "relevant": [i for i, d in enumerate(docs, 1) if judged.get(d, 0) > 0]}]  # fmt: skip


# ---------------------------------------------------------------------------------------------- inference
def setwise_label_picks(model: Any, tokenizer: Any, query: str, windows: Sequence[Sequence[str]],
                        max_chars: int = 300, prefix_cache: bool = True) -> list[int]:  # fmt: skip
    """Setwise picks by likelihood (the generation-free Setwise prompting of Zhuang et al., SIGIR 2024) in Rank-R1's
    format: after the Rank-R1 prompt and the prefilled ``<think></think>\\n<answer>[``, the pick is the window's
    label (``1`` .. ``len(window)``) with the most probable next token. One forward pass per window and no decoding
    (SmolLM2 on 2 CPU threads, top-10 of 20: ~19 s per query instead of ~108 s), at the price of not reasoning.
    The windows of one call share the prompt up to the listing, computed once with ``prefix_cache`` (default;
    ``False``: the reference path, same picks)."""
    labels = [tokenizer.encode(str(i), add_special_tokens=False) for i in range(1, max(map(len, windows)) + 1)]
    if any(len(t) != 1 for t in labels):
        raise ValueError(f"setwise likelihood picks need single-token labels; this tokenizer splits some of "
                         f"1..{len(labels)}: use a smaller --window or --setwise_pick generate")  # fmt: skip
    prompts = [p + SETWISE_PREFILL for p in chat_prompts(tokenizer, [rank_r1_messages(query, w, max_chars)
                                                                      for w in windows])]  # fmt: skip
    logits = next_token_logits(model, tokenizer, prompts, prefix_cache=prefix_cache)
    return [int(logits[i, [t[0] for t in labels[: len(w)]]].argmax()) for i, w in enumerate(windows)]


def setwise_rank(pick, docs: Sequence[str], window: int = 4, top: int = 10) -> list[float]:
    """Rank-R1 setwise sort: greedy top-``top`` selection by a tournament tree. The candidates sit in fixed leaf
    windows of ``window`` (first-stage order); ``pick(list_of_windows) -> winner index per window`` (fallback 0)
    decides each window, winners play on in windows of ``window`` until one is left. After a selection only the
    windows whose members changed are asked again (picks are memoised by window), so a top-10 of 20 costs about
    5 + 9 x 3 window prompts instead of 10 x 8. Returns scores (higher = earlier); the unselected keep first-stage
    order.

    >>> setwise_rank(lambda ws: [max(range(len(w)), key=w.__getitem__) for w in ws], ["1", "5", "3", "4"], 2, 2)
    [2.0, 8.0, 1.0, 7.0]
    """
    memo: dict[tuple[int, ...], int] = {}

    def winners(groups: list[tuple[int, ...]]) -> list[int]:
        todo = list(dict.fromkeys(g for g in groups if len(g) > 1 and g not in memo))
        if todo:
            for g, p in zip(todo, pick([[docs[j] for j in g] for g in todo]), strict=True):
                memo[g] = g[p] if 0 <= p < len(g) else g[0]
        return [memo[g] if len(g) > 1 else g[0] for g in groups]

    leaves = [tuple(range(i, min(i + window, len(docs)))) for i in range(0, len(docs), window)]
    scores = [0.0] * len(docs)
    for rank in range(min(top, len(docs))):
        alive = winners([g for g in leaves if g])
        while len(alive) > 1:
            alive = winners([tuple(alive[i : i + window]) for i in range(0, len(alive), window)])
        scores[alive[0]] = float(2 * len(docs) - rank)
        leaves = [tuple(j for j in g if j != alive[0]) for g in leaves]
    remaining = [j for g in leaves for j in g]
    for pos, j in enumerate(remaining):
        scores[j] = float(len(remaining) - pos)
    return scores


def scorer(model: Any, tokenizer: Any, opts: RecipeOptions) -> Scorer:
    """Setwise tournament over windows of ``opts.window``, each decided as ``opts.setwise_pick`` says. A generated
    answer that does not parse picks the window's first candidate and is counted in the scorer's ``parse_count``."""
    count = ParseCount(what="setwise completions", fallback="its window's first candidate (BM25 order)")

    def pick_fn(q):
        if opts.setwise_pick == "likelihood":
            return lambda windows: setwise_label_picks(model, tokenizer, q, windows, opts.max_chars,
                                                      opts.prefix_cache)  # fmt: skip

        def pick(windows):
            texts = generate_texts(model, tokenizer, [rank_r1_messages(q, w, opts.max_chars) for w in windows],
                                   opts.max_new_tokens)  # fmt: skip
            picks = [parse_setwise(t) for t in texts]
            count.add(sum(p is None for p in picks), len(picks))
            return [(p or 1) - 1 for p in picks]

        return pick

    def score(q: str, docs: list[str]) -> list[float]:
        return setwise_rank(pick_fn(q), docs, opts.window)

    if opts.setwise_pick == "generate":  # likelihood picks parse nothing
        score.parse_count = count
    return score


RECIPE = Recipe(name="rank-r1", candidates=lambda opts: opts.window, rows=rows, reward=rank_r1_reward, scorer=scorer,
                features=frozenset({"setwise_pick"}))  # fmt: skip
