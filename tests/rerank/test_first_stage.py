"""Candidates from a TREC run file (``--candidates``): top-k per query, unknown and missing entries counted."""

from __future__ import annotations

import warnings

import pytest

from rankrl.rerank.bm25 import BM25Retriever
from rankrl.rerank.collections import CollectionFormatError
from rankrl.rerank.evaluate import rank_with, rerank_run
from rankrl.rerank.first_stage import RunCandidates, first_stage
from tests.rerank.tiny import tiny_collection


def _run(tmp_path, lines: str):
    path = tmp_path / "cands.trec"
    path.write_text(lines)
    return path


def test_top_k_by_score_ties_in_file_order_and_missing_queries_warned(tmp_path):
    coll = tiny_collection()  # queries "0".."5", docs d00..d54
    path = _run(tmp_path, "0 Q0 d02 1 3.0 x\n0 Q0 d00 2 5.0 x\n0 Q0 d01 3 3.0 x\n0 Q0 d03 4 1.0 x\n"
                          "1 Q0 d10 1 1.0 x\n")  # fmt: skip
    first = first_stage(coll, path)
    assert isinstance(first, RunCandidates) and isinstance(first_stage(coll), BM25Retriever)
    with pytest.warns(UserWarning, match=r"2 of 3 queries have no candidates in the run"):
        got = first.search(["0", "2", "3"], k=3)
    assert list(got["0"]) == ["d00", "d02", "d01"]  # by score; d02/d01 tie: file order
    assert got["2"] == got["3"] == {} and first.missing == ["2", "3"]
    # the reranker sees exactly those candidates; a constant scorer keeps the run's order, absent queries score 0
    seen = []
    run = rerank_run(lambda q, docs: seen.append(docs) or [0.0] * len(docs), coll, ["0", "1"], k=2, retriever=first)
    assert list(run["0"]) == ["d00", "d02"] and seen[0] == [coll.docs["d00"], coll.docs["d02"]]
    with pytest.warns(UserWarning, match="no candidates"):
        m = rank_with(lambda q, docs: [0.0] * len(docs), coll, ["0", "2"], k=2, retriever=first)
    assert 0.0 < m["nDCG@10"] < 1.0  # query "2" counts as 0, query "0" has its two relevant docs on top
    with pytest.raises(KeyError, match="unknown query"):
        first.search(["nope"], k=2)


def test_unknown_candidates_are_refused_with_the_flag_or_dropped_and_counted(tmp_path):
    coll = tiny_collection()
    path = _run(tmp_path, "0 Q0 d00 1 3.0 x\n0 Q0 zz9 2 2.0 x\n0 Q0 d01 3 1.0 x\n99 Q0 d00 1 1.0 x\n")
    with pytest.raises(CollectionFormatError, match=r"1 candidates name documents .* lacks .*'zz9'.* --drop_unknown"):
        RunCandidates(coll, path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = RunCandidates(coll, path, drop_unknown=True)
    msgs = [str(w.message) for w in caught]
    assert any("dropped 1 of 3 candidates naming documents" in m for m in msgs)
    assert any("ignored 1 run queries" in m and "'99'" in m for m in msgs)
    assert first.unknown_docs == 1 and first.unknown_queries == ["99"]
    assert list(first.search(["0"], k=5)["0"]) == ["d00", "d01"]
    assert "1 unknown-document candidates dropped" in first.describe()
    other = _run(tmp_path, "a Q0 d00 1 1.0 x\n")
    with pytest.raises(CollectionFormatError, match="none of its 1 queries is a query of collection"):
        RunCandidates(coll, other)
