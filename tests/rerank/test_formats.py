"""Collection formats beyond Cranfield: CISI and MED (SMART), TREC SGML documents/topics, ir_datasets ids.

Tiny files of each format are written here (no download); the tests on ../shared/data skip when it is absent and
check the counts of its READMEs.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from rankrl.rerank.bm25 import BM25Retriever
from rankrl.rerank.collections import CollectionFormatError, load_collection
from rankrl.rerank.metrics import evaluate
from tests.conftest import shared_data


def _write(path: Path, text: str, crlf: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.replace("\n", "\r\n" if crlf else "\n").encode())


def tiny_cisi(root: Path, rel: str | None = None) -> Path:
    """Three CISI docs (.T/.A/.W/.X, marker lines with trailing spaces), a short query, a bibliographic-record
    query (.T/.A/.W/.B) and an unjudged one; CRLF as in the real files."""
    _write(root / "CISI.ALL", ".I 1\n.T \nLibrary catalogs\n.A \nSmith, J.\n.W  \nOn card catalogs.\n"
           ".X\n1\t5\t1\n2\t1\t1\n.I 2\n.T\nIndexing\n.A\nDoe\n.A\nRoe\n.W\nAutomatic indexing of\nabstracts.\n"
           ".X\n2\t5\t2\n.I 3\n.T\nCitation\n.W\nCitation analysis.\n.B\nJ. Doc. 1970\n.X\n3\t5\t3\n")  # fmt: skip
    _write(root / "CISI.QRY", ".I 1\n.W\nHow are card catalogs used?\n.I 2\n.T\nIndexing theory\n.A\nKent\n.W\n"
           "automatic indexing\n.B\n(1968)\n.I 3\n.W\nunjudged request\n")  # fmt: skip
    _write(root / "CISI.REL", rel or "     1      1\t0\t0.000000\n     2      2\t0\t0.000000\n"
           "     2      3\t0\t0.000000\n")  # fmt: skip
    return root


def test_cisi_reader_binary_judgments_title_and_abstract_queries(tmp_path):
    coll = load_collection(tiny_cisi(tmp_path / "cisi"))
    assert coll.docs == {"1": "Library catalogs On card catalogs.", "2": "Indexing Automatic indexing of abstracts.",
                         "3": "Citation Citation analysis."}  # .A authors, .X citations and .B dropped  # fmt: skip
    assert coll.queries == {"1": "How are card catalogs used?", "2": "Indexing theory automatic indexing",
                            "3": "unjudged request"}  # record queries: .T + .W  # fmt: skip
    assert coll.qrels == {"1": {"1": 1}, "2": {"2": 1, "3": 1}}  # every listed pair is relevant (gain 1)
    assert coll.judged_qids == ["1", "2"]  # query 3 has no judgments: kept, but evaluation drops it
    with pytest.raises(CollectionFormatError, match=r"CISI.REL:1: judgment names unknown doc '9' \(pass --drop_unk"):
        load_collection(tiny_cisi(tmp_path / "bad", rel="     1      9\t0\t0.000000\n"))
    with pytest.raises(CollectionFormatError, match=r"CISI.REL:1: expected 'query_id doc_id \.\.\.'"):
        load_collection(tiny_cisi(tmp_path / "bad2", rel="one 1 0 0\n"))


def test_med_reader_trec_qrels_with_lf_endings(tmp_path):
    root = tmp_path / "med"
    _write(root / "MED.ALL", ".I 1\n.W\ncorrelation between maternal and fetal\nplasma levels .   \n.I 2\n.W\n"
           "renal failure in children .\n")  # fmt: skip
    _write(root / "MED.QRY", ".I 1\n.W\nfetal plasma glucose\n.I 2\n.W\n renal failure \n")
    _write(root / "MED.REL", "1 0 1 1\n2 0 2 1\n", crlf=False)
    coll = load_collection(root)
    assert coll.docs["1"] == "correlation between maternal and fetal plasma levels ."
    assert coll.queries == {"1": "fetal plasma glucose", "2": "renal failure"}
    assert coll.qrels == {"1": {"1": 1}, "2": {"2": 1}} and coll.judged_qids == ["1", "2"]
    _write(root / "MED.ALL", ".I 1\n.T\ntitle\n.W\ntext\n")
    with pytest.raises(CollectionFormatError, match=r"MED.ALL:2: unknown field marker '.T'; expected .W"):
        load_collection(root)


SGML_DOCS = """<DOC>
<DOCNO> FT911-1 </DOCNO>
<HEADLINE>Wing lift</HEADLINE>
<TEXT>
<P>Lift of a wing in a slipstream.</P>
</TEXT>
</DOC>
<DOC>
<DOCNO>FT911-2</DOCNO>
<TEXT>Heat conduction in composite slabs.</TEXT>
</DOC>
"""
SGML_TOPICS = """<top>
<num> Number: 301
<title> wing lift

<desc> Description:
Documents on the lift of wings.

<narr> Narrative:
Relevant documents discuss lift.
</top>

<top>
<num> Number: 302
<title>
<desc> Description: heat conduction in slabs
</top>
"""


def test_trec_sgml_documents_in_several_gz_files_and_sgml_topics(tmp_path):
    root = tmp_path / "trec"
    (root / "docs" / "ft").mkdir(parents=True)
    first, second = SGML_DOCS.split("</DOC>\n", 1)
    (root / "docs" / "ft" / "a.gz").write_bytes(gzip.compress((first + "</DOC>\n").encode()))
    (root / "docs" / "ft" / "b").write_text(second)
    (root / "topics.txt").write_text(SGML_TOPICS)
    (root / "qrels.txt").write_text("301 0 FT911-1 1\n301 0 FT911-2 0\n302 0 FT911-2 2\n")
    coll = load_collection(root)
    assert coll.docs == {"FT911-1": "Wing lift Lift of a wing in a slipstream.",
                         "FT911-2": "Heat conduction in composite slabs."}  # fmt: skip
    assert coll.queries == {"301": "wing lift", "302": "heat conduction in slabs"}  # title, else description
    assert coll.qrels == {"301": {"FT911-1": 1, "FT911-2": 0}, "302": {"FT911-2": 2}}
    (root / "docs" / "ft" / "b").write_text("<DOC>\n<TEXT>no number</TEXT>\n</DOC>\n")
    with pytest.raises(CollectionFormatError, match=r"docs/ft/b:1: <DOC> without <DOCNO>"):
        load_collection(root)


def test_trec_sgml_single_docs_file_topics_errors_and_drop_unknown(tmp_path):
    root = tmp_path / "trec"
    root.mkdir()
    (root / "docs.sgml").write_text(SGML_DOCS)
    (root / "topics").write_text("<top>\n<title> no number\n</top>\n")
    (root / "qrels").write_text("301 0 FT911-1 1\n")
    with pytest.raises(CollectionFormatError, match=r"topics:1: expected '<num> Number: <id>'"):
        load_collection(root)
    (root / "topics").write_text(SGML_TOPICS)
    (root / "qrels").write_text("301 0 FT911-1 1\n301 0 LA-9 1\n999 0 FT911-1 1\n")
    with pytest.raises(CollectionFormatError, match=r"qrels:2: judgment names unknown doc 'LA-9' \(pass --drop_un"):
        load_collection(root)
    with pytest.warns(UserWarning, match="dropped 1 judgments naming unknown queries and 1 naming unknown doc"):
        coll = load_collection(root, drop_unknown=True)
    assert coll.qrels == {"301": {"FT911-1": 1}}


def _register_tiny_irds(root: Path, name: str) -> None:
    import ir_datasets
    from ir_datasets.datasets.base import Dataset
    from ir_datasets.formats import TrecDocs, TrecQrels, TrecQueries
    from ir_datasets.util import LocalDownload

    (root / "docs.sgml").write_text(SGML_DOCS)
    second = "<top>\n<num> Number: 302\n<title> heat\n<desc> Description: slabs\n<narr> Narrative: any\n</top>\n"
    (root / "topics.txt").write_text(SGML_TOPICS.split("<top>")[1].join(["<top>", "\n"]) + second)
    (root / "qrels.txt").write_text("301 0 FT911-1 1\n302 0 FT911-2 2\n302 0 FT911-1 -1\n")
    if name not in ir_datasets.registry:
        ir_datasets.registry.register(name, Dataset(
            TrecDocs(LocalDownload(root / "docs.sgml"), parser="text"), TrecQueries(LocalDownload(root / "topics.txt")),
            TrecQrels(LocalDownload(root / "qrels.txt"), {1: "relevant"})))  # fmt: skip


def test_irds_ids_read_through_ir_datasets(tmp_path):
    pytest.importorskip("ir_datasets")
    _register_tiny_irds(tmp_path, "rankrl-test/tiny")
    coll = load_collection("irds:rankrl-test/tiny")
    assert coll.name == "irds:rankrl-test/tiny" and set(coll.docs) == {"FT911-1", "FT911-2"}
    assert "Lift of a wing" in coll.docs["FT911-1"] and coll.queries["301"].startswith("wing lift")
    assert coll.qrels == {"301": {"FT911-1": 1}, "302": {"FT911-2": 2, "FT911-1": 0}}  # negative -> gain 0
    with pytest.raises(CollectionFormatError, match=r"irds:no-such/id: no such ir_datasets id"):
        load_collection("irds:no-such/id")


def test_irds_without_the_package_or_the_cached_files_says_how_to_get_them(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_irds(name, *a, **kw):
        if name == "ir_datasets":
            raise ImportError(name)
        return real_import(name, *a, **kw)

    with monkeypatch.context() as m:
        m.setattr(builtins, "__import__", no_irds)
        with pytest.raises(CollectionFormatError, match=r"pip install ir_datasets"):
            load_collection("irds:cranfield")
    pytest.importorskip("ir_datasets")
    _register_tiny_irds(tmp_path, "rankrl-test/gone")
    (tmp_path / "docs.sgml").unlink()  # as if the cache lacked the file and the download failed
    with pytest.raises(CollectionFormatError, match=r"could not read the data from its cache .* IR_DATASETS_HOME"):
        load_collection("irds:rankrl-test/gone")


# ---------------------------------------------------------------------------------------------- ../shared/data
def test_cisi_counts_and_bm25_match_its_readme():
    coll = load_collection(shared_data("cisi"))
    assert (len(coll.docs), len(coll.queries), len(coll.judged_qids), coll.n_qrels) == (1460, 112, 76, 3114)
    unjudged = sorted(set(coll.queries) - set(coll.judged_qids), key=int)
    assert unjudged[:5] == ["36", "38", "40", "47", "48"] and unjudged[-1] == "112" and len(unjudged) == 36
    assert coll.queries["58"].startswith(coll.queries["58"].split()[0]) and len(coll.queries["58"]) > 100  # .T + .W
    run = BM25Retriever(coll).search(coll.judged_qids, k=1000)
    got = evaluate(run, coll.qrels, ("nDCG@10", "AP@1000"), qids=coll.judged_qids)
    assert got["nDCG@10"] == pytest.approx(0.349, abs=0.0005) and got["AP@1000"] == pytest.approx(0.187, abs=0.0005)


def test_med_counts_and_bm25_match_its_readme():
    coll = load_collection(shared_data("med"))
    assert (len(coll.docs), len(coll.queries), len(coll.judged_qids), coll.n_qrels) == (1033, 30, 30, 696)
    run = BM25Retriever(coll).search(coll.judged_qids, k=1000)
    got = evaluate(run, coll.qrels, ("nDCG@10",), qids=coll.judged_qids)
    assert got["nDCG@10"] == pytest.approx(0.670, abs=0.0005)


def test_comma_separated_paths_read_as_one_collection_with_prefixed_ids(tmp_path):
    cisi, other = tiny_cisi(tmp_path / "cisi"), tiny_cisi(tmp_path / "other")
    merged = load_collection(f"{cisi},{other}")
    assert merged.name == "cisi+other" and len(merged.docs) == 6 and len(merged.queries) == 6
    assert merged.qrels["other/2"] == {"other/2": 1, "other/3": 1}  # judgments stay within their collection
    assert merged.judged_qids == ["cisi/1", "cisi/2", "other/1", "other/2"]
    ranked = BM25Retriever(merged).search(["cisi/2"], k=2)["cisi/2"]
    assert "cisi/2" in ranked or "other/2" in ranked  # one index over both
    with pytest.raises(CollectionFormatError, match="distinct names"):
        load_collection(f"{cisi},{cisi}")
