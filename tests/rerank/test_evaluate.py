"""How every reranker is evaluated (rankrl.rerank.evaluate), and the doctests of the pure layers under it."""

from __future__ import annotations

import doctest

import rankrl.rerank.bm25 as bm25
import rankrl.rerank.evaluate as ev
import rankrl.rerank.metrics as metrics
from tests.rerank.tiny import bm25_order, shuffled_collection, tiny_collection


def test_doctests():
    for mod in (metrics, bm25, ev):
        result = doctest.testmod(mod)
        assert result.failed == 0 and result.attempted > 0, mod.__name__


def test_rerank_run_gives_scorer_candidates_in_bm25_order():
    """expected_scores(first_stage_rank=True) relies on rerank_run passing docs best-first by BM25 score."""
    from rankrl.rerank.bm25 import BM25Retriever
    from rankrl.rerank.evaluate import rerank_run

    seen: dict[str, list[str]] = {}
    for coll in (shuffled_collection(), tiny_collection()):
        retriever = BM25Retriever(coll)
        text_id = {t: d for d, t in coll.docs.items()}

        def scorer(query, docs, text_id=text_id):
            seen[query] = [text_id[t] for t in docs]
            return [0.0] * len(docs)

        rerank_run(scorer, coll, list(coll.queries), k=4, retriever=retriever)
        for q, text in coll.queries.items():
            assert seen[text] == bm25_order(retriever, text, seen[text]) == list(retriever.search([q], k=4)[q])
    assert seen["wing lift"][:3] == ["d00", "d01", "d02"]  # _collection: full-topic docs first
    # _shuffled_collection (checked first, then overwritten): best-first d3, d2, d1, not corpus order d1, d2, d3
    sc = shuffled_collection()
    got: list[str] = []
    rerank_run(lambda q, docs: got.extend(docs) or [0.0] * len(docs), sc, ["q"], k=4)
    assert got == [sc.docs[d] for d in ("d3", "d2", "d1")]
