"""ERank (pointwise score, listwise reward): SFT on graded labels, then GRPO whose reward ranks a whole query.

The completion is an integer 0-:data:`ERANK_MAX_SCORE`. All ``M`` candidates x ``G`` rollouts of a query are
ranked together by score; see :func:`erank_listwise_reward` for the formula.

* Rows: one per (query, doc), a fixed ``M = group_size`` docs per query (queries with fewer candidates are
  skipped), columns ``prompt``, ``query_id``, ``doc_id``, ``gain``, ``n_docs``. With ``depth`` the group is drawn
  at random (seeded, kept in BM25 order) from the top ``depth``; with ``first_stage_rank`` every prompt also shows
  the doc's BM25 rank (``First-stage (BM25) rank: 3 of 20``), in training and at inference alike.
* Stage 1 SFT (``SFTTrainer``, :func:`erank_sft_dataset`) on ``score = round(ERANK_MAX_SCORE * gain / g_max)``
  (``ERANK_MAX_SCORE`` = 9: every score is one token) with ``g_max`` the largest gain in the collection's qrels
  (Cranfield gains 0-4 -> scores 0, 2, 4, 7, 9); stage 2 GRPO with :class:`ListwiseGRPOTrainer` so each reward
  call holds all ``M x G`` rows of a query.
* Inference: :func:`expected_scores`.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from rankrl.rerank.collections import Collection
from rankrl.rerank.evaluate import Scorer
from rankrl.rerank.prompts import chat_prompts, clip_text, count_unparsable, next_token_logits
from rankrl.rerank.recipes.base import Recipe, RecipeOptions
from rankrl.rewards import completion_text

__all__ = [
    "ERANK_MAX_SCORE",
    "RECIPE",
    "ListwiseGRPOTrainer",  # noqa: F822 (built lazily by the module __getattr__: importing trl costs seconds)
    "QueryGroupedSampler",
    "erank_listwise_reward",
    "erank_messages",
    "erank_sft_dataset",
    "expected_scores",
    "listwise_grpo_trainer",
    "parse_score",
    "score_tokens",
]


#: ERank's top score. 9, not 10: expected-score inference reads the probability of single score tokens, and
#: many tokenizers (SmolLM2's among them) split "10" into "1" "0", which would read a top label as a 1.
ERANK_MAX_SCORE = 9

_SCORE = re.compile(r"\s*(?:score\s*[:=]?\s*)?(\d{1,2})\s*\.?\s*", re.IGNORECASE)


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
    text = (f"Query: {query}\nPassage: {clip_text(doc, max_chars)}\n{rank_line}How relevant is the passage to the "
            f"query? Answer with one integer from 0 (irrelevant) to {ERANK_MAX_SCORE} "
            "(perfectly relevant).")  # fmt: skip
    return [{"role": "user", "content": text}]


def parse_score(text: str) -> int | None:
    """An integer score 0-10 when the completion is just that (optionally ``Score: 7`` / a trailing dot).

    >>> [parse_score(t) for t in ("7", " score: 10.", "11", "about 7", "")]
    [7, 10, None, None, None]
    """
    m = _SCORE.fullmatch(text)
    if not m or int(m.group(1)) > 10:
        return None
    return int(m.group(1))


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
    count_unparsable("erank", sum(s is None for s in scores), n, kwargs.get("log_metric"))
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


def rows(coll: Collection, qid: str, docs: list[str], rng: random.Random, opts: RecipeOptions) -> list[dict]:
    """``group_size`` rows, one per doc, drawn from the top ``depth`` by ``rng`` (kept in BM25 order); [] when the
    query has fewer than ``group_size`` candidates (a fixed M per query)."""
    if len(docs) < opts.group_size:
        return []
    judged = coll.qrels.get(qid, {})
    positions = range(1, len(docs) + 1)  # docs: BM25 order, best first
    if len(docs) > opts.group_size:
        positions = sorted(rng.sample(list(positions), opts.group_size))
    out = []
    for pos in positions:
        d = docs[pos - 1]
        shown = {"first_rank": pos, "n_candidates": len(docs)} if opts.first_stage_rank else {}
        out.append({"prompt": erank_messages(coll.queries[qid], coll.docs[d], opts.max_chars, **shown),
                    "query_id": qid, "doc_id": d, "gain": judged.get(d, 0), "n_docs": opts.group_size})  # fmt: skip
    return out


def erank_sft_dataset(coll: Collection, rows: Any) -> Any:
    """ERank stage-1 rows: prompt -> ``round(ERANK_MAX_SCORE * gain / g_max)`` as the assistant's answer (g_max: the
    largest gain in the collection's qrels). Every label is one token, so :func:`expected_scores` can read it."""
    from datasets import Dataset

    g_max = max((g for j in coll.qrels.values() for g in j.values()), default=1) or 1
    labels = [str(round(ERANK_MAX_SCORE * g / g_max)) for g in rows["gain"]]
    completions = [[{"role": "assistant", "content": label}] for label in labels]
    return Dataset.from_dict({"prompt": rows["prompt"], "completion": completions})


# ---------------------------------------------------------------------------------------------- listwise GRPO
class QueryGroupedSampler(Sampler):
    """Yield whole queries: each query's ``M`` rows, each ``G`` times in a row, ``queries_per_round`` queries per
    generation round, the round repeated ``repeat_count`` times (TRL's ``RepeatSampler`` contract). Queries are
    permuted by a generator seeded identically on every rank."""

    def __init__(self, query_ids: Sequence[str], num_generations: int, queries_per_round: int,
                 repeat_count: int = 1, shuffle: bool = True, seed: int = 0) -> None:  # fmt: skip
        self.groups: dict[str, list[int]] = {}
        for i, q in enumerate(query_ids):
            self.groups.setdefault(q, []).append(i)
        sizes = {len(v) for v in self.groups.values()}
        if len(sizes) != 1:
            raise ValueError(f"every query needs the same number of rows M, got sizes {sorted(sizes)}")
        self.m = sizes.pop()
        self.g, self.per_round, self.repeat = num_generations, queries_per_round, repeat_count
        self.shuffle, self.seed, self._epoch = shuffle, seed, 0

    def __iter__(self):
        import torch

        qs = list(self.groups)
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed + self._epoch)
            qs = [qs[i] for i in torch.randperm(len(qs), generator=gen).tolist()]
        self._epoch += 1
        for start in range(0, len(qs) - self.per_round + 1, self.per_round):
            for _ in range(self.repeat):
                for q in qs[start : start + self.per_round]:
                    for i in self.groups[q]:
                        yield from [i] * self.g

    def __len__(self) -> int:
        return (len(self.groups) // self.per_round) * self.per_round * self.m * self.g * self.repeat


@lru_cache(maxsize=1)
def listwise_grpo_trainer() -> type:
    """The :class:`ListwiseGRPOTrainer` class (built once, on demand: importing trl costs seconds)."""
    from trl import GRPOTrainer

    class ListwiseGRPOTrainer(GRPOTrainer):
        """Stock GRPO except the train sampler: :class:`QueryGroupedSampler`, so one reward call holds all
        ``M x G`` rows of each of its queries (needs ``per_device_train_batch_size * steps_per_generation``
        to be a multiple of ``M * G``; checked here)."""

        def _get_train_sampler(self, dataset=None):
            dataset = dataset if dataset is not None else self.train_dataset
            qids = dataset["query_id"]
            m = len(qids) // len(set(qids))
            local = self.args.per_device_train_batch_size * self.args.steps_per_generation
            if local % (m * self.num_generations):
                raise ValueError(f"per_device_train_batch_size x steps_per_generation = {local} must be a multiple "
                                 f"of M x G = {m} x {self.num_generations} for listwise rewards")  # fmt: skip
            return QueryGroupedSampler(qids, self.num_generations,
                                       self.args.generation_batch_size // (m * self.num_generations),
                                       self.num_iterations * self.args.steps_per_generation,
                                       self.shuffle_dataset, self.args.seed)  # fmt: skip

    return ListwiseGRPOTrainer


def __getattr__(name: str) -> Any:  # lazy: importing trl costs seconds
    if name == "ListwiseGRPOTrainer":
        return listwise_grpo_trainer()
    raise AttributeError(name)


# ---------------------------------------------------------------------------------------------- inference
def score_tokens(tokenizer: Any) -> tuple[list[int], list[int]]:
    """(token ids, score values) of the scores that are single tokens: "0".."10" if "10" is one token, else
    "0".."9" only (a multi-token "10" has no single-position probability)."""
    ids, values = [], []
    for s in range(11):
        tok = tokenizer.encode(str(s), add_special_tokens=False)
        if len(tok) == 1:
            ids.append(tok[0])
            values.append(s)
    if len(values) < 2:
        raise ValueError("the tokenizer has fewer than two single-token scores 0..10")
    return ids, values


def expected_scores(model: Any, tokenizer: Any, query: str, docs: Sequence[str], max_chars: int = 300,
                    batch_size: int = 16, first_stage_rank: bool = False,
                    prefix_cache: bool = True) -> list[float]:  # fmt: skip
    """ERank ranking scores: ``sum_s s * p(s)`` with ``p`` the softmax over the single-token scores (see
    :func:`score_tokens`) at the answer's first position; each in [0, 10].

    All of a query's candidates go through :func:`~rankrl.rerank.prompts.next_token_logits` together, so with
    ``prefix_cache`` (default) the part of the prompt before the passage (system turn, query) is computed once;
    ``prefix_cache=False`` is the reference path (same scores to float tolerance, slower).

    ``first_stage_rank``: ``docs`` are taken to be in first-stage order (as :func:`rankrl.rerank.evaluate.rerank_run`
    passes them: descending BM25 score) and ``docs[i]``'s prompt shows rank ``i + 1`` of ``len(docs)``."""
    import torch

    ids, values = score_tokens(tokenizer)
    vals = torch.tensor(values, dtype=torch.float32)
    n = len(docs)
    messages = [erank_messages(query, d, max_chars, first_rank=i + 1 if first_stage_rank else None,
                               n_candidates=n if first_stage_rank else None) for i, d in enumerate(docs)]  # fmt: skip
    p = torch.softmax(next_token_logits(model, tokenizer, chat_prompts(tokenizer, messages), batch_size,
                                        prefix_cache)[:, ids], -1)  # fmt: skip
    return (p @ vals).tolist()


def scorer(model: Any, tokenizer: Any, opts: RecipeOptions) -> Scorer:
    """:func:`expected_scores` of each candidate; with ``first_stage_rank`` the docs' order is taken as BM25's."""
    return lambda q, docs: expected_scores(model, tokenizer, q, docs, opts.max_chars,
                                           first_stage_rank=opts.first_stage_rank,
                                           prefix_cache=opts.prefix_cache)  # fmt: skip


RECIPE = Recipe(name="erank", candidates=lambda opts: opts.depth, rows=rows, reward=erank_listwise_reward,
                scorer=scorer, trainer=listwise_grpo_trainer, sft_dataset=erank_sft_dataset,
                features=frozenset({"depth", "first_stage_rank"}),
                skip_note="fewer than {group_size} candidates (erank needs a fixed M per query)")  # fmt: skip
