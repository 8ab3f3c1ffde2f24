"""Ranking metrics of reranker runs: ``ir-measures`` (pytrec_eval underneath) for runs, one nDCG for rewards.

Pure logic at the bottom of the rerank domain: no torch, no rankrl domain module. A run is ``{qid: {docid:
score}}`` and qrels are ``{qid: {docid: gain}}`` (gain an int >= 0, 0 = judged non-relevant)::

    evaluate(run, coll.qrels)          # {"nDCG@10": 0.343, "RR@10": 0.495, "R@100": 0.696} (Cranfield BM25)

:func:`ndcg` is the same nDCG@k computed in Python for one ranked list, for rewards evaluated thousands of
times (GroupRank's reward, the encoder reranker's sampled rankings); a test checks it against ir-measures.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import ir_measures

__all__ = ["DEFAULT_MEASURES", "Qrels", "Run", "evaluate", "evaluate_per_query", "ndcg"]

DEFAULT_MEASURES: tuple[str, ...] = ("nDCG@10", "RR@10", "R@100")
Run = dict[str, dict[str, float]]
Qrels = dict[str, dict[str, int]]


def _measures(measures: Iterable[str | ir_measures.Measure]) -> list:
    parsed = [ir_measures.parse_measure(m) if isinstance(m, str) else m for m in measures]
    if not parsed:
        raise ValueError("no measures given")
    return parsed


def _prepare(run: Mapping, qrels: Mapping, qids: Iterable[str] | None) -> tuple[list[str], Qrels, Run]:
    """Queries to score, their qrels, and the run with an empty ranking for every query it lacks."""
    if qids is None:
        qids = [q for q in run if q in qrels]
    qids = list(dict.fromkeys(qids))
    if missing := [q for q in qids if not qrels.get(q)]:
        raise ValueError(f"queries without judgments cannot be scored: {missing[:5]}")
    if not qids:
        raise ValueError("no query of the run has judgments")
    sub_qrels = {q: dict(qrels[q]) for q in qids}
    sub_run = {q: {d: float(s) for d, s in run.get(q, {}).items()} for q in qids}
    return qids, sub_qrels, sub_run


def evaluate(run: Mapping[str, Mapping[str, float]], qrels: Mapping[str, Mapping[str, int]],
             measures: Sequence[str | ir_measures.Measure] = DEFAULT_MEASURES, *,
             qids: Iterable[str] | None = None) -> dict[str, float]:  # fmt: skip
    """Aggregate metrics of ``run`` with ``ir-measures`` (pytrec_eval), keyed by the measure's name.

    Scored queries: ``qids``, default the run's queries that have judgments. (ir-measures called on the full
    qrels averages over *every* judged query, scoring the ones the run lacks as 0, so a test-split run would be
    diluted by the train queries; here the qrels are cut to ``qids`` first.) A query in ``qids`` that the run
    lacks counts as an empty ranking (0 for nDCG/RR/R), like ``trec_eval -c``; a query without judgments is an
    error (pytrec_eval would silently skip it). Relevance for RR and R is gain >= 1. Ties in score are broken
    by pytrec_eval (doc id, descending), so give distinct scores when order matters.
    """
    parsed = _measures(measures)
    _, sub_qrels, sub_run = _prepare(run, qrels, qids)
    agg = ir_measures.calc_aggregate(parsed, sub_qrels, sub_run)
    return {str(m): float(agg[m]) for m in parsed}


def evaluate_per_query(run: Mapping[str, Mapping[str, float]], qrels: Mapping[str, Mapping[str, int]],
                       measures: Sequence[str | ir_measures.Measure] = DEFAULT_MEASURES, *,
                       qids: Iterable[str] | None = None) -> dict[str, dict[str, float]]:  # fmt: skip
    """Per-query values (measure name -> qid -> value, qids in order) on the same terms as :func:`evaluate`;
    for paired significance tests between rerankers."""
    parsed = _measures(measures)
    order, sub_qrels, sub_run = _prepare(run, qrels, qids)
    values: dict[str, dict[str, float]] = {str(m): {} for m in parsed}
    for metric in ir_measures.iter_calc(parsed, sub_qrels, sub_run):
        values[str(metric.measure)][metric.query_id] = float(metric.value)
    return {name: {q: vals[q] for q in order} for name, vals in values.items()}


def ndcg(gains_in_order: Sequence[float], all_gains: Sequence[float], k: int = 10) -> float:
    """nDCG@k with linear gains (as trec_eval / ir-measures) of a ranked list against its ideal reordering.

    Args:
        gains_in_order: the gains of the ranked documents, best first.
        all_gains: the gains of every judged document of the query (the ideal list is these, sorted).
        k: cut-off.

    >>> round(ndcg([0, 2], [2, 1]), 4)   # the gain-2 doc at rank 2, a gain-1 doc not retrieved
    0.4796
    >>> ndcg([1, 0], [0, 0])             # nothing relevant: 0, not a division by zero
    0.0
    """
    dcg = sum(g / math.log2(p + 2) for p, g in enumerate(gains_in_order[:k]))
    idcg = sum(g / math.log2(p + 2) for p, g in enumerate(sorted(all_gains, reverse=True)[:k]))
    return dcg / idcg if idcg > 0 else 0.0
