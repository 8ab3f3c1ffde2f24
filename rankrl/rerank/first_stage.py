"""Where a reranker's candidates come from: BM25 over the collection, or a TREC run file (``--candidates RUN``).

Both answer ``search(qids, k) -> {qid: {docid: score}}`` (best first), so :func:`rankrl.rerank.evaluate.rerank_run`
and the training pools of ``rankrl rerank train`` / ``train-encoder`` take either. With a run file the documents
and queries still come from the collection; only the candidate lists (each query's top ``k`` by descending score,
ties in file order, as ``trec_eval`` reads a run) come from the file::

    first = first_stage(coll, "runs/monot5.trec")        # or first_stage(coll) for BM25
    first.search(["301", "302"], k=100)

Run entries the collection cannot serve are never used silently: candidates naming a document the collection lacks
are refused (the error names ``--drop_unknown``) or, with ``drop_unknown``, dropped and counted in one warning;
run queries the collection lacks are counted in a warning; a query asked for but absent from the run gets no
candidates and a counted warning (at evaluation it scores 0, in training it is skipped).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from rankrl.rerank.bm25 import BM25Retriever
from rankrl.rerank.collections import Collection, CollectionFormatError, candidates, read_run
from rankrl.rerank.metrics import Run

__all__ = ["FirstStage", "RunCandidates", "first_stage"]


class FirstStage(Protocol):
    """A first stage: the collection it serves and its top-``k`` candidates per query."""

    collection: Collection

    def search(self, qids: Sequence[str], k: int = 100) -> Run: ...


class RunCandidates:
    """Candidates read from a TREC run file (``qid Q0 docid rank score tag``) for a collection's queries.

    Args:
        collection: documents and queries (the run only lists ids).
        path: the run file.
        drop_unknown: drop candidates naming documents the collection lacks (counted, one warning) instead of
            refusing the file.

    Attributes:
        run: query id -> doc id -> score, restricted to the collection's queries and documents.
        unknown_docs: candidate entries dropped because the collection lacks the document.
        unknown_queries: run queries the collection lacks (their entries are ignored).
        missing: query ids asked for by :meth:`search` that the run does not list (cumulative, each once).
    """

    def __init__(self, collection: Collection, path: str | os.PathLike, *, drop_unknown: bool = False) -> None:
        self.collection, self.path = collection, Path(path)
        raw = read_run(self.path)
        self.unknown_queries = sorted(q for q in raw if q not in collection.queries)
        bad = [(q, d) for q, docs in raw.items() if q in collection.queries for d in docs if d not in collection.docs]
        self.unknown_docs = len(bad)
        where = f"--candidates {self.path}"
        if len(self.unknown_queries) == len(raw):
            raise CollectionFormatError(f"{where}: none of its {len(raw)} queries is a query of collection "
                                        f"{collection.name!r} (e.g. {self.unknown_queries[:3]}); is it a run of "
                                        "another collection?")  # fmt: skip
        if bad and not drop_unknown:
            raise CollectionFormatError(f"{where}: {len(bad)} candidates name documents collection "
                                        f"{collection.name!r} lacks (e.g. query {bad[0][0]!r}, doc {bad[0][1]!r}); "
                                        "pass --drop_unknown to drop them (counted)")  # fmt: skip
        self.run: Run = {q: {d: s for d, s in docs.items() if d in collection.docs}
                         for q, docs in raw.items() if q in collection.queries}  # fmt: skip
        if bad:
            warnings.warn(f"{where}: dropped {len(bad)} of {sum(map(len, self.run.values())) + len(bad)} candidates "
                          f"naming documents collection {collection.name!r} lacks (--drop_unknown)",
                          stacklevel=2)  # fmt: skip
        if self.unknown_queries:
            warnings.warn(f"{where}: ignored {len(self.unknown_queries)} run queries that collection "
                          f"{collection.name!r} lacks (e.g. {self.unknown_queries[:3]})", stacklevel=2)  # fmt: skip
        self.missing: list[str] = []

    def search(self, qids: Sequence[str], k: int = 100) -> Run:
        """Top-``k`` candidates of each of ``qids`` by descending run score (ties in file order); a query the run
        does not list gets ``{}`` and is counted in one warning."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        unknown = [q for q in qids if q not in self.collection.queries]
        if unknown:
            raise KeyError(f"unknown query ids {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
        out: Run = {}
        absent = []
        for q in qids:
            out[q] = {d: self.run[q][d] for d in candidates(self.run, q, k)}
            if not out[q]:
                absent.append(q)
        new = [q for q in dict.fromkeys(absent) if q not in self.missing]
        self.missing += new
        if absent:
            warnings.warn(f"--candidates {self.path}: {len(set(absent))} of {len(set(qids))} queries have no "
                          f"candidates in the run (e.g. {absent[:3]}); they get an empty ranking",
                          stacklevel=2)  # fmt: skip
        return out

    def describe(self) -> str:
        """One line for logs: the file and what was dropped or missing."""
        return (f"candidates from {self.path} ({len(self.run)} queries; {self.unknown_docs} unknown-document "
                f"candidates dropped, {len(self.unknown_queries)} unknown run queries ignored, {len(self.missing)} "
                "queries without candidates)")  # fmt: skip


def first_stage(collection: Collection, candidates_path: str | os.PathLike | None = None, *,
                drop_unknown: bool = False, bm25: BM25Retriever | None = None) -> FirstStage:  # fmt: skip
    """The first stage of a job: a :class:`RunCandidates` over ``candidates_path`` when given, else BM25 (``bm25``
    when already built)."""
    if candidates_path:
        return RunCandidates(collection, candidates_path, drop_unknown=drop_unknown)
    return bm25 or BM25Retriever(collection)
