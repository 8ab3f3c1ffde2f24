"""RerankEnv: reorder a query's BM25 candidates; reward nDCG@10, the way every reranker is evaluated.

A reranker sees a query and its first-stage candidates (BM25 top ``max_candidates``) and returns one score per
candidate; higher scores rank earlier, ties keep the BM25 order (:func:`rankrl.rerank.evaluate.rerank`). The
reranked list is scored by ``ir-measures`` through :func:`rankrl.rerank.metrics.evaluate` against *all* of the
query's judgments, so even a perfect reordering of the candidates scores below 1 when relevant documents were not
retrieved.

:class:`RerankEnv` (``rankrl/Rerank-v0``) serves one query per episode, for RL agents that act on per-candidate
feature rows (the texts are in ``info`` for LLM rerankers); :func:`rankrl.rerank.evaluate.rank_with` scores any
callable ``(query_text, [doc_texts]) -> scores`` over a set of queries on the same terms.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from rankrl.rerank.bm25 import BM25Retriever, tokenize
from rankrl.rerank.collections import Collection, load_collection, split_queries
from rankrl.rerank.evaluate import rerank
from rankrl.rerank.metrics import evaluate, evaluate_per_query

__all__ = ["N_GLOBALS", "N_ROW_FEATURES", "RerankConfig", "RerankEnv", "candidate_features"]

N_ROW_FEATURES = 7
N_GLOBALS = 3
SPLITS = ("train", "test", "all")


def candidate_features(retriever: BM25Retriever, query: str, scores: Mapping[str, float],
                       rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Feature rows, mask and globals (all in [0, 1], float32) for one query's candidates in first-stage order.

    Rows: BM25 score / top score; min-max normalised BM25 score; rank / (rows - 1); 1 / (rank + 1);
    log1p(doc tokens) / log1p(longest doc); fraction of distinct query terms in the doc; the same weighted by
    BM25 idf. Globals: candidates / rows; log1p(query tokens) / log1p(64); top score / (top score + 10).
    """
    doc_ids = list(scores)
    n = len(doc_ids)
    if n > rows:
        raise ValueError(f"{n} candidates do not fit {rows} rows")
    out = np.zeros((rows, N_ROW_FEATURES), dtype=np.float32)
    mask = np.zeros(rows, dtype=np.float32)
    q_tokens = tokenize(query)
    q_terms = sorted(set(q_tokens))
    idf = np.array([retriever.idf(t) for t in q_terms])
    s = np.array([scores[d] for d in doc_ids], dtype=np.float64)
    top = float(s.max()) if n else 0.0
    if n:
        longest = np.log1p(max(retriever.max_doc_len, 1))
        span = float(s.max() - s.min())
        rank = np.arange(n)
        doc_terms = [set(retriever.doc_tokens[d]) for d in doc_ids]
        overlap = np.array([[t in terms for t in q_terms] for terms in doc_terms], dtype=float).reshape(n, len(q_terms))
        feats = np.stack(
            [
                s / top if top > 0 else np.ones(n),
                (s - s.min()) / span if span > 0 else np.ones(n),
                rank / max(rows - 1, 1),
                1.0 / (rank + 1),
                np.log1p([len(retriever.doc_tokens[d]) for d in doc_ids]) / longest,
                overlap.mean(axis=1) if q_terms else np.zeros(n),
                overlap @ idf / idf.sum() if idf.sum() > 0 else np.zeros(n),
            ],
            axis=1,
        )
        out[:n] = np.clip(feats, 0.0, 1.0)
        mask[:n] = 1.0
    glob = np.array([n / rows, np.log1p(len(q_tokens)) / np.log1p(64), top / (top + 10.0)], dtype=np.float32)
    return out, mask, np.clip(glob, 0.0, 1.0)


@dataclass(frozen=True)
class RerankConfig:
    """Settings of :class:`RerankEnv`."""

    max_candidates: int = 20
    """K: BM25 candidates per query = observation/action rows (queries with fewer are padded and masked)"""
    split: str = "train"
    """queries the episodes draw from: "train", "test" (of split_queries) or "all" judged queries"""
    test_fraction: float = 1 / 3
    """share of judged queries in the test split (Cranfield: 75 of 225)"""
    split_seed: int = 0
    """seed of the train/test split (fixed across env seeds so train and test never mix)"""
    measure: str = "nDCG@10"
    """reward measure, an ir-measures name"""
    require_relevant: bool = False
    """draw only queries with a relevant doc (gain > 0) among the candidates (the others give the same reward
    whatever the action); keep False to evaluate"""

    def __post_init__(self) -> None:
        if self.max_candidates < 1:
            raise ValueError(f"max_candidates must be >= 1, got {self.max_candidates}")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")


class RerankEnv(gym.Env):
    """Reorder one query's BM25 candidates to maximise nDCG@10.

    ## Action Space
    ``Box(-1, 1, (max_candidates,), float32)``: one score per candidate row, higher = ranked earlier; padded rows
    are ignored and ties keep BM25 order (:func:`~rankrl.rerank.evaluate.rerank`).

    ## Observation Space
    ``Dict(rows=Box(0, 1, (max_candidates, 7)), mask=Box(0, 1, (max_candidates,)), globals=Box(0, 1, (3,)))``:
    per-candidate features in BM25 order (:func:`candidate_features`: normalised BM25 score, rank, doc length,
    query-term overlap), the mask of real candidates, and query-level globals. ``info`` from ``reset`` holds
    the raw texts for LLM rerankers: ``qid``, ``query``, ``doc_ids``, ``doc_texts``, ``bm25_scores``.

    ## Rewards
    ``measure`` (nDCG@10) of the reranked candidates, by :func:`rankrl.rerank.metrics.evaluate` on a one-query run
    against all of the query's judgments (so the best reordering can score < 1). ``info`` after the step holds
    the ``ranking`` and, for reference, ``reward_bm25`` (BM25 order) and ``reward_oracle`` (candidates sorted
    by gain).

    ## Episode End
    Terminated after the one step. Queries are drawn uniformly with ``np_random`` from the split;
    ``reset(options={"qid": ...})`` picks one.

    ## Arguments
    ``collection`` (a :class:`~rankrl.rerank.collections.Collection` or a path for
    :func:`~rankrl.rerank.collections.load_collection`; required), ``config`` (:class:`RerankConfig`) or its fields as
    keywords (``gym.make("rankrl/Rerank-v0", collection=path, split="test")``; unknown keywords raise
    ``ValueError``), ``retriever`` (a prebuilt :class:`~rankrl.rerank.bm25.BM25Retriever` to share).

    ## Version History
    * v0: initial version.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        collection: Collection | str | os.PathLike | None = None,
        config: RerankConfig | None = None,
        retriever: BM25Retriever | None = None,
        render_mode: str | None = None,
        **overrides: Any,
    ) -> None:
        keys = {f.name for f in fields(RerankConfig)}
        if unknown := sorted(set(overrides) - keys):
            raise ValueError(f"unknown RerankEnv arguments {unknown}; valid: {sorted(keys)}")
        self.config = cfg = RerankConfig(**{**(asdict(config) if config else {}), **overrides})
        if collection is None:
            raise ValueError('RerankEnv needs a collection: a Collection or a path, e.g. collection="../shared/'
                             'data/cranfield"')  # fmt: skip
        if render_mode is not None:
            raise ValueError("RerankEnv has no render modes")
        self.render_mode = render_mode
        self.collection = collection if isinstance(collection, Collection) else load_collection(collection)
        self.retriever = retriever or BM25Retriever(self.collection)
        if cfg.split == "all":
            qids = self.collection.judged_qids
        else:
            train, test = split_queries(self.collection, cfg.test_fraction, cfg.split_seed)
            qids = train if cfg.split == "train" else test
        first = self.retriever.search(qids, k=cfg.max_candidates)
        qrels = self.collection.qrels
        self.candidates = {q: first[q] for q in qids if first[q]}
        if cfg.require_relevant:
            self.candidates = {q: c for q, c in self.candidates.items() if any(qrels[q].get(d, 0) > 0 for d in c)}
        if not self.candidates:
            raise ValueError(f"no query of split {cfg.split!r} has candidates to rerank")
        self.qids = list(self.candidates)
        # Reference rewards of every query in one ir-measures call each: BM25 order and the oracle reordering.
        bm25 = {q: rerank(list(c), np.zeros(len(c))) for q, c in self.candidates.items()}
        oracle = {q: rerank(list(c), [qrels[q].get(d, 0) for d in c]) for q, c in self.candidates.items()}
        self.reward_bm25 = evaluate_per_query(bm25, qrels, (cfg.measure,), qids=self.qids)[cfg.measure]
        self.reward_oracle = evaluate_per_query(oracle, qrels, (cfg.measure,), qids=self.qids)[cfg.measure]
        self._features = {
            q: candidate_features(self.retriever, self.collection.queries[q], c, cfg.max_candidates)
            for q, c in self.candidates.items()
        }
        rows = cfg.max_candidates
        self.action_space = spaces.Box(-1.0, 1.0, (rows,), dtype=np.float32)
        self.observation_space = spaces.Dict(
            {
                "rows": spaces.Box(0.0, 1.0, (rows, N_ROW_FEATURES), dtype=np.float32),
                "mask": spaces.Box(0.0, 1.0, (rows,), dtype=np.float32),
                "globals": spaces.Box(0.0, 1.0, (N_GLOBALS,), dtype=np.float32),
            }
        )
        self.qid: str | None = None
        self._done = True

    def _obs(self) -> dict[str, np.ndarray]:
        rows, mask, glob = self._features[self.qid]
        return {"rows": rows.copy(), "mask": mask.copy(), "globals": glob.copy()}

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        qid = (options or {}).get("qid")
        if qid is None:
            qid = self.qids[int(self.np_random.integers(len(self.qids)))]
        elif qid not in self.candidates:
            raise ValueError(f"query {qid!r} is not among this env's {len(self.qids)} queries (split "
                             f"{self.config.split!r})")  # fmt: skip
        self.qid, self._done = qid, False
        doc_ids = list(self.candidates[qid])
        info = {
            "qid": qid,
            "query": self.collection.queries[qid],
            "doc_ids": doc_ids,
            "doc_texts": [self.collection.docs[d] for d in doc_ids],
            "bm25_scores": np.array([self.candidates[qid][d] for d in doc_ids], dtype=np.float32),
        }
        return self._obs(), info

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        if self._done:
            raise RuntimeError("RerankEnv.step() after the episode ended; call reset() first")
        doc_ids = list(self.candidates[self.qid])
        scores = np.asarray(action, dtype=np.float64).reshape(-1)
        if scores.size != self.config.max_candidates:
            raise ValueError(f"action must have {self.config.max_candidates} scores, got {scores.size}")
        ranked = rerank(doc_ids, scores[: len(doc_ids)])
        measure = self.config.measure
        reward = evaluate({self.qid: ranked}, self.collection.qrels, (measure,), qids=[self.qid])[measure]
        self._done = True
        info = {
            "qid": self.qid,
            "ranking": list(ranked),
            "reward_bm25": self.reward_bm25[self.qid],
            "reward_oracle": self.reward_oracle[self.qid],
        }
        return self._obs(), float(reward), True, False, info
