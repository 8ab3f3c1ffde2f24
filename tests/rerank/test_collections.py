"""IR pieces: collection readers (Cranfield traps, BEIR, TREC), splits, run files, BM25, ir-measures metrics."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from rankrl.rerank.collections import (
    Collection,
    CollectionFormatError,
    candidates,
    load_collection,
    read_cranfield,
    read_run,
    split_queries,
    write_run,
)
from tests.rerank.tiny import tiny_trec


def _write(path: Path, text: str, crlf: bool = False) -> None:
    path.write_bytes(text.replace("\n", "\r\n" if crlf else "\n").encode())


def tiny_cranfield(root: Path, qrels: str | None = None) -> Path:
    """Three docs, three queries labelled 001/002/004 (as in cran.qry), CRLF line endings."""
    root.mkdir(parents=True, exist_ok=True)
    docs = (
        ".I 1\n.T\nwing lift .\n.A\nsmith\n.B\nj. ae. 1958\n.W\nwing lift in a\nslipstream .\n"
        ".I 2\n.T\nheat conduction .\n.A\n.B\n.W\nheat conduction in slabs .\n.I 3\n.T\n.A\n.B\n.W\n"
    )
    _write(root / "cran.all.1400", docs, crlf=True)
    _write(root / "cran.qry", ".I 001\n.W\nwing lift in a slipstream .\n.I 002\n.W\nflutter of panels .\n"
           ".I 004\n.W\nwhat problems of heat conduction\nin composite slabs .\n", crlf=True)  # fmt: skip
    _write(root / "cranqrel", qrels or "1 1 1 \n1 2 -1 \n2 1 4 \n3 2 2 \n3 1 3 \n", crlf=True)
    return root


# ---------------------------------------------------------------------------------------------- readers
def test_tiny_cranfield_file_order_mapping_and_gains(tmp_path):
    coll = load_collection(tiny_cranfield(tmp_path / "cran"))
    assert list(coll.queries) == ["1", "2", "3"]  # ids are file positions, not the .I labels 001/002/004
    assert coll.queries["3"] == "what problems of heat conduction in composite slabs ."  # label 004, no CR left
    assert coll.docs["1"] == "wing lift . wing lift in a slipstream ."  # title + abstract, authors dropped
    assert coll.docs["3"] == ""
    assert coll.qrels == {"1": {"1": 4, "2": 0}, "2": {"1": 1}, "3": {"2": 3, "1": 2}}  # gain 5 - code, -1 -> 0
    assert coll.n_qrels == 5 and coll.judged_qids == ["1", "2", "3"]


def test_cranfield_counts_and_traps(cranfield):
    assert (len(cranfield.docs), len(cranfield.queries), cranfield.n_qrels) == (1400, 225, 1837)
    gains = Counter(g for judged in cranfield.qrels.values() for g in judged.values())
    assert gains == {0: 225, 4: 128, 3: 387, 2: 734, 1: 363}  # codes -1, 1, 2, 3, 4 of the README
    assert cranfield.queries["3"].startswith("what problems of heat conduction in composite slabs")  # .I 004
    assert cranfield.docs["471"] == cranfield.docs["995"] == ""  # empty records in the source
    assert len(cranfield.judged_qids) == 225


@pytest.mark.parametrize(
    "qrels, match",
    [
        ("1 1 1 \n1 2\n", r"cranqrel:2: expected 'query_no doc_id code'"),
        ("1 1 1 \n1 x 2 \n", r"cranqrel:2: expected"),
        ("1 1 5 \n", r"cranqrel:1: relevance code must be -1 or 1..4"),
        ("1 1 1 \n4 1 2 \n", r"cranqrel:2: judgment names unknown query '4'"),
        ("1 9 1 \n", r"cranqrel:1: judgment names unknown doc '9'"),
        ("1 1 1 \n1 1 2 \n", r"cranqrel:2: duplicate judgment .*first at .*cranqrel:1\)"),
        ("\n\n", r"cranqrel: file is empty"),
    ],
)
def test_malformed_qrels_name_file_and_line(tmp_path, qrels, match):
    with pytest.raises(CollectionFormatError, match=match):
        read_cranfield(tiny_cranfield(tmp_path / "c", qrels=qrels))


def test_unknown_ids_can_be_dropped_with_a_counted_warning(tmp_path):
    root = tiny_cranfield(tmp_path / "c", qrels="1 1 1 \n4 1 2 \n5 1 2 \n2 7 1 \n")
    with pytest.warns(UserWarning, match="dropped 2 judgments naming unknown queries and 1 naming unknown doc"):
        coll = load_collection(root, drop_unknown=True)
    assert coll.qrels == {"1": {"1": 4}}


def test_malformed_documents_and_empty_collections(tmp_path):
    root = tiny_cranfield(tmp_path / "c")
    _write(root / "cran.all.1400", ".I 1\n.T\nok\n.X\nbad\n")
    with pytest.raises(CollectionFormatError, match=r"cran.all.1400:4: unknown field marker '.X'"):
        read_cranfield(root)
    _write(root / "cran.all.1400", "stray text\n.I 1\n")
    with pytest.raises(CollectionFormatError, match=r"cran.all.1400:1: text outside a field"):
        read_cranfield(root)
    _write(root / "cran.all.1400", "")
    with pytest.raises(CollectionFormatError, match="cran.all.1400: file is empty"):
        read_cranfield(root)
    with pytest.raises(CollectionFormatError, match="cannot tell the layout"):
        load_collection(tmp_path)
    with pytest.raises(ValueError, match="at least one document"):
        Collection(docs={}, queries={"q": "x"}, qrels={})
    with pytest.raises(ValueError, match="unknown doc"):
        Collection(docs={"d": "x"}, queries={"q": "x"}, qrels={"q": {"e": 1}})


def test_trec_layout(tmp_path):
    coll = load_collection(tiny_trec(tmp_path / "t"))
    assert coll.docs["d2"] == "Title heat conduction slabs"
    assert coll.qrels == {"q1": {"d1": 2, "d3": 0}, "q2": {"d2": 1}, "q3": {"d3": 0, "d1": 1}}  # -2 -> 0
    (tmp_path / "t" / "qrels.txt").write_text("q1 0 d1 2\nq1 0 d2\n")
    with pytest.raises(CollectionFormatError, match=r"qrels.txt:2: expected 'qid iter docid rel'"):
        load_collection(tmp_path / "t")
    (tmp_path / "t" / "qrels.txt").write_text("q1 0 d1 2\n")
    (tmp_path / "t" / "topics.tsv").write_text("q1\twing\nq1\tagain\n")
    with pytest.raises(CollectionFormatError, match=r"topics.tsv:2: duplicate query id 'q1'"):
        load_collection(tmp_path / "t")


def test_beir_layout(tmp_path):
    root = tmp_path / "beir"
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text(
        '{"_id": "d1", "title": "Wing", "text": "lift"}\n{"_id": "d2", "text": "heat"}\n'
    )
    (root / "queries.jsonl").write_text('{"_id": "q1", "text": "wing lift"}\n{"_id": "q9", "text": "train only"}\n')
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t0\n")
    coll = load_collection(root)
    assert coll.docs == {"d1": "Wing lift", "d2": "heat"} and list(coll.queries) == ["q1"]  # only judged
    assert coll.qrels == {"q1": {"d1": 1, "d2": 0}}
    with pytest.raises(CollectionFormatError, match=r"splits present: \['test'\]"):
        load_collection(root, split="dev")
    (root / "corpus.jsonl").write_text('{"_id": "d1", "text": "x"}\n{"text": "no id"}\n')
    with pytest.raises(CollectionFormatError, match=r"corpus.jsonl:2: expected a JSON object with keys"):
        load_collection(root)


# ---------------------------------------------------------------------------------------------- splits, runs
def test_split_is_deterministic_and_disjoint(tmp_path, cranfield):
    train, test = split_queries(cranfield, 1 / 3, seed=0)
    assert (len(train), len(test)) == (150, 75)
    assert (train, test) == split_queries(cranfield, 1 / 3, seed=0)
    assert test != split_queries(cranfield, 1 / 3, seed=1)[1]
    assert not set(train) & set(test) and sorted(train + test, key=int) == cranfield.judged_qids
    assert test == sorted(test, key=int)  # collection order kept
    with pytest.raises(ValueError, match="empty split"):
        split_queries(load_collection(tiny_trec(tmp_path / "t")), 0.1)


def test_split_folds_partition_the_queries_and_fold_0_is_the_plain_split():
    coll = Collection(docs={"d": "x"}, queries={str(i): f"q{i}" for i in range(10)},
                      qrels={str(i): {"d": 1} for i in range(10)}, name="ten")  # fmt: skip
    tests = [split_queries(coll, 1 / 3, seed=4, fold=f)[1] for f in range(3)]
    assert split_queries(coll, 1 / 3, seed=4, fold=0) == split_queries(coll, 1 / 3, seed=4)
    assert [len(t) for t in tests] == [3, 3, 3] and len(set().union(*tests)) == 9  # disjoint; one query never held out
    train, test = split_queries(coll, 1 / 3, seed=4, fold=2)
    assert sorted(train + test, key=int) == coll.judged_qids and not set(train) & set(test)
    with pytest.raises(ValueError, match="fold 3 out of range: .* gives folds 0..2"):
        split_queries(coll, 1 / 3, seed=4, fold=3)


def test_run_file_round_trip_and_errors(tmp_path):
    run = {"q1": {"d1": 1.5, "d3": 2.0000000000000004, "d2": -0.1}, "q2": {"d2": 3.0}}
    path = write_run(run, tmp_path / "runs" / "bm25.run", tag="bm25")
    lines = path.read_text().splitlines()
    assert lines[0] == "q1 Q0 d3 1 2.0000000000000004 bm25" and lines[2].split()[:4] == ["q1", "Q0", "d2", "3"]
    assert read_run(path) == run and [p.name for p in path.parent.iterdir()] == ["bm25.run"]  # no temp left
    assert candidates(read_run(path), "q1", 2) == ["d3", "d1"] and candidates(run, "nope", 5) == []
    with pytest.raises(ValueError, match="tag"):
        write_run(run, tmp_path / "x.run", tag="two words")
    path.write_text("q1 Q0 d1 1 0.5 t\nq1 Q0 d2 two 0.4 t\n")
    with pytest.raises(CollectionFormatError, match=r"bm25.run:2: expected 'qid Q0 docid rank score tag'"):
        read_run(path)


