"""First-stage retrieval of the reranker experiments: BM25 over a :class:`~rankrl.rerank.collections.Collection`.

BM25 (``bm25s``, k1 = 1.2, b = 0.75, Lucene variant) over lowercase alphanumeric tokens with no stemming and no
stopword list. Over all 225 Cranfield queries this gives nDCG@10 = 0.343 (the data README's sanity number is
0.344)::

    coll = load_collection("../shared/data/cranfield")
    run = BM25Retriever(coll).search(list(coll.queries), k=100)
    evaluate(run, coll.qrels)          # {"nDCG@10": 0.343, "RR@10": 0.495, "R@100": 0.696}
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

from rankrl.rerank.collections import Collection
from rankrl.rerank.metrics import Run

__all__ = ["BM25Retriever", "tokenize"]

_TOKEN = re.compile(r"[a-z0-9]+")


def tokenize(text: str) -> list[str]:
    """Lowercase alphanumeric runs; no stemming, no stopwords (the setting of the Cranfield README).

    >>> tokenize("Lift of a WING, 2nd-order")
    ['lift', 'of', 'a', 'wing', '2nd', 'order']
    """
    return _TOKEN.findall(text.lower())


class BM25Retriever:
    """First-stage BM25 over a collection's documents (``bm25s``, Lucene variant).

    Args:
        collection: the documents to index.
        k1: term-frequency saturation.
        b: length normalisation.

    Attributes:
        doc_tokens: doc id -> its tokens (for features such as length and query-term overlap).
        max_doc_len: tokens of the longest document.
    """

    def __init__(self, collection: Collection, k1: float = 1.2, b: float = 0.75) -> None:
        import bm25s  # ~0.4 s to import; only retrieval needs it

        self.collection = collection
        self.doc_ids = list(collection.docs)
        self._index = {d: i for i, d in enumerate(self.doc_ids)}
        self.doc_tokens = {d: tokenize(collection.docs[d]) for d in self.doc_ids}
        self.max_doc_len = max((len(t) for t in self.doc_tokens.values()), default=0)
        self._df = Counter(t for toks in self.doc_tokens.values() for t in set(toks))
        self.model = bm25s.BM25(k1=k1, b=b, method="lucene")
        self.model.index([self.doc_tokens[d] for d in self.doc_ids], show_progress=False)

    def idf(self, token: str) -> float:
        """Lucene BM25 idf ``log(1 + (N - df + 0.5) / (df + 0.5))`` (0 for a token no document has)."""
        df = self._df.get(token, 0)
        return float(np.log1p((len(self.doc_ids) - df + 0.5) / (df + 0.5))) if df else 0.0

    def search_text(self, text: str, k: int = 100) -> dict[str, float]:
        """Top-``k`` docs for a free-text query, best first; docs sharing no term with it are not returned."""
        return self._search([tokenize(text)], k)[0]

    def doc_scores(self, text: str, doc_ids: Sequence[str]) -> list[float]:
        """BM25 scores of ``doc_ids`` for a free-text query (0 for a doc sharing no term), whatever their rank: the
        first-stage feature of candidates that come from a run file rather than from :meth:`search`."""
        scores = self.model.get_scores(tokenize(text))
        return [float(scores[self._index[d]]) for d in doc_ids]

    def search(self, qids: Sequence[str], k: int = 100) -> Run:
        """Top-``k`` BM25 run for the collection's queries ``qids`` (dicts ordered best first).

        Documents sharing no term with the query (score 0) are not retrieved; ties are ordered by corpus order.
        """
        unknown = [q for q in qids if q not in self.collection.queries]
        if unknown:
            raise KeyError(f"unknown query ids {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
        results = self._search([tokenize(self.collection.queries[q]) for q in qids], k)
        return dict(zip(qids, results, strict=True))

    def _search(self, query_tokens: list[list[str]], k: int) -> list[dict[str, float]]:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if not query_tokens:
            return []
        k = min(k, len(self.doc_ids))
        idx, scores = self.model.retrieve(query_tokens, k=k, show_progress=False)
        out = []
        for row_idx, row_scores in zip(idx, scores, strict=True):
            order = sorted((-float(s), int(i)) for i, s in zip(row_idx, row_scores, strict=True) if s > 0)
            out.append({self.doc_ids[i]: -neg for neg, i in order})
        return out
