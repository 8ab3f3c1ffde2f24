"""How every reranker is evaluated: rerank each query's BM25 top-``k`` with a scorer, score the run.

A reranker (:data:`Scorer`) sees a query and its first-stage candidates (BM25 top ``k``, best first) and returns
one score per candidate; higher scores rank earlier, ties keep the BM25 order (:func:`rerank`). The reranked
list is scored by ``ir-measures`` through :func:`rankrl.rerank.metrics.evaluate` against *all* of the query's
judgments, so even a perfect reordering of the candidates scores below 1 when relevant documents were not
retrieved. :class:`rankrl.rerank.env.RerankEnv` rewards the same way, one query per episode.

:func:`rank_with` takes any callable ``(query_text, [doc_texts]) -> scores`` (BM25, a MiniLM bi-encoder, an
LLM) over a set of queries and returns the metrics dict::

    coll = load_collection("../shared/data/cranfield")
    _, test = split_queries(coll, 1 / 3, seed=0)
    rank_with(lambda q, docs: [0.0] * len(docs), coll, test, k=20)   # = BM25's own order
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from rankrl.rerank.collections import Collection
from rankrl.rerank.first_stage import FirstStage, first_stage
from rankrl.rerank.metrics import evaluate

__all__ = ["RERANK_MEASURES", "Scorer", "rank_with", "rerank", "rerank_run"]

#: the measures every reranker is reported with (``rankrl rerank eval``, the benchmark)
RERANK_MEASURES: tuple[str, ...] = ("nDCG@10", "RR@10")

#: A reranker: query text and candidate texts (BM25 order) -> one score per candidate, higher = earlier.
Scorer = Callable[[str, list[str]], Sequence[float]]


def rerank(doc_ids: Sequence[str], scores: Sequence[float]) -> dict[str, float]:
    """One query's run entry for ``doc_ids`` (first-stage order) reordered by descending ``scores``.

    Ties keep the first-stage order (stable sort). The returned scores are ``len(doc_ids), ..., 1``, strictly
    decreasing, so pytrec_eval's own tie-breaking (by doc id) never reorders the list.

    >>> rerank(["a", "b", "c"], [0.1, 0.9, 0.1])
    {'b': 3.0, 'a': 2.0, 'c': 1.0}
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if s.size != len(doc_ids):
        raise ValueError(f"expected {len(doc_ids)} scores, one per candidate, got {s.size}")
    if not np.all(np.isfinite(s)):
        raise ValueError(f"scores must be finite, got {s}")
    order = np.argsort(-s, kind="stable")
    return {doc_ids[i]: float(len(doc_ids) - pos) for pos, i in enumerate(order)}


def rerank_run(scorer: Scorer, collection: Collection, qids: Sequence[str], k: int = 20,
               retriever: FirstStage | None = None) -> dict[str, dict[str, float]]:  # fmt: skip
    """Run of ``scorer`` reranking the top-``k`` first-stage candidates of each query in ``qids`` (``retriever``: BM25
    by default, or :class:`~rankrl.rerank.first_stage.RunCandidates` of a run file; no candidates: empty ranking)."""
    from tqdm.auto import tqdm

    retriever = retriever or first_stage(collection)
    first = retriever.search(list(qids), k=k)
    run = {}
    for qid in tqdm(qids, desc=f"reranking top-{k}", unit="query", leave=False, disable=len(qids) < 2):
        doc_ids = list(first[qid])
        scores = scorer(collection.queries[qid], [collection.docs[d] for d in doc_ids]) if doc_ids else []
        run[qid] = rerank(doc_ids, scores)
    return run


def rank_with(scorer: Scorer, collection: Collection, qids: Sequence[str], k: int = 20, *,
              retriever: FirstStage | None = None,
              measures: Sequence[str] = RERANK_MEASURES) -> dict[str, float]:  # fmt: skip
    """Metrics of ``scorer`` reranking the BM25 top-``k`` of ``qids``, scored like
    :class:`~rankrl.rerank.env.RerankEnv` rewards.

    Every query in ``qids`` counts (a query without candidates scores 0); all need judgments. A scorer that
    returns constant scores reproduces BM25's top-``k`` order.
    """
    run = rerank_run(scorer, collection, qids, k, retriever)
    return evaluate(run, collection.qrels, measures, qids=list(qids))
