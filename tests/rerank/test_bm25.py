"""First-stage BM25 (rankrl.rerank.bm25): the Cranfield sanity number and a tiny collection."""

from __future__ import annotations

import pytest

from rankrl.rerank.bm25 import BM25Retriever, tokenize
from rankrl.rerank.collections import load_collection
from rankrl.rerank.metrics import evaluate, evaluate_per_query
from tests.rerank.tiny import tiny_trec


def test_bm25_cranfield_sanity(cranfield):
    run = BM25Retriever(cranfield).search(list(cranfield.queries), k=100)
    metrics = evaluate(run, cranfield.qrels)
    assert metrics["nDCG@10"] == pytest.approx(0.344, abs=0.01)  # data README; 0.010 with the .I-label trap
    assert set(metrics) == {"nDCG@10", "RR@10", "R@100"}
    per_query = evaluate_per_query(run, cranfield.qrels, ("nDCG@10",))["nDCG@10"]
    assert len(per_query) == 225 and sum(per_query.values()) / 225 == pytest.approx(metrics["nDCG@10"])


def test_bm25_on_a_tiny_collection(tmp_path):
    coll = load_collection(tiny_trec(tmp_path / "t"))
    retriever = BM25Retriever(coll)
    run = retriever.search(["q1", "q2"], k=10)
    assert list(run["q1"]) == ["d1"] and list(run["q2"]) == ["d2"]  # docs sharing no term are not retrieved
    assert retriever.search_text("nothing matches") == {}
    assert tokenize("Mach-2 FLOW, p=6.5") == ["mach", "2", "flow", "p", "6", "5"]
    assert retriever.idf("wing") > 0 and retriever.idf("zzz") == 0.0
    with pytest.raises(KeyError, match="unknown query"):
        retriever.search(["q7"])
