"""GroupRank (groupwise): one completion ``[1] 7 [2] 3 ...`` scores a whole group of candidates 0-10.

See :func:`grouprank_reward` for the reward (nDCG@10, recall, score alignment and format terms).

* Rows: one per query, its top ``group_size`` BM25 candidates scored jointly; columns ``prompt``, ``query_id``,
  ``doc_ids``, ``gains``. Stock ``GRPOTrainer``.
* Inference: the candidates in consecutive groups of ``group_size``, each scored by one greedy completion
  (unparsable: all 0).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from rankrl.rerank.collections import Collection
from rankrl.rerank.evaluate import Scorer
from rankrl.rerank.metrics import ndcg
from rankrl.rerank.prompts import ParseCount, count_unparsable, generate_texts, listing
from rankrl.rerank.recipes.base import Recipe, RecipeOptions
from rankrl.rewards import completion_text

__all__ = ["GROUPRANK_WEIGHTS", "RECIPE", "grouprank_messages", "grouprank_reward", "parse_group_scores"]


#: GroupRank reward weights: nDCG@10 of the induced ranking, recall at R, score-distribution alignment, format.
GROUPRANK_WEIGHTS: dict[str, float] = {"ndcg": 1.0, "recall": 0.5, "align": 0.5, "format": 0.1}

_GROUP_ITEM = re.compile(r"\[(\d+)\]\s*[:=]?\s*(\d{1,2}(?:\.\d+)?)")


def grouprank_messages(query: str, docs: Sequence[str], max_chars: int = 300) -> list[dict[str, str]]:
    """GroupRank prompt: score every candidate of the group 0-10 in one answer ``[1] s1 [2] s2 ...``."""
    text = (f"Query: {query}\nScore every passage's relevance to the query from 0 to 10. Answer in the form "
            f"'[1] 7 [2] 3 ...' covering all {len(docs)} passages.\n{listing(docs, max_chars)}")  # fmt: skip
    return [{"role": "user", "content": text}]


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
    count_unparsable("grouprank", sum(p is None for p in parsed), len(parsed), kwargs.get("log_metric"))
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
        total = w["ndcg"] * ndcg(gv[order].tolist(), gv.tolist()) + w["recall"] * recall + w["align"] * align
        out.append(round(total + w["format"], 10))
    return out


def rows(coll: Collection, qid: str, docs: list[str], rng: random.Random, opts: RecipeOptions) -> list[dict]:
    """One row: the query's top ``group_size`` candidates in BM25 order and their gains."""
    judged = coll.qrels.get(qid, {})
    return [{"prompt": grouprank_messages(coll.queries[qid], [coll.docs[d] for d in docs], opts.max_chars),
             "query_id": qid, "doc_ids": docs, "gains": [judged.get(d, 0) for d in docs]}]  # fmt: skip


def scorer(model: Any, tokenizer: Any, opts: RecipeOptions) -> Scorer:
    """Scores of consecutive groups of ``opts.group_size`` candidates, one greedy completion per group; a completion
    that does not parse scores its group 0 (BM25 order) and is counted in the scorer's ``parse_count``."""
    count = ParseCount(what="grouprank completions", fallback="score 0 for its group (BM25 order)")

    def score(q, docs):
        groups = [docs[i : i + opts.group_size] for i in range(0, len(docs), opts.group_size)]
        texts = generate_texts(model, tokenizer, [grouprank_messages(q, g, opts.max_chars) for g in groups],
                               opts.max_new_tokens)  # fmt: skip
        out: list[float] = []
        for g, t in zip(groups, texts, strict=True):
            parsed = parse_group_scores(t, len(g))
            count.add(parsed is None, 1)
            out += parsed or [0.0] * len(g)
        return out

    score.parse_count = count
    return score


RECIPE = Recipe(name="grouprank", candidates=lambda opts: opts.group_size, rows=rows, reward=grouprank_reward,
                scorer=scorer)
