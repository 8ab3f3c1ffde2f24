"""Test collections for reranker training: documents, queries, judgments, query splits and TREC run files.

A :class:`Collection` holds document and query texts and graded judgments (``qrels``: query id -> doc id ->
integer gain, 0 = judged non-relevant). :func:`load_collection` detects the layout::

    load_collection("../shared/data/cranfield")   # SMART: cran.all.1400 + cran.qry + cranqrel
    load_collection("../shared/data/cisi")        # SMART: CISI.ALL + CISI.QRY + CISI.REL (76 of 112 queries judged)
    load_collection("../shared/data/med")         # SMART: MED.ALL + MED.QRY + MED.REL
    load_collection("path/to/beir/scifact")       # corpus.jsonl + queries.jsonl + qrels/test.tsv
    load_collection("path/to/trec_dir")           # docs.tsv or SGML docs + topics (TSV or SGML) + qrels.txt
    load_collection("irds:vaswani")               # ir_datasets, from its local cache

The file formats themselves are parsed in :mod:`rankrl.rerank.formats`; the first stage (BM25) is
:mod:`rankrl.rerank.bm25`; metrics of runs are :mod:`rankrl.rerank.metrics` (``ir-measures``, pytrec_eval
underneath, never hand-written).

Malformed files raise :class:`CollectionFormatError` naming ``file:line``. Judgments naming an unknown query or
document are an error by default; ``drop_unknown=True`` (``--drop_unknown``) drops them and emits one warning with
the counts."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rankrl.atomic import atomic_write_text
from rankrl.rerank.formats import (
    CollectionFormatError,
    Judgments,
    check_id,
    irds_records,
    join_text,
    parse_sgml_docs,
    parse_smart,
    parse_trec_topics,
    read_lines,
    read_text,
)
from rankrl.rerank.metrics import Qrels, Run

__all__ = [
    "SMART_LAYOUTS",
    "Collection",
    "CollectionFormatError",
    "SmartLayout",
    "candidates",
    "load_collection",
    "merge_collections",
    "read_beir",
    "read_cranfield",
    "read_irds",
    "read_run",
    "read_smart",
    "read_trec",
    "split_queries",
    "write_run",
]


@dataclass(frozen=True)
class Collection:
    """Documents, queries and graded judgments of one test collection.

    Attributes:
        docs: doc id -> text (for Cranfield and BEIR: title and abstract/text joined by a space).
        queries: query id -> text, in the source's order.
        qrels: query id -> doc id -> gain (int >= 0; 0 = judged non-relevant). Every id must be known.
        name: short name for logs (the directory name when read from disk).
    """

    docs: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    name: str = "collection"

    def __post_init__(self) -> None:
        where = f"collection {self.name!r}"
        if not self.docs or not self.queries:
            raise ValueError(f"{where}: needs at least one document and one query")
        for qid, judged in self.qrels.items():
            if qid not in self.queries:
                raise ValueError(f"{where}: qrels name unknown query {qid!r}")
            for docid, gain in judged.items():
                if docid not in self.docs:
                    raise ValueError(f"{where}: qrels of query {qid!r} name unknown doc {docid!r}")
                if not isinstance(gain, (int, np.integer)) or gain < 0:
                    raise ValueError(f"{where}: gain of ({qid!r}, {docid!r}) must be an int >= 0, got {gain!r}")

    @property
    def judged_qids(self) -> list[str]:
        """Queries with at least one doc of gain > 0, in query order (the ones a metric can score)."""
        return [q for q in self.queries if any(g > 0 for g in self.qrels.get(q, {}).values())]

    @property
    def n_qrels(self) -> int:
        """Number of judged (query, doc) pairs, gain-0 ones included."""
        return sum(len(j) for j in self.qrels.values())


# ---------------------------------------------------------------------------------------- SMART (Cranfield, CISI, MED)
@dataclass(frozen=True)
class SmartLayout:
    """Where a SMART-format collection keeps its files and how to read them."""

    docs: str
    """file of the documents (``.I`` records)"""
    queries: str
    """file of the queries"""
    qrels: str
    """file of the judgments"""
    doc_fields: str
    """field markers allowed in the documents (any other is an error)"""
    doc_text: str
    """fields joined (in this order) as the document text"""
    query_fields: str
    """field markers allowed in the queries"""
    query_text: str
    """fields joined as the query text (a query must have some)"""
    query_ids: str
    """``position`` (i-th query in file order: Cranfield's qrels) or ``label`` (the ``.I`` label)"""
    qrel_format: str
    """``cranfield`` (``q d code``, gain 5 - code), ``binary`` (``q d ...``, every pair gain 1) or ``trec``
    (``q iter d rel``)"""


#: the SMART collections ``load_collection`` recognises, by the name of their documents file
SMART_LAYOUTS: dict[str, SmartLayout] = {
    # Cranfield: qrel query i = i-th query of cran.qry (its .I labels run 001, 002, 004, ...)
    "cranfield": SmartLayout("cran.all.1400", "cran.qry", "cranqrel", "TABW", "TW", "W", "W", "position", "cranfield"),
    # CISI: queries 58-112 are bibliographic records (.T title + .W abstract); 36 queries have no judgments
    "cisi": SmartLayout("CISI.ALL", "CISI.QRY", "CISI.REL", "TAWXBKC", "TW", "TAWB", "TW", "label", "binary"),
    # MED: one .W field (its first sentence is the title); MED.REL is TREC format 'q 0 d 1'
    "med": SmartLayout("MED.ALL", "MED.QRY", "MED.REL", "W", "W", "W", "W", "label", "trec"),
}


def _int_label(label: str) -> str:
    return str(int(label)) if label.isdigit() else label  # qrels write ids as plain integers


def _smart_qrel(parts: list[str], fmt: str, where: str, line: str) -> tuple[str, str, int]:
    """(query, doc, gain) of one qrels line of a SMART collection."""
    if fmt == "cranfield":
        if len(parts) != 3 or not all(re.fullmatch(r"-?\d+", p) for p in parts):
            raise CollectionFormatError(f"{where}: expected 'query_no doc_id code' (3 integers), got {line[:80]!r}")
        code = int(parts[2])
        if code not in (-1, 1, 2, 3, 4):
            raise CollectionFormatError(f"{where}: relevance code must be -1 or 1..4, got {code}")
        return str(int(parts[0])), str(int(parts[1])), 5 - code if code > 0 else 0
    if fmt == "binary":
        if len(parts) < 2 or not all(p.isdigit() for p in parts[:2]):
            raise CollectionFormatError(f"{where}: expected 'query_id doc_id ...' (2 integers first), "
                                        f"got {line[:80]!r}")  # fmt: skip
        return str(int(parts[0])), str(int(parts[1])), 1
    if len(parts) != 4 or not re.fullmatch(r"-?\d+", parts[3]):
        raise CollectionFormatError(f"{where}: expected 'qid iter docid rel' with an integer rel, got {line[:80]!r}")
    return _int_label(parts[0]), _int_label(parts[2]), max(int(parts[3]), 0)


def read_smart(path: str | os.PathLike, layout: str | SmartLayout, *, drop_unknown: bool = False) -> Collection:
    """Read a SMART "dot" collection (Cranfield, CISI, MED; :data:`SMART_LAYOUTS`) from its directory.

    Doc and query ids are the ``.I`` labels as plain integers, except Cranfield's queries (file positions). Text is
    the layout's fields joined by a space (CISI's ``.A`` authors and ``.X`` citation lists are not text). Queries
    without judgments stay in :attr:`Collection.queries` and out of :attr:`Collection.judged_qids`, so evaluation
    drops them (CISI: 112 queries, 76 judged).

    Args:
        path: the directory (or any file inside it).
        layout: a name in :data:`SMART_LAYOUTS` or a :class:`SmartLayout`.
        drop_unknown: drop judgments naming an unknown query/doc with one counted warning instead of raising.
    """
    spec = SMART_LAYOUTS[layout] if isinstance(layout, str) else layout
    root = Path(path)
    root = root.parent if root.is_file() else root
    docs: dict[str, str] = {}
    for label, body, n in parse_smart(root / spec.docs, spec.doc_fields):
        docs[check_id(_int_label(label), docs, f"{root / spec.docs}:{n}", "doc")] = \
            join_text(body.get(f, "") for f in spec.doc_text)  # fmt: skip
    queries: dict[str, str] = {}
    for i, (label, body, n) in enumerate(parse_smart(root / spec.queries, spec.query_fields), 1):
        text = join_text(body.get(f, "") for f in spec.query_text)
        if not text:
            fields = " or ".join(f"'.{f}'" for f in spec.query_text)
            raise CollectionFormatError(f"{root / spec.queries}:{n}: query has no {fields} text")
        qid = str(i) if spec.query_ids == "position" else _int_label(label)
        queries[check_id(qid, queries, f"{root / spec.queries}:{n}", "query")] = text
    judged = Judgments(queries, docs, drop_unknown=drop_unknown)
    qrel_path = root / spec.qrels
    for n, line in read_lines(qrel_path):
        if line.strip():
            where = f"{qrel_path}:{n}"
            judged.add(*_smart_qrel(line.split(), spec.qrel_format, where, line), where)
    judged.report(qrel_path)
    return _finish(root, docs, queries, judged.qrels)


def read_cranfield(path: str | os.PathLike, *, drop_unknown: bool = False) -> Collection:
    """Read Cranfield 1400 from a directory holding ``cran.all.1400``, ``cran.qry`` and ``cranqrel``.

    Documents: doc id = the ``.I`` label ("1".."1400"), text = ``.T`` title + " " + ``.W`` abstract (``.A``
    authors and ``.B`` bibliography are dropped). Queries: **ids are file positions** "1".."225", because
    ``cranqrel``'s query number i means the i-th query of ``cran.qry`` in file order, not its ``.I`` label
    (labels run 001, 002, 004, 008, ...; the third query, label 004, is query "3"). Matching on labels instead
    collapses BM25 nDCG@10 from 0.344 to 0.010.

    Gains: ``cranqrel`` codes are Cleverdon's scale where **lower is more relevant** (1 = complete answer ..
    4 = minimum interest), so gain = 5 - code: 1 -> 4, 2 -> 3, 3 -> 2, 4 -> 1. Code -1 (undocumented, one per
    query, apparently the query's source document) -> gain 0 (judged, non-relevant). Other codes are errors.
    """
    return read_smart(path, "cranfield", drop_unknown=drop_unknown)


# ---------------------------------------------------------------------------------------------- BEIR
def _read_jsonl(path: Path, keys: tuple[str, ...]) -> Iterator[tuple[str, dict]]:
    for n, line in read_lines(path):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise CollectionFormatError(f"{path}:{n}: expected one JSON object per line ({err.msg})") from None
        if not isinstance(rec, dict) or any(k not in rec for k in keys):
            raise CollectionFormatError(f"{path}:{n}: expected a JSON object with keys {list(keys)}")
        yield f"{path}:{n}", rec


def read_beir(path: str | os.PathLike, split: str = "test", *, drop_unknown: bool = False) -> Collection:
    """Read a BEIR data set: ``corpus.jsonl`` ({_id, title, text}), ``queries.jsonl`` ({_id, text}),
    ``qrels/<split>.tsv`` (header ``query-id corpus-id score``, then tab-separated rows).

    Doc text = title + " " + text. As BEIR's own loader does, only queries judged in ``split`` are kept
    (``queries.jsonl`` holds every split's queries). Scores are the gains (negative ones are stored as 0).
    """
    root = Path(path)
    docs: dict[str, str] = {}
    for where, rec in _read_jsonl(root / "corpus.jsonl", ("_id", "text")):
        docs[check_id(str(rec["_id"]), docs, where, "doc")] = join_text([str(rec.get("title") or ""), str(rec["text"])])
    queries: dict[str, str] = {}
    for where, rec in _read_jsonl(root / "queries.jsonl", ("_id", "text")):
        queries[check_id(str(rec["_id"]), queries, where, "query")] = join_text([str(rec["text"])])
    qrel_path = root / "qrels" / f"{split}.tsv"
    if not qrel_path.is_file():
        have = sorted(p.stem for p in (root / "qrels").glob("*.tsv"))
        raise CollectionFormatError(f"{qrel_path}: file not found (splits present: {have})")
    judged = Judgments(queries, docs, drop_unknown=drop_unknown)
    lines = read_lines(qrel_path)
    n, header = next(lines)
    if header.strip().split("\t") != ["query-id", "corpus-id", "score"]:
        raise CollectionFormatError(f"{qrel_path}:{n}: expected the header 'query-id<TAB>corpus-id<TAB>score', "
                                    f"got {header[:80]!r}")  # fmt: skip
    for n, line in lines:
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 3 or not re.fullmatch(r"-?\d+", parts[2].strip()):
            raise CollectionFormatError(f"{qrel_path}:{n}: expected 'query-id<TAB>corpus-id<TAB>integer score', "
                                        f"got {line[:80]!r}")  # fmt: skip
        judged.add(parts[0].strip(), parts[1].strip(), max(int(parts[2]), 0), f"{qrel_path}:{n}")
    judged.report(qrel_path)
    queries = {q: t for q, t in queries.items() if q in judged.qrels}
    return _finish(root, docs, queries, judged.qrels)


# ---------------------------------------------------------------------------------------------- TREC
_TREC_DOCS = ("docs.tsv", "collection.tsv")
_TREC_SGML_DOCS = ("docs", "docs.sgml", "docs.trec", "docs.sgml.gz", "docs.trec.gz")
_TREC_TOPICS = ("topics.tsv", "queries.tsv", "topics.txt", "topics", "topics.trec")
_TREC_QRELS = ("qrels.txt", "qrels", "qrels.trec")


def _first(root: Path, names: tuple[str, ...], role: str) -> Path:
    for name in names:
        if (root / name).exists():
            return root / name
    raise CollectionFormatError(f"{root}: no {role} file (expected one of {list(names)})")


def _read_tsv(path: Path, kind: str, max_fields: int) -> dict[str, str]:
    out: dict[str, str] = {}
    for n, line in read_lines(path):
        if not line.strip():
            continue
        parts = line.split("\t")
        if not 2 <= len(parts) <= max_fields:
            shape = "id<TAB>text" + (" or id<TAB>title<TAB>text" if max_fields == 3 else "")
            raise CollectionFormatError(f"{path}:{n}: expected {shape}, got {line[:80]!r}")
        out[check_id(parts[0].strip(), out, f"{path}:{n}", kind)] = join_text(parts[1:])
    return out


def _read_sgml_docs(path: Path) -> dict[str, str]:
    """Documents of one SGML file, or of every file under a directory (sorted by path, ``.gz`` read too)."""
    files = [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise CollectionFormatError(f"{path}: no document files in the directory")
    docs: dict[str, str] = {}
    for f in files:
        for docno, text, where in parse_sgml_docs(f):
            docs[check_id(docno, docs, where, "doc")] = text
    return docs


def _read_topics(path: Path) -> dict[str, str]:
    """Topics: SGML ``<top>`` blocks (query text = the ``<title>``, else ``<desc>``) or ``qid<TAB>text`` lines."""
    if "<top>" not in read_text(path).lower():
        return _read_tsv(path, "query", 2)
    queries: dict[str, str] = {}
    for num, fields, where in parse_trec_topics(path):
        queries[check_id(num, queries, where, "query")] = fields.get("title") or fields["desc"]
    return queries


def read_trec(path: str | os.PathLike, *, drop_unknown: bool = False) -> Collection:
    """Read a TREC-style directory: documents, topics and qrels (``qrels.txt``, ``qrels`` or ``qrels.trec``:
    ``qid iter docid rel``, whitespace-separated; negative grades, used by some tracks for junk, are gain 0).

    Documents: ``docs.tsv`` / ``collection.tsv`` (``docid<TAB>text`` or ``docid<TAB>title<TAB>text``), or TREC SGML
    (``<DOC><DOCNO>..</DOCNO><TEXT>..</TEXT></DOC>``) in ``docs.sgml`` / ``docs.trec`` (``.gz`` too) or in every file
    under a ``docs/`` directory. Topics: ``topics.tsv`` / ``queries.tsv`` (``qid<TAB>text``) or SGML topics
    (``<top><num> Number: 301 <title> ..``) in ``topics.txt`` / ``topics`` / ``topics.trec``; the query text is the
    title (the description when a topic has no title).
    """
    root = Path(path)
    if any((root / name).is_file() for name in _TREC_DOCS):
        docs = _read_tsv(_first(root, _TREC_DOCS, "documents"), "doc", 3)
    else:
        docs = _read_sgml_docs(_first(root, _TREC_DOCS + _TREC_SGML_DOCS, "documents"))
    queries = _read_topics(_first(root, _TREC_TOPICS, "topics"))
    qrel_path = _first(root, _TREC_QRELS, "qrels")
    judged = Judgments(queries, docs, drop_unknown=drop_unknown)
    for n, line in read_lines(qrel_path):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 4 or not re.fullmatch(r"-?\d+", parts[3]):
            raise CollectionFormatError(f"{qrel_path}:{n}: expected 'qid iter docid rel' with an integer rel, "
                                        f"got {line[:80]!r}")  # fmt: skip
        judged.add(parts[0], parts[2], max(int(parts[3]), 0), f"{qrel_path}:{n}")
    judged.report(qrel_path)
    return _finish(root, docs, queries, judged.qrels)


def read_irds(ident: str, *, drop_unknown: bool = False) -> Collection:
    """Read the ``ir_datasets`` data set ``ident`` (e.g. ``"cranfield"``, ``"vaswani"``) from its local cache.

    Text = ``ir_datasets``' ``default_text()`` of each document and query; relevance = the gain (negative -> 0).
    Its ``cranfield`` matches qrels on query *labels* and uses the raw codes as gains (both wrong, see
    :func:`read_cranfield`); read the Cranfield directory instead.
    """
    docs, queries, triples = irds_records(ident)
    judged = Judgments(queries, docs, drop_unknown=drop_unknown)
    seen: set[tuple[str, str]] = set()
    for i, (qid, docid, rel) in enumerate(triples, 1):
        if (qid, docid) not in seen:  # some ir_datasets qrels repeat a pair (several iterations): the first counts
            seen.add((qid, docid))
            judged.add(qid, docid, max(rel, 0), f"irds:{ident} qrels #{i}")
    judged.report(f"irds:{ident}")
    if not docs or not queries or not judged.qrels:
        raise CollectionFormatError(f"irds:{ident}: empty collection ({len(docs)} documents, {len(queries)} queries, "
                                    f"{len(judged.qrels)} judged queries)")  # fmt: skip
    return Collection(docs=docs, queries=queries, qrels=judged.qrels, name=f"irds:{ident}")


def _finish(root: Path, docs: dict, queries: dict, qrels: Qrels) -> Collection:
    if not docs or not queries:
        raise CollectionFormatError(f"{root}: empty collection ({len(docs)} documents, {len(queries)} queries)")
    if not qrels:
        raise CollectionFormatError(f"{root}: no judgments left, nothing can be evaluated")
    return Collection(docs=docs, queries=queries, qrels=qrels, name=root.resolve().name)


def merge_collections(collections: Sequence[Collection]) -> Collection:
    """Several collections as one (training on more than one): every query and document id becomes
    ``<collection name>/<id>`` so nothing collides, and judgments stay within their collection.

    >>> a = Collection({"1": "wing lift"}, {"1": "lift"}, {"1": {"1": 1}}, name="cran")
    >>> b = Collection({"1": "blood cells"}, {"1": "cells"}, {"1": {"1": 2}}, name="med")
    >>> m = merge_collections([a, b])
    >>> m.name, sorted(m.docs), m.qrels["med/1"]
    ('cran+med', ['cran/1', 'med/1'], {'med/1': 2})
    """
    names = [c.name for c in collections]
    if len(set(names)) != len(names):
        raise CollectionFormatError(f"collections to merge need distinct names (their folders' names), got {names}")
    docs = {f"{c.name}/{d}": text for c in collections for d, text in c.docs.items()}
    queries = {f"{c.name}/{q}": text for c in collections for q, text in c.queries.items()}
    qrels = {f"{c.name}/{q}": {f"{c.name}/{d}": g for d, g in judged.items()}
             for c in collections for q, judged in c.qrels.items()}  # fmt: skip
    return Collection(docs=docs, queries=queries, qrels=qrels, name="+".join(names))


def load_collection(path: str | os.PathLike, *, split: str = "test", drop_unknown: bool = False) -> Collection:
    """Read a collection, detecting the layout: ``irds:<id>`` (``ir_datasets``' local cache), SMART (Cranfield
    ``cran.all.1400``, CISI ``CISI.ALL``, MED ``MED.ALL``), BEIR (``corpus.jsonl``) or TREC (topics + documents +
    qrels; TSV or SGML). ``split`` only matters for BEIR. ``drop_unknown``: judgments naming a query or document the
    collection lacks are dropped, counted and reported (one warning) instead of refused. Several paths separated by
    commas are read as one collection (:func:`merge_collections`: ids prefixed by each collection's name)."""
    if len(parts := [x.strip() for x in str(path).split(",") if x.strip()]) > 1:
        return merge_collections([load_collection(x, split=split, drop_unknown=drop_unknown) for x in parts])
    if str(path).startswith("irds:"):
        return read_irds(str(path)[len("irds:") :], drop_unknown=drop_unknown)
    root = Path(path)
    root = root.parent if root.is_file() else root
    if not root.is_dir():
        raise CollectionFormatError(f"{root}: no such directory")
    for name, spec in SMART_LAYOUTS.items():
        if (root / spec.docs).is_file():
            return read_smart(root, name, drop_unknown=drop_unknown)
    if (root / "corpus.jsonl").is_file():
        return read_beir(root, split, drop_unknown=drop_unknown)
    if any((root / name).is_file() for name in _TREC_TOPICS):
        return read_trec(root, drop_unknown=drop_unknown)
    smart = ", ".join(f"{s.docs} + {s.queries} + {s.qrels} ({n})" for n, s in SMART_LAYOUTS.items())
    raise CollectionFormatError(
        f"{root}: cannot tell the layout; expected {smart}, corpus.jsonl + queries.jsonl + qrels/<split>.tsv (BEIR), "
        f"{'/'.join(_TREC_DOCS + _TREC_SGML_DOCS)} + {'/'.join(_TREC_TOPICS)} + {'/'.join(_TREC_QRELS)} (TREC), "
        "or irds:<ir_datasets id>"
    )


# ---------------------------------------------------------------------------------------------- splits, runs
def split_queries(collection: Collection, test_fraction: float = 1 / 3, seed: int = 0, *,
                  judged_only: bool = True, fold: int = 0) -> tuple[list[str], list[str]]:  # fmt: skip
    """Deterministic train/test split of query ids.

    ``round(test_fraction * n)`` queries, drawn by ``np.random.default_rng(seed).permutation``, go to test;
    both lists keep the collection's query order. With ``judged_only`` only :attr:`Collection.judged_qids`
    are split (queries no metric can score are left out). Cranfield, 1/3, seed 0: 150 train / 75 test.

    ``fold`` f takes the f-th slice of that permutation as the test set (fold 0 is the split above), so folds
    0 .. ``n // n_test - 1`` hold out disjoint query sets: k-fold cross-validation over queries.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    qids = collection.judged_qids if judged_only else list(collection.queries)
    n_test = round(test_fraction * len(qids))
    if not 0 < n_test < len(qids):
        raise ValueError(f"test_fraction {test_fraction} of {len(qids)} queries leaves an empty split")
    n_folds = len(qids) // n_test
    if not 0 <= fold < n_folds:
        raise ValueError(f"fold {fold} out of range: test_fraction {test_fraction} of {len(qids)} queries gives "
                         f"folds 0..{n_folds - 1}")  # fmt: skip
    perm = np.random.default_rng(seed).permutation(len(qids))
    test = set(perm[fold * n_test : (fold + 1) * n_test].tolist())
    return [q for i, q in enumerate(qids) if i not in test], [q for i, q in enumerate(qids) if i in test]


def _ranked(scores: Mapping[str, float]) -> list[tuple[str, float]]:
    """Descending by score; ties keep insertion order (Python's sort is stable)."""
    return sorted(scores.items(), key=lambda kv: -kv[1])


def candidates(run: Mapping[str, Mapping[str, float]], qid: str, k: int) -> list[str]:
    """The top-``k`` doc ids of ``qid`` in ``run`` by descending score (ties: run order); [] if absent."""
    return [docid for docid, _ in _ranked(run.get(qid, {}))[:k]]


def write_run(run: Mapping[str, Mapping[str, float]], path: str | os.PathLike, tag: str = "rankrl") -> Path:
    """Write ``run`` as a TREC run file (``qid Q0 docid rank score tag``), atomically (temp file + rename).

    Ranks start at 1 in descending-score order; scores are written with ``repr`` so :func:`read_run` gives back
    the same floats.
    """
    if not tag or any(c.isspace() for c in tag):
        raise ValueError(f"run tag must be non-empty without whitespace, got {tag!r}")
    lines = []
    for qid, scores in run.items():
        for rank, (docid, score) in enumerate(_ranked(scores), 1):
            if any(c.isspace() for c in qid + docid) or not qid or not docid:
                raise ValueError(f"ids in a run file cannot be empty or contain whitespace: {qid!r}, {docid!r}")
            lines.append(f"{qid} Q0 {docid} {rank} {float(score)!r} {tag}\n")
    return atomic_write_text(path, "".join(lines))


def read_run(path: str | os.PathLike) -> Run:
    """Read a TREC run file (``qid Q0 docid rank score tag``) into ``{qid: {docid: score}}``, file order kept."""
    path = Path(path)
    run: Run = {}
    for n, line in read_lines(path):
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) != 6:
                raise ValueError
            qid, _, docid, _, score = parts[0], parts[1], parts[2], int(parts[3]), float(parts[4])
        except ValueError:
            raise CollectionFormatError(f"{path}:{n}: expected 'qid Q0 docid rank score tag', got {line[:80]!r}"
                                        ) from None  # fmt: skip
        if docid in run.setdefault(qid, {}):
            raise CollectionFormatError(f"{path}:{n}: doc {docid!r} listed twice for query {qid!r}")
        run[qid][docid] = score
    return run
