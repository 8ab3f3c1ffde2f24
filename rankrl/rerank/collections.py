"""Test collections for reranker training: documents, queries, judgments, query splits and TREC run files.

A :class:`Collection` holds document and query texts and graded judgments (``qrels``: query id -> doc id ->
integer gain, 0 = judged non-relevant). :func:`load_collection` reads one of three on-disk layouts::

    load_collection("../shared/data/cranfield")   # cran.all.1400 + cran.qry + cranqrel (SMART dot format)
    load_collection("path/to/beir/scifact")         # corpus.jsonl + queries.jsonl + qrels/test.tsv
    load_collection("path/to/trec_dir")             # docs.tsv + topics.tsv + qrels.txt

The first stage (BM25) is :mod:`rankrl.rerank.bm25`; metrics of runs are :mod:`rankrl.rerank.metrics`
(``ir-measures``, pytrec_eval underneath, never hand-written).

Malformed files raise :class:`CollectionFormatError` naming ``file:line``. Judgments naming an unknown query or
document are an error by default; ``drop_unknown=True`` drops them and emits one warning with the counts.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rankrl.atomic import atomic_write_text
from rankrl.rerank.metrics import Qrels, Run
from rankrl.tasks import TaskFormatError

__all__ = [
    "Collection",
    "CollectionFormatError",
    "candidates",
    "load_collection",
    "read_beir",
    "read_cranfield",
    "read_run",
    "read_trec",
    "split_queries",
    "write_run",
]


class CollectionFormatError(TaskFormatError):
    """A collection file is missing, empty or malformed; the message names the file and 1-based line."""


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


# ---------------------------------------------------------------------------------------------- reading
def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Lines with 1-based numbers, CR stripped (Cranfield is CRLF); a missing or empty file is an error."""
    if not path.is_file():
        raise CollectionFormatError(f"{path}: file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise CollectionFormatError(f"{path}:{line}: expected UTF-8 text ({err.reason})") from None
    if not text.strip():
        raise CollectionFormatError(f"{path}: file is empty")
    yield from ((n, line.rstrip("\r")) for n, line in enumerate(text.split("\n"), 1))


def _join(lines: Iterable[str]) -> str:
    return " ".join(" ".join(lines).split())


def _parse_smart(path: Path, fields: str) -> list[tuple[str, dict[str, str], int]]:
    """Records of a SMART dot file: (``.I`` label, field letter -> text, line of the ``.I``)."""
    records: list[tuple[str, dict[str, list[str]], int]] = []
    field = None
    for n, line in _lines(path):
        if line.startswith(".I"):
            label = line[2:].strip()
            if not label or line[2:3] not in (" ", "\t"):
                raise CollectionFormatError(f"{path}:{n}: expected '.I <id>', got {line[:80]!r}")
            records.append((label, {}, n))
            field = None
        elif re.fullmatch(r"\.[A-Z]\s*", line):
            field = line[1]
            if field not in fields:
                raise CollectionFormatError(f"{path}:{n}: unknown field marker {line.strip()!r}; expected "
                                            f"{', '.join('.' + f for f in fields)}")  # fmt: skip
            if not records:
                raise CollectionFormatError(f"{path}:{n}: field {line.strip()!r} before the first '.I'")
            records[-1][1].setdefault(field, [])
        elif line.strip():
            if field is None:
                raise CollectionFormatError(f"{path}:{n}: text outside a field (expected '.I' or a field marker)")
            records[-1][1][field].append(line)
    if not records:
        raise CollectionFormatError(f"{path}: no '.I' records")
    return [(label, {f: _join(t) for f, t in body.items()}, n) for label, body, n in records]


def _unknown_report(path: Path, dropped: Counter, drop_unknown: bool) -> None:
    if dropped and drop_unknown:
        warnings.warn(
            f"{path}: dropped {dropped['query']} judgments naming unknown queries and {dropped['doc']} naming "
            "unknown documents (drop_unknown=True)",
            stacklevel=3,
        )


def _add_judgment(qrels: Qrels, seen: dict, qid: str, docid: str, gain: int, *, where: str,
                  known: tuple[Mapping, Mapping], dropped: Counter, drop_unknown: bool) -> None:  # fmt: skip
    """Store one judgment after the unknown-id and duplicate checks."""
    for kind, ident, pool in (("query", qid, known[0]), ("doc", docid, known[1])):
        if ident not in pool:
            if drop_unknown:
                dropped[kind] += 1
                return
            raise CollectionFormatError(f"{where}: judgment names unknown {kind} {ident!r} (pass drop_unknown=True "
                                        "to drop such lines with a warning)")  # fmt: skip
    if (qid, docid) in seen:
        raise CollectionFormatError(f"{where}: duplicate judgment of query {qid!r}, doc {docid!r} "
                                    f"(first at {seen[qid, docid]})")  # fmt: skip
    seen[qid, docid] = where
    qrels.setdefault(qid, {})[docid] = gain


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

    Args:
        path: the directory (or any file inside it).
        drop_unknown: drop judgments naming an unknown query/doc with one counted warning instead of raising.
    """
    root = Path(path)
    root = root.parent if root.is_file() else root
    docs: dict[str, str] = {}
    for label, body, n in _parse_smart(root / "cran.all.1400", "TABW"):
        label = str(int(label)) if label.isdigit() else label  # cranqrel writes doc ids as plain integers
        if label in docs:
            raise CollectionFormatError(f"{root / 'cran.all.1400'}:{n}: duplicate doc id {label!r}")
        docs[label] = _join([body.get("T", ""), body.get("W", "")])
    queries: dict[str, str] = {}
    for i, (_, body, n) in enumerate(_parse_smart(root / "cran.qry", "W"), 1):
        if not body.get("W"):
            raise CollectionFormatError(f"{root / 'cran.qry'}:{n}: query has no '.W' text")
        queries[str(i)] = body["W"]
    qrels: Qrels = {}
    seen: dict = {}
    dropped: Counter = Counter()
    qrel_path = root / "cranqrel"
    for n, line in _lines(qrel_path):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 3 or not all(re.fullmatch(r"-?\d+", p) for p in parts):
            raise CollectionFormatError(f"{qrel_path}:{n}: expected 'query_no doc_id code' (3 integers), "
                                        f"got {line[:80]!r}")  # fmt: skip
        code = int(parts[2])
        if code not in (-1, 1, 2, 3, 4):
            raise CollectionFormatError(f"{qrel_path}:{n}: relevance code must be -1 or 1..4, got {code}")
        gain = 5 - code if code > 0 else 0
        _add_judgment(qrels, seen, str(int(parts[0])), str(int(parts[1])), gain, where=f"{qrel_path}:{n}",
                      known=(queries, docs), dropped=dropped, drop_unknown=drop_unknown)  # fmt: skip
    _unknown_report(qrel_path, dropped, drop_unknown)
    return _finish(root, docs, queries, qrels)


def _read_jsonl(path: Path, keys: tuple[str, ...]) -> Iterator[tuple[str, dict]]:
    for n, line in _lines(path):
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
        docs[_unique(str(rec["_id"]), docs, where, "doc")] = _join([str(rec.get("title") or ""), str(rec["text"])])
    queries: dict[str, str] = {}
    for where, rec in _read_jsonl(root / "queries.jsonl", ("_id", "text")):
        queries[_unique(str(rec["_id"]), queries, where, "query")] = _join([str(rec["text"])])
    qrel_path = root / "qrels" / f"{split}.tsv"
    if not qrel_path.is_file():
        have = sorted(p.stem for p in (root / "qrels").glob("*.tsv"))
        raise CollectionFormatError(f"{qrel_path}: file not found (splits present: {have})")
    qrels: Qrels = {}
    seen: dict = {}
    dropped: Counter = Counter()
    lines = _lines(qrel_path)
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
        _add_judgment(qrels, seen, parts[0].strip(), parts[1].strip(), max(int(parts[2]), 0),
                      where=f"{qrel_path}:{n}", known=(queries, docs), dropped=dropped,
                      drop_unknown=drop_unknown)  # fmt: skip
    _unknown_report(qrel_path, dropped, drop_unknown)
    queries = {q: t for q, t in queries.items() if q in qrels}
    return _finish(root, docs, queries, qrels)


_TREC_DOCS = ("docs.tsv", "collection.tsv")
_TREC_TOPICS = ("topics.tsv", "queries.tsv")
_TREC_QRELS = ("qrels.txt", "qrels", "qrels.trec")


def _first(root: Path, names: tuple[str, ...], role: str) -> Path:
    for name in names:
        if (root / name).is_file():
            return root / name
    raise CollectionFormatError(f"{root}: no {role} file (expected one of {list(names)})")


def _unique(ident: str, pool: Mapping, where: str, kind: str) -> str:
    if not ident or any(c.isspace() for c in ident):
        raise CollectionFormatError(f"{where}: {kind} id must be non-empty without whitespace, got {ident!r}")
    if ident in pool:
        raise CollectionFormatError(f"{where}: duplicate {kind} id {ident!r}")
    return ident


def _read_tsv(path: Path, kind: str, max_fields: int) -> dict[str, str]:
    out: dict[str, str] = {}
    for n, line in _lines(path):
        if not line.strip():
            continue
        parts = line.split("\t")
        if not 2 <= len(parts) <= max_fields:
            shape = "id<TAB>text" + (" or id<TAB>title<TAB>text" if max_fields == 3 else "")
            raise CollectionFormatError(f"{path}:{n}: expected {shape}, got {line[:80]!r}")
        out[_unique(parts[0].strip(), out, f"{path}:{n}", kind)] = _join(parts[1:])
    return out


def read_trec(path: str | os.PathLike, *, drop_unknown: bool = False) -> Collection:
    """Read a TREC-style directory: docs (``docs.tsv`` or ``collection.tsv``: ``docid<TAB>text`` or
    ``docid<TAB>title<TAB>text``), topics (``topics.tsv`` or ``queries.tsv``: ``qid<TAB>text``) and qrels
    (``qrels.txt``, ``qrels`` or ``qrels.trec``: ``qid iter docid rel``, whitespace-separated; negative
    grades, used by some tracks for junk, are stored as gain 0)."""
    root = Path(path)
    docs = _read_tsv(_first(root, _TREC_DOCS, "documents"), "doc", 3)
    queries = _read_tsv(_first(root, _TREC_TOPICS, "topics"), "query", 2)
    qrel_path = _first(root, _TREC_QRELS, "qrels")
    qrels: Qrels = {}
    seen: dict = {}
    dropped: Counter = Counter()
    for n, line in _lines(qrel_path):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 4 or not re.fullmatch(r"-?\d+", parts[3]):
            raise CollectionFormatError(f"{qrel_path}:{n}: expected 'qid iter docid rel' with an integer rel, "
                                        f"got {line[:80]!r}")  # fmt: skip
        _add_judgment(qrels, seen, parts[0], parts[2], max(int(parts[3]), 0), where=f"{qrel_path}:{n}",
                      known=(queries, docs), dropped=dropped, drop_unknown=drop_unknown)  # fmt: skip
    _unknown_report(qrel_path, dropped, drop_unknown)
    return _finish(root, docs, queries, qrels)


def _finish(root: Path, docs: dict, queries: dict, qrels: Qrels) -> Collection:
    if not docs or not queries:
        raise CollectionFormatError(f"{root}: empty collection ({len(docs)} documents, {len(queries)} queries)")
    if not qrels:
        raise CollectionFormatError(f"{root}: no judgments left, nothing can be evaluated")
    return Collection(docs=docs, queries=queries, qrels=qrels, name=root.resolve().name)


def load_collection(path: str | os.PathLike, *, split: str = "test", drop_unknown: bool = False) -> Collection:
    """Read a collection, detecting the layout: Cranfield (``cran.all.1400``), BEIR (``corpus.jsonl``) or
    TREC (``topics.tsv``/``queries.tsv`` + qrels). ``split`` only matters for BEIR."""
    root = Path(path)
    root = root.parent if root.is_file() else root
    if not root.is_dir():
        raise CollectionFormatError(f"{root}: no such directory")
    if (root / "cran.all.1400").is_file():
        return read_cranfield(root, drop_unknown=drop_unknown)
    if (root / "corpus.jsonl").is_file():
        return read_beir(root, split, drop_unknown=drop_unknown)
    if any((root / name).is_file() for name in _TREC_TOPICS):
        return read_trec(root, drop_unknown=drop_unknown)
    raise CollectionFormatError(
        f"{root}: cannot tell the layout; expected cran.all.1400 + cran.qry + cranqrel (Cranfield), corpus.jsonl"
        f" + queries.jsonl + qrels/<split>.tsv (BEIR) or {'/'.join(_TREC_DOCS)} + {'/'.join(_TREC_TOPICS)} + "
        f"{'/'.join(_TREC_QRELS)} (TREC)"
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
    for n, line in _lines(path):
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
