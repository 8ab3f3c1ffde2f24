"""BM25 first stage on Cranfield 1400: quality and speed (``rankrl.rerank.bm25.BM25Retriever``).

BM25 (bm25s, Lucene variant, k1 = 1.2, b = 0.75) over title + abstract, lowercase alphanumeric tokens, no
stemming, no stopwords; top 100 per query. Judgments: gain = 5 - code for codes 1..4, 0 for code -1; queries
mapped by file position (see ``../shared/data/cranfield/README.md``). Metrics by ir-measures: nDCG@10, RR@10,
R@20, R@100 over all 225 queries and over the seeded test split (``split_queries(coll, 1/3, seed=0)``: 75
queries) that the reranker experiments report on. R@20 is the ceiling of any reranker of the top 20.

Speed: index build time, and seconds per query for one batched ``search`` of all queries and for one query at
a time (median of ``--repeats`` runs each, ``time.perf_counter``, after one warm-up call).

Run: ``.venv/bin/python benchmarks/bm25_cranfield.py`` (writes ``benchmarks/results/bm25_cranfield.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from rankrl.rerank.bm25 import BM25Retriever  # noqa: E402
from rankrl.rerank.collections import load_collection, split_queries  # noqa: E402
from rankrl.rerank.metrics import evaluate  # noqa: E402

MEASURES = ("nDCG@10", "RR@10", "R@20", "R@100")
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cranfield"


def _median_s(fn, repeats: int) -> float:
    fn()  # warm-up: numba/numpy first-call costs are not what we measure
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--test-fraction", type=float, default=1 / 3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bm25_cranfield.json")
    args = parser.parse_args(argv)

    coll = load_collection(args.data)
    start = time.perf_counter()
    retriever = BM25Retriever(coll)
    index_s = time.perf_counter() - start
    qids = list(coll.queries)
    _, test = split_queries(coll, args.test_fraction, args.seed)
    run = retriever.search(qids, k=args.k)
    rows = [
        {"queries": "all", "n": len(qids), **evaluate(run, coll.qrels, MEASURES, qids=qids)},
        {"queries": f"test split (seed {args.seed})", "n": len(test), **evaluate(run, coll.qrels, MEASURES, qids=test)},
    ]
    batched_s = _median_s(lambda: retriever.search(qids, k=args.k), args.repeats) / len(qids)
    single_s = _median_s(lambda: [retriever.search([q], k=args.k) for q in qids], args.repeats) / len(qids)

    header = f"{'queries':<20} {'n':>4} " + " ".join(f"{m:>8}" for m in MEASURES)
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['queries']:<20} {r['n']:>4} " + " ".join(f"{r[m]:>8.4f}" for m in MEASURES))
    print(f"\nindex {index_s:.2f} s ({len(coll.docs)} docs); search {batched_s * 1e3:.3f} ms/query batched, "
          f"{single_s * 1e3:.3f} ms/query one at a time (top {args.k})")  # fmt: skip

    import bm25s
    import ir_measures

    result = {
        "benchmark": "bm25_cranfield",
        "date": datetime.now().isoformat(),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "bm25s": bm25s.__version__,
            "ir_measures": ir_measures.__version__,
        },
        "setup": {
            "collection": f"Cranfield 1400 ({len(coll.docs)} docs, {len(qids)} queries, {coll.n_qrels} qrels)",
            "bm25": "bm25s lucene, k1=1.2, b=0.75, title+abstract, lowercase [a-z0-9]+ tokens, no stemming",
            "gains": "5 - code for codes 1..4, 0 for code -1; qrel query i = i-th query of cran.qry",
            "k": args.k,
            "split": {"test_fraction": args.test_fraction, "seed": args.seed, "test_qids": test},
            "timer": f"time.perf_counter, 1 warm-up, median of {args.repeats}",
        },
        "rows": rows,
        "speed": {
            "index_s": index_s,
            "search_s_per_query_batched": batched_s,
            "search_s_per_query_single": single_s,
        },
    }
    _write_atomic(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
