"""The cross-collection benchmark's helpers (benchmarks/rerank_transfer.py) on a tiny collection: no model."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.rerank.tiny import tiny_collection

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "rerank_transfer.py"


@pytest.fixture(scope="module")
def rt():
    spec = importlib.util.spec_from_file_location("rerank_transfer", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_paired_counts_and_tests(rt):
    p = rt.paired({"a": 0.5, "b": 0.2, "c": 0.3, "d": 0.0}, {"a": 0.4, "b": 0.2, "c": 0.1, "d": 0.1})
    assert (p["wins"], p["losses"], p["ties"], p["n"]) == (2, 1, 1, 4)
    assert p["mean_diff"] == pytest.approx(0.05)
    assert 0 < p["ttest_p"] <= 1 and 0 < p["wilcoxon_p"] <= 1
    same = rt.paired({"a": 0.1, "b": 0.2}, {"a": 0.1, "b": 0.2})
    assert same["ties"] == 2 and same["ttest_p"] is None  # no difference: no test


def test_measure_bm25_order_on_tiny_collection(rt):
    from rankrl.rerank.bm25 import BM25Retriever
    from rankrl.rerank.evaluate import rank_with

    coll = tiny_collection()
    qids = list(coll.judged_qids)
    retriever = BM25Retriever(coll)
    row = rt.measure(rt.keep_bm25_order, coll, qids, 5, retriever)
    assert row["n_queries"] == len(qids) == 6
    assert set(row["per_query_nDCG@10"]) == set(qids) == set(row["per_query_RR@10"])
    assert row["nDCG@10"] == pytest.approx(sum(row["per_query_nDCG@10"].values()) / 6)
    assert row["nDCG@10"] == pytest.approx(rank_with(rt.keep_bm25_order, coll, qids, 5)["nDCG@10"])


def _row(pq: dict[str, float]) -> dict:
    v = sum(pq.values()) / len(pq)
    return {"nDCG@10": v, "RR@10": v, "sec_per_query": 0.01, "n_queries": len(pq), "k": 20,
            "per_query_nDCG@10": pq}  # fmt: skip


def test_pooled_and_table(rt):
    base = {e: {"bm25": _row({"1": 0.2, "2": 0.4}), "minilm-bi": _row({"1": 0.3, "2": 0.4})} for e in ("cisi", "med")}
    res = {"baselines": base, "transfer": {}, "pooled": {}}
    for e, pq in (("cisi", {"1": 0.5, "2": 0.4}), ("med", {"1": 0.3, "2": 0.6})):
        row = _row(pq)
        row["vs_zero_shot"] = rt.paired(pq, base[e]["minilm-bi"]["per_query_nDCG@10"])
        row["vs_bm25"] = rt.paired(pq, base[e]["bm25"]["per_query_nDCG@10"])
        res["transfer"][f"cranfield->{e}"] = row
    p = rt.pooled(res, "cranfield")
    assert p["collections"] == ["cisi", "med"] and p["n_queries"] == 4  # same qids, kept apart by the prefix
    assert p["nDCG@10_trained"] == pytest.approx(0.45) and p["nDCG@10_minilm-bi"] == pytest.approx(0.35)
    assert (p["vs_zero_shot"]["wins"], p["vs_zero_shot"]["ties"]) == (2, 2)
    assert rt.pooled(res, "cisi") is None
    res["pooled"]["cranfield"] = p
    text = rt.table(res)
    assert "cranfield -> cisi (2)" in text and "cranfield -> med (2)" in text and "pooled (4)" in text
