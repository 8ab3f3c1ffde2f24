"""File formats of IR test collections, parsed into plain dicts (no :class:`~rankrl.rerank.collections.Collection`).

:mod:`rankrl.rerank.collections` builds collections from these pieces:

* :func:`read_lines`: a text file (``.gz`` too) as numbered lines, CR stripped (Cranfield, CISI and MED are CRLF).
* :func:`parse_smart`: the records of a SMART "dot" file (``.I <id>`` then ``.T``/``.W``/... field markers);
  marker lines may carry trailing spaces (CISI's ``.W  ``).
* :func:`parse_sgml_docs` / :func:`parse_trec_topics`: TREC SGML documents (``<DOC><DOCNO>..</DOCNO><TEXT>..``)
  and topics (``<top><num> Number: 301 <title> ..``).
* :class:`Judgments`: qrels accumulated with the unknown-id and duplicate checks; unknown ids are an error naming
  ``--drop_unknown`` unless it is set, then they are dropped, counted and reported.
* :func:`irds_records`: documents, queries and qrels of an ``ir_datasets`` id from its local cache.

Every error is a :class:`CollectionFormatError` naming ``file:line`` and what was expected.
"""

from __future__ import annotations

import gzip
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from rankrl.tasks import TaskFormatError

__all__ = [
    "CollectionFormatError",
    "Judgments",
    "check_id",
    "irds_records",
    "join_text",
    "parse_sgml_docs",
    "parse_smart",
    "parse_trec_topics",
    "read_lines",
    "read_text",
]


class CollectionFormatError(TaskFormatError):
    """A collection file is missing, empty or malformed; the message names the file and 1-based line."""


def read_text(path: Path) -> str:
    """The whole file as UTF-8 text (gunzipped when it ends in ``.gz``); missing or empty files are errors."""
    if not path.is_file():
        raise CollectionFormatError(f"{path}: file not found")
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise CollectionFormatError(f"{path}:{line}: expected UTF-8 text ({err.reason})") from None
    if not text.strip():
        raise CollectionFormatError(f"{path}: file is empty")
    return text


def read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Lines with 1-based numbers, CR stripped; a missing or empty file is an error."""
    yield from ((n, line.rstrip("\r")) for n, line in enumerate(read_text(path).split("\n"), 1))


def join_text(lines: Iterable[str]) -> str:
    """The texts joined by single spaces (runs of whitespace collapsed, empty parts dropped)."""
    return " ".join(" ".join(lines).split())


def check_id(ident: str, pool: Mapping, where: str, kind: str) -> str:
    """``ident`` if it is non-empty, has no whitespace and is not yet in ``pool``; else an error at ``where``."""
    if not ident or any(c.isspace() for c in ident):
        raise CollectionFormatError(f"{where}: {kind} id must be non-empty without whitespace, got {ident!r}")
    if ident in pool:
        raise CollectionFormatError(f"{where}: duplicate {kind} id {ident!r}")
    return ident


def parse_smart(path: Path, fields: str) -> list[tuple[str, dict[str, str], int]]:
    """Records of a SMART dot file: (``.I`` label, field letter -> text, line of the ``.I``).

    A marker line is ``.<letter>`` alone (trailing spaces allowed); ``fields`` lists the letters allowed, any other
    marker is an error (so a text line cannot be mistaken for a new field unnoticed).
    """
    records: list[tuple[str, dict[str, list[str]], int]] = []
    field = None
    for n, line in read_lines(path):
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
    return [(label, {f: join_text(t) for f, t in body.items()}, n) for label, body, n in records]


class Judgments:
    """Qrels being read: ``add`` checks ids against the known queries/docs and refuses duplicates.

    A judgment naming an unknown query or document raises (the message names ``--drop_unknown``) unless
    ``drop_unknown``; then it is dropped and counted in :attr:`dropped`, and :meth:`report` warns with the counts.
    """

    def __init__(self, queries: Mapping, docs: Mapping, *, drop_unknown: bool = False) -> None:
        self.known = {"query": queries, "doc": docs}
        self.drop_unknown = drop_unknown
        self.qrels: dict[str, dict[str, int]] = {}
        self.dropped: Counter = Counter()
        self._seen: dict[tuple[str, str], str] = {}

    def add(self, qid: str, docid: str, gain: int, where: str) -> None:
        for kind, ident in (("query", qid), ("doc", docid)):
            if ident not in self.known[kind]:
                if self.drop_unknown:
                    self.dropped[kind] += 1
                    return
                raise CollectionFormatError(f"{where}: judgment names unknown {kind} {ident!r} (pass "
                                            "--drop_unknown, or drop_unknown=True, to drop such judgments with a "
                                            "counted warning)")  # fmt: skip
        if (qid, docid) in self._seen:
            raise CollectionFormatError(f"{where}: duplicate judgment of query {qid!r}, doc {docid!r} "
                                        f"(first at {self._seen[qid, docid]})")  # fmt: skip
        self._seen[qid, docid] = where
        self.qrels.setdefault(qid, {})[docid] = gain

    def report(self, source: object) -> None:
        """One warning with the counts of dropped judgments (none when nothing was dropped)."""
        if self.dropped:
            warnings.warn(f"{source}: dropped {self.dropped['query']} judgments naming unknown queries and "
                          f"{self.dropped['doc']} naming unknown documents (--drop_unknown)", stacklevel=3)  # fmt: skip


# ---------------------------------------------------------------------------------------------- TREC SGML
_TAG = re.compile(r"<(/?)([A-Za-z]+)[^>]*>")
_TEXT_TAGS = ("HEAD", "HEADLINE", "TITLE", "TEXT")


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def parse_sgml_docs(path: Path) -> Iterator[tuple[str, str, str]]:
    """(docno, text, ``file:line``) of every ``<DOC>`` in a TREC SGML file (``.gz`` too).

    The text is the content of the ``<HEAD>``, ``<HEADLINE>``, ``<TITLE>`` and ``<TEXT>`` elements in file order,
    inner tags (``<P>``) removed; a document without any of them is an error, as is one without ``<DOCNO>``.
    """
    text = read_text(path)
    found = False
    for m in re.finditer(r"<DOC>(.*?)</DOC>", text, flags=re.S | re.I):
        found = True
        body, where = m.group(1), f"{path}:{_line_of(text, m.start())}"
        no = re.search(r"<DOCNO>(.*?)</DOCNO>", body, flags=re.S | re.I)
        if no is None:
            raise CollectionFormatError(f"{where}: <DOC> without <DOCNO>..</DOCNO>")
        parts = [p for tag in _TEXT_TAGS for p in re.findall(rf"<{tag}>(.*?)</{tag}>", body, flags=re.S | re.I)]
        if not parts and not re.search(r"<TEXT>", body, flags=re.I):
            raise CollectionFormatError(f"{where}: <DOC> without <TEXT>..</TEXT>")
        yield no.group(1).strip(), join_text(_TAG.sub(" ", p) for p in parts), where
    if not found:
        raise CollectionFormatError(f"{path}: no <DOC>..</DOC> records (expected TREC SGML documents)")


_TOPIC_FIELD = re.compile(r"<(num|title|desc|narr)>", flags=re.I)
_TOPIC_LABEL = re.compile(r"^\s*(Number|Topic|Description|Narrative)\s*:", flags=re.I)


def parse_trec_topics(path: Path) -> Iterator[tuple[str, dict[str, str], str]]:
    """(topic number, field -> text, ``file:line``) of every ``<top>`` of a TREC topics file.

    Fields are ``num``, ``title``, ``desc``, ``narr``; each runs to the next field tag (closing tags optional, as
    in the classic TREC files); labels such as ``Number:`` and ``Description:`` are removed.
    """
    text = read_text(path)
    found = False
    for m in re.finditer(r"<top>(.*?)</top>", text, flags=re.S | re.I):
        found = True
        body, where = m.group(1), f"{path}:{_line_of(text, m.start())}"
        marks = list(_TOPIC_FIELD.finditer(body))
        fields = {}
        for i, mark in enumerate(marks):
            end = marks[i + 1].start() if i + 1 < len(marks) else len(body)
            value = _TAG.sub(" ", body[mark.end() : end])
            fields[mark.group(1).lower()] = join_text([_TOPIC_LABEL.sub("", value, count=1)])
        num = fields.get("num", "")
        if not num or any(c.isspace() for c in num):
            raise CollectionFormatError(f"{where}: expected '<num> Number: <id>' in the topic, got {num!r}")
        if not (fields.get("title") or fields.get("desc")):
            raise CollectionFormatError(f"{where}: topic {num!r} has no <title> or <desc> text")
        yield num, fields, where
    if not found:
        raise CollectionFormatError(f"{path}: no <top>..</top> topics (expected TREC SGML topics)")


# ---------------------------------------------------------------------------------------------- ir_datasets
def _irds_text(record: object, skip: tuple[str, ...]) -> str:
    if hasattr(record, "default_text"):
        return join_text([record.default_text()])
    return join_text(str(v) for k, v in record._asdict().items() if k not in skip and isinstance(v, str))


def irds_records(ident: str) -> tuple[dict[str, str], dict[str, str], list[tuple[str, str, int]]]:
    """Documents, queries and (query, doc, relevance) triples of the ``ir_datasets`` data set ``ident``.

    Only the local cache is used in practice (``$IR_DATASETS_HOME``, default ``~/.ir_datasets``): where
    ``ir_datasets`` cannot read or download the files, the error says how to get them.
    """
    try:
        import ir_datasets
    except ImportError:
        raise CollectionFormatError(f"irds:{ident}: reading ir_datasets collections needs the ir_datasets package "
                                    "(pip install ir_datasets)") from None  # fmt: skip
    try:
        ds = ir_datasets.load(ident)
    except KeyError:
        raise CollectionFormatError(f"irds:{ident}: no such ir_datasets id (see https://ir-datasets.com for the ids)"
                                    ) from None  # fmt: skip
    missing = [part for part in ("docs", "queries", "qrels") if not getattr(ds, f"has_{part}")()]
    if missing:
        raise CollectionFormatError(f"irds:{ident}: the data set has no {', '.join(missing)}; use an id with "
                                    "documents, queries and qrels (e.g. a test split)")  # fmt: skip
    try:
        docs = {str(d.doc_id): _irds_text(d, ("doc_id",)) for d in ds.docs_iter()}
        queries = {str(q.query_id): _irds_text(q, ("query_id",)) for q in ds.queries_iter()}
        qrels = [(str(r.query_id), str(r.doc_id), int(r.relevance)) for r in ds.qrels_iter()]
    except ImportError as err:  # some data sets need an extra (e.g. beautifulsoup4 for TREC SGML)
        raise CollectionFormatError(f"irds:{ident}: ir_datasets needs another package for this data set: {err}"
                                    ) from None  # fmt: skip
    except Exception as err:  # ir_datasets raises its own download errors (and OSError/IOError) when offline
        from ir_datasets.util import home_path

        raise CollectionFormatError(
            f"irds:{ident}: ir_datasets could not read the data from its cache ({home_path()}) and could not download "
            f"it here ({type(err).__name__}: {str(err)[:200]}). On a machine with network run: python -c \"import "
            f"ir_datasets; d = ir_datasets.load('{ident}'); [list(i) for i in (d.docs_iter(), d.queries_iter(), "
            "d.qrels_iter())]\" and copy that cache directory here (or point IR_DATASETS_HOME at it)"
        ) from None
    return docs, queries, qrels
