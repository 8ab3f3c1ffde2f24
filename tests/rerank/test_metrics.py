"""Run metrics (rankrl.rerank.metrics): ir-measures on the scored queries only, and the pure-Python nDCG."""

from __future__ import annotations

import ir_measures
import pytest

from rankrl.rerank.metrics import evaluate, evaluate_per_query, ndcg


def test_evaluate_uses_ir_measures_and_counts_missing_queries():
    qrels = {"a": {"d1": 2, "d2": 0}, "b": {"d3": 1}, "c": {"d1": 0}}
    run = {"a": {"d2": 2.0, "d1": 1.0}, "b": {"d3": 1.0}}
    # ir-measures alone averages over every judged query (c scores 0); evaluate() defaults to the run's queries.
    both = {q: qrels[q] for q in ("a", "b")}
    expected = ir_measures.calc_aggregate([ir_measures.nDCG @ 10, ir_measures.RR @ 10], both, run)
    got = evaluate(run, qrels, ("nDCG@10", "RR@10"))
    assert got == {"nDCG@10": pytest.approx(expected[ir_measures.nDCG @ 10]), "RR@10": pytest.approx(0.75)}
    # An explicit query the run lacks is an empty ranking (0), as in trec_eval -c.
    assert evaluate(run, qrels, ("RR@10",), qids=["a", "b", "c"])["RR@10"] == pytest.approx(0.5)
    assert evaluate_per_query(run, qrels, ("RR@10",), qids=["b", "a"]) == {"RR@10": {"b": 1.0, "a": 0.5}}
    with pytest.raises(ValueError, match="without judgments"):
        evaluate(run, qrels, qids=["zz"])


def test_ndcg_is_ir_measures_ndcg_at_10():
    """The reward-side nDCG@k equals ir-measures' on one query's ranked list (graded gains, unretrieved relevant)."""
    judged = {"d1": 3, "d2": 0, "d3": 1, "d4": 2, "d9": 1}  # d9 is relevant but never ranked
    order = ["d2", "d4", "x", "d1", "d3"]
    run = {"q": {d: float(len(order) - i) for i, d in enumerate(order)}}
    want = evaluate(run, {"q": judged}, ("nDCG@10", "nDCG@3"))
    gains = [judged.get(d, 0) for d in order]
    assert ndcg(gains, list(judged.values())) == pytest.approx(want["nDCG@10"], abs=1e-12)
    assert ndcg(gains, list(judged.values()), k=3) == pytest.approx(want["nDCG@3"], abs=1e-12)
