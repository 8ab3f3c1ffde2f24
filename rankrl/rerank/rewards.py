"""Reward functions and prompts of the three GRPO reranker recipes (Rank-R1, ERank, GroupRank), in TRL's shape.

Each reward is a plain function ``(completions, **kwargs) -> list[float]``; TRL passes every dataset column as a
keyword list aligned with ``completions`` (built by :mod:`rankrl.rerank.job`), plus hooks such as
``log_metric`` that are used when present. A completion that cannot be parsed gets the recipe's lowest reward
(0 for Rank-R1 and GroupRank; ``-neg_weight`` for ERank, whose listwise reward goes below 0) and is **counted**
in :data:`UNPARSABLE` (recipe -> count) and, under a trainer, logged as ``rerank/unparsable_<recipe>`` (the
share of unparsable completions of the call).

* **Rank-R1 (setwise)**: ``<think>...</think><answer>[i]</answer>``; reward 1 if the format matches and
  candidate ``[i]`` is relevant (its label is in the row's ``relevant`` list), else 0.
* **ERank (pointwise score, listwise reward)**: the completion is an integer 0-10. All ``M`` candidates x ``G``
  rollouts of a query are ranked together by score; see :func:`erank_listwise_reward` for the formula.
* **GroupRank (groupwise)**: ``[1] 7 [2] 3 ...`` scores a whole group; see :func:`grouprank_reward`.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from rankrl.rewards import completion_text

__all__ = [
    "GROUPRANK_WEIGHTS",
    "UNPARSABLE",
    "erank_listwise_reward",
    "erank_messages",
    "grouprank_messages",
    "grouprank_reward",
    "parse_group_scores",
    "parse_score",
    "parse_setwise",
    "rank_r1_messages",
    "rank_r1_reward",
    "require_chat_template",
]

#: recipe -> number of completions that could not be parsed (reward 0); reset with ``UNPARSABLE.clear()``.
UNPARSABLE: Counter = Counter()

#: ERank's top score. 9, not 10: expected-score inference reads the probability of single score tokens, and
#: many tokenizers (SmolLM2's among them) split "10" into "1" "0", which would read a top label as a 1.
ERANK_MAX_SCORE = 9

#: GroupRank reward weights: nDCG@10 of the induced ranking, recall at R, score-distribution alignment, format.
GROUPRANK_WEIGHTS: dict[str, float] = {"ndcg": 1.0, "recall": 0.5, "align": 0.5, "format": 0.1}

_SETWISE = re.compile(r"\s*<think>.*?</think>\s*<answer>\s*\[(\d+)\]\s*</answer>\s*", re.DOTALL)
_SCORE = re.compile(r"\s*(?:score\s*[:=]?\s*)?(\d{1,2})\s*\.?\s*", re.IGNORECASE)
_GROUP_ITEM = re.compile(r"\[(\d+)\]\s*[:=]?\s*(\d{1,2}(?:\.\d+)?)")


# ---------------------------------------------------------------------------------------------- prompts
def require_chat_template(tokenizer: Any, model_name: str) -> None:
    """Raise ``ValueError`` when ``tokenizer`` has no chat template (all three recipes prompt as a chat)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"model {model_name} has no chat template; pass --chat_template or use a chat model")


def _clip(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else text[:max_chars].rsplit(" ", 1)[0] + " ..."


def _listing(docs: Sequence[str], max_chars: int) -> str:
    return "\n".join(f"[{i}] {_clip(d, max_chars)}" for i, d in enumerate(docs, 1))


def rank_r1_messages(query: str, docs: Sequence[str], max_chars: int = 300) -> list[dict[str, str]]:
    """Rank-R1 setwise prompt: pick the most relevant of the labelled candidates, reasoning first.

    >>> rank_r1_messages("wing lift", ["a wing", "a fish"])[0]["content"].splitlines()[-2:]
    ['[1] a wing', '[2] a fish']
    """
    text = (f"Query: {query}\nWhich passage is the most relevant to the query? Think step by step inside "
            "<think></think>, then give only its label inside <answer></answer>, e.g. <answer>[1]</answer>.\n"
            f"{_listing(docs, max_chars)}")  # fmt: skip
    return [{"role": "user", "content": text}]


def erank_messages(query: str, doc: str, max_chars: int = 300, first_rank: int | None = None,
                   n_candidates: int | None = None) -> list[dict[str, str]]:  # fmt: skip
    """ERank pointwise prompt: answer with one integer relevance score from 0 to :data:`ERANK_MAX_SCORE`.

    With ``first_rank`` (the passage's 1-based position in the first-stage BM25 order, out of ``n_candidates``)
    the prompt also shows that rank, so the model can use the first-stage order as a signal; without it the
    prompt is the plain pointwise one.

    >>> erank_messages("wing lift", "a wing", first_rank=2, n_candidates=20)[0]["content"].splitlines()[:3]
    ['Query: wing lift', 'Passage: a wing', 'First-stage (BM25) rank: 2 of 20']
    >>> "rank" in erank_messages("wing lift", "a wing")[0]["content"]
    False
    """
    rank_line = ""
    if first_rank is not None or n_candidates is not None:
        if first_rank is None or n_candidates is None:
            raise ValueError("erank_messages needs both first_rank and n_candidates (the passage's 1-based "
                             f"first-stage position and the candidate count), got first_rank={first_rank}, "
                             f"n_candidates={n_candidates}; pass both or neither")  # fmt: skip
        if not 1 <= first_rank <= n_candidates:
            raise ValueError(f"first_rank must be in 1..n_candidates={n_candidates} (1-based), got {first_rank}; "
                             "pass the passage's position in the first-stage order starting at 1")  # fmt: skip
        rank_line = f"First-stage (BM25) rank: {first_rank} of {n_candidates}\n"
    text = (f"Query: {query}\nPassage: {_clip(doc, max_chars)}\n{rank_line}How relevant is the passage to the query? "
            f"Answer with one integer from 0 (irrelevant) to {ERANK_MAX_SCORE} (perfectly relevant).")  # fmt: skip
    return [{"role": "user", "content": text}]


def grouprank_messages(query: str, docs: Sequence[str], max_chars: int = 300) -> list[dict[str, str]]:
    """GroupRank prompt: score every candidate of the group 0-10 in one answer ``[1] s1 [2] s2 ...``."""
    text = (f"Query: {query}\nScore every passage's relevance to the query from 0 to 10. Answer in the form "
            f"'[1] 7 [2] 3 ...' covering all {len(docs)} passages.\n{_listing(docs, max_chars)}")  # fmt: skip
    return [{"role": "user", "content": text}]


# ---------------------------------------------------------------------------------------------- parsing
def parse_setwise(text: str) -> int | None:
    """The label ``i`` of a well-formed ``<think>...</think><answer>[i]</answer>`` completion, else None.

    >>> parse_setwise("<think>wing matches</think> <answer>[2]</answer>"), parse_setwise("[2]")
    (2, None)
    """
    m = _SETWISE.fullmatch(text)
    return int(m.group(1)) if m else None


def parse_score(text: str) -> int | None:
    """An integer score 0-10 when the completion is just that (optionally ``Score: 7`` / a trailing dot).

    >>> [parse_score(t) for t in ("7", " score: 10.", "11", "about 7", "")]
    [7, 10, None, None, None]
    """
    m = _SCORE.fullmatch(text)
    if not m or int(m.group(1)) > 10:
        return None
    return int(m.group(1))


def parse_group_scores(text: str, n: int) -> list[float] | None:
    """Scores of labels ``1..n`` from ``[1] 7 [2] 3 ...``; None unless every label appears once, scores <= 10.

    >>> parse_group_scores("[2] 3 [1] 9.5", 2), parse_group_scores("[1] 3", 2), parse_group_scores("[1] 3 [1] 4", 1)
    ([9.5, 3.0], None, None)
    """
    found = _GROUP_ITEM.findall(text)
    labels = [int(lab) for lab, _ in found]
    if len(found) != n or sorted(labels) != list(range(1, n + 1)):
        return None
    scores = dict(zip(labels, (float(s) for _, s in found), strict=True))
    if any(s > 10 for s in scores.values()):
        return None
    return [scores[i] for i in range(1, n + 1)]


def _count_bad(recipe: str, bad: int, total: int, log_metric: Callable | None) -> None:
    """Count unparsable completions (module counter) and log their share through TRL's ``log_metric`` hook."""
    UNPARSABLE[recipe] += bad
    if log_metric is not None and total:
        log_metric(f"rerank/unparsable_{recipe.replace('-', '_')}", bad / total)


# ---------------------------------------------------------------------------------------------- rewards
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
    _count_bad("rank-r1", sum(p is None for p in picks), len(picks), kwargs.get("log_metric"))
    return [1.0 if p is not None and p in set(rel) else 0.0 for p, rel in zip(picks, relevant, strict=True)]


def _discounts(scores: np.ndarray) -> np.ndarray:
    """Per item, the nDCG discount ``1/log2(1+p)`` at its 1-based position ``p`` when sorted by descending score;
    tied items share the mean discount of the positions they span (so the reward does not depend on row order)."""
    order = np.argsort(-scores, kind="stable")
    disc = 1.0 / np.log2(np.arange(2, len(scores) + 2))
    out = np.empty(len(scores))
    sorted_scores = scores[order]
    start = 0
    while start < len(scores):
        end = start
        while end + 1 < len(scores) and sorted_scores[end + 1] == sorted_scores[start]:
            end += 1
        out[order[start : end + 1]] = disc[start : end + 1].mean()
        start = end + 1
    return out


def erank_listwise_reward(
    completions: Sequence[Any],
    query_id: Sequence[str],
    doc_id: Sequence[str],
    gain: Sequence[int],
    n_docs: Sequence[int] | None = None,
    neg_weight: float = 0.5,
    **kwargs: Any,
) -> list[float]:
    """ERank stage 2: listwise-derived reward of pointwise scores, all of a query's ``M x G`` rows at once.

    Within each query, all ``M`` candidates x ``G`` rollouts are pooled and sorted by their parsed score
    (unparsable ones last); a completion at 1-based position ``p`` (ties share the mean discount of their
    positions) of a document with gain ``g`` gets

        reward = (g / g_max) / log2(1 + p)      if g > 0   (its nDCG-style contribution)
        reward = -neg_weight / log2(1 + p)      if g = 0   (pushes non-relevant documents down)

    where ``g_max`` is the largest gain among the query's candidates. An unparsable completion gets the floor
    ``-neg_weight`` (what a non-relevant document ranked first gets) and is counted: at 0 it would out-earn
    the mean reward, which is negative, and GRPO learned to stop answering (measured on SmolLM2 at
    temperature 1.5: 78% unparsable completions over 250 steps). The layout is asserted: every query's rows
    must be ``M`` distinct docs x the same ``G`` rows each (``M`` = ``n_docs`` when given), every query the
    same ``G``; otherwise ``ValueError``.

    >>> r = erank_listwise_reward(["9", "2", "5", "x"], query_id=["q"] * 4, doc_id=["a", "a", "b", "b"],
    ...                           gain=[2, 2, 0, 0], n_docs=[2] * 4)
    >>> [round(v, 4) for v in r]
    [1.0, 0.5, -0.3155, -0.5]
    """
    texts = [completion_text(c) for c in completions]
    n = len(texts)
    if not len(query_id) == len(doc_id) == len(gain) == n:
        raise ValueError("erank_listwise_reward needs query_id, doc_id and gain columns, one per completion")
    groups: dict[str, list[int]] = {}
    for i, q in enumerate(query_id):
        groups.setdefault(q, []).append(i)
    rollouts = set()
    for q, rows in groups.items():
        per_doc = Counter(doc_id[i] for i in rows)
        m_expected = n_docs[rows[0]] if n_docs is not None else len(per_doc)
        if len(per_doc) != m_expected or len(set(per_doc.values())) != 1:
            raise ValueError(f"listwise layout broken for query {q!r}: expected {m_expected} docs x G rollouts in "
                             f"one reward call, got doc counts {dict(per_doc)}; train with the query-grouped sampler "
                             "(ListwiseGRPOTrainer) and a round size that is a multiple of M*G")  # fmt: skip
        rollouts.add(next(iter(per_doc.values())))
    if len(rollouts) > 1:
        raise ValueError(f"listwise layout broken: queries have different rollout counts {sorted(rollouts)}")
    scores = [parse_score(t) for t in texts]
    _count_bad("erank", sum(s is None for s in scores), n, kwargs.get("log_metric"))
    rewards = [0.0] * n
    for rows in groups.values():
        s = np.array([-1.0 if scores[i] is None else float(scores[i]) for i in rows])
        disc = _discounts(s)
        g_max = max(gain[i] for i in rows)
        for j, i in enumerate(rows):
            if scores[i] is None:
                rewards[i] = -neg_weight
                continue
            rewards[i] = float((gain[i] / g_max if gain[i] > 0 else -neg_weight) * disc[j])
    return rewards


def _ndcg(gains_in_order: Sequence[float], all_gains: Sequence[float], k: int = 10) -> float:
    """nDCG@k with linear gains (as trec_eval / ir-measures) of a ranked list against its ideal reordering."""
    dcg = sum(g / math.log2(p + 2) for p, g in enumerate(gains_in_order[:k]))
    idcg = sum(g / math.log2(p + 2) for p, g in enumerate(sorted(all_gains, reverse=True)[:k]))
    return dcg / idcg if idcg > 0 else 0.0


def grouprank_reward(
    completions: Sequence[Any], gains: Sequence[Sequence[int]], weights: dict[str, float] | None = None, **kwargs: Any
) -> list[float]:
    """GroupRank: one completion scores a whole group; reward = weighted sum of four terms (weights
    :data:`GROUPRANK_WEIGHTS`: 1.0 nDCG, 0.5 recall, 0.5 alignment, 0.1 format):

    * ``ndcg``: nDCG@10 (linear gains) of the group ordered by descending predicted score (ties: prompt order);
    * ``recall``: share of the group's ``R`` relevant docs (gain > 0) ranked in the top ``R`` (0 if ``R`` = 0);
    * ``align``: ``1 - mean |score/10 - gain/g_max|`` (scores clipped to [0, 10]; all gains 0 -> gain term 0);
    * ``format``: 1 when every label ``[1]..[n]`` gets exactly one score.

    A malformed completion gets 0 (all four terms) and is counted.

    Args:
        completions: one completion per row.
        gains: per row, the gains of the group's candidates in prompt order.

    >>> grouprank_reward(["[1] 10 [2] 0", "[1] 0 [2] 10", "[1] 5"], gains=[[2, 0]] * 3)
    [2.1, 0.7309297536, 0.0]
    """
    w = weights or GROUPRANK_WEIGHTS
    parsed = [parse_group_scores(completion_text(c), len(g)) for c, g in zip(completions, gains, strict=True)]
    _count_bad("grouprank", sum(p is None for p in parsed), len(parsed), kwargs.get("log_metric"))
    out = []
    for scores, g in zip(parsed, gains, strict=True):
        if scores is None:
            out.append(0.0)
            continue
        s = np.clip(np.asarray(scores, dtype=float), 0.0, 10.0)
        gv = np.asarray(g, dtype=float)
        order = np.argsort(-s, kind="stable")
        n_rel = int((gv > 0).sum())
        recall = float((gv[order[:n_rel]] > 0).sum() / n_rel) if n_rel else 0.0
        g_norm = gv / gv.max() if gv.max() > 0 else np.zeros_like(gv)
        align = 1.0 - float(np.abs(s / 10.0 - g_norm).mean())
        total = w["ndcg"] * _ndcg(gv[order].tolist(), gv.tolist()) + w["recall"] * recall + w["align"] * align
        out.append(round(total + w["format"], 10))
    return out
