"""LLM rerank throughput on CPU: ERank zero-shot SmolLM2 scoring the BM25 top-k, before and after the shared-prefix
path of :func:`rankrl.rerank.prompts.next_token_logits`.

* ``before``: the reference path (``RecipeOptions(prefix_cache=False)``): every candidate's whole prompt, left-padded
  batches of 16 in BM25 order, logits at every position.
* ``after``: ``make_scorer("erank", ...)``, what ``rankrl rerank eval`` runs: the prompts' common token prefix
  (system turn + "Query: ...\\nPassage:") through the model once, its KV cache expanded to every batch, the rest of
  each prompt in length-sorted batches, the LM head on the last position only.

Both rerank the same queries (the first ``--queries`` of the ``split_queries(coll)`` test split) through
:func:`rankrl.rerank.evaluate.rerank_run`; the JSON keeps per-query nDCG@10 of both, the largest score difference and
whether the rankings are identical, s/query, threads, machine and date. Each thread count is timed after one untimed
warm-up query per path (first-call allocation costs are not per-query costs).

    python benchmarks/rerank_throughput.py                       # 10 queries, 2 threads (~1.5 min)
    python benchmarks/rerank_throughput.py --threads 1,2         # both thread counts (~4 min)
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from datetime import datetime
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from rankrl.atomic import atomic_write_json  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cranfield"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "rerank_throughput.json"
#: the README's SmolLM2 zero-shot ERank row before this change (benchmarks/rerank.py, 75 test queries)
README_BEFORE = {"sec_per_query": 13.6, "threads": 1, "note": "benchmarks/results/rerank.json smollm2-zero row: "
                 "1 torch thread, 1-min load average 1.52 at the time (a busy machine)"}  # fmt: skip


def machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch": torch.__version__,
            "loadavg_1min": round(os.getloadavg()[0], 2)}  # fmt: skip


def timed(scorer, coll, qids, k, retriever) -> tuple[float, dict, dict]:
    """(s/query, run, scores by query text) of ``scorer`` reranking the BM25 top-``k`` of ``qids``."""
    from rankrl.rerank.evaluate import rerank_run

    scores: dict[str, list[float]] = {}

    def keep(q, docs):
        scores[q] = list(scorer(q, docs))
        return scores[q]

    start = time.perf_counter()
    run = rerank_run(keep, coll, qids, k, retriever)
    return (time.perf_counter() - start) / len(qids), run, scores


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--queries", type=int, default=10, help="the first N test queries (split_queries, seed 0)")
    ap.add_argument("--k", type=int, default=20, help="BM25 candidates reranked per query")
    ap.add_argument("--threads", default="2", help="comma-separated torch thread counts to time, e.g. 1,2")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    a = ap.parse_args(argv)

    from rankrl.models import load_model
    from rankrl.rerank.bm25 import BM25Retriever
    from rankrl.rerank.collections import load_collection, split_queries
    from rankrl.rerank.job import make_scorer
    from rankrl.rerank.metrics import evaluate_per_query
    from rankrl.rerank.recipes import erank
    from rankrl.rerank.recipes.base import RecipeOptions

    coll = load_collection(a.data)
    qids = split_queries(coll)[1][: a.queries]
    retriever = BM25Retriever(coll)
    lm = load_model(a.model, task_kind="causal_lm")
    paths = {"before": erank.scorer(lm.model, lm.tokenizer, RecipeOptions(prefix_cache=False)),  # make_scorer's opts
             "after": make_scorer("erank", lm.model, lm.tokenizer)}  # fmt: skip
    rows = []
    for threads in (int(t) for t in a.threads.split(",")):
        torch.set_num_threads(threads)
        row: dict = {"threads": threads}
        for name, scorer in paths.items():
            timed(scorer, coll, split_queries(coll)[0][:1], a.k, retriever)  # warm-up: a train query, untimed
            sec, run, scores = timed(scorer, coll, qids, a.k, retriever)
            row[name] = {"sec_per_query": sec,
                         "per_query_nDCG@10": evaluate_per_query(run, coll.qrels, ["nDCG@10"], qids=qids)["nDCG@10"],
                         "run": run, "scores": scores}  # fmt: skip
        b, f = row["before"], row["after"]
        row["speedup"] = b["sec_per_query"] / f["sec_per_query"]
        texts = [coll.queries[q] for q in qids]
        row["max_abs_score_diff"] = max(abs(x - y) for t in texts
                                        for x, y in zip(b["scores"][t], f["scores"][t], strict=True))  # fmt: skip
        row["same_rankings"] = all(list(b["run"][q]) == list(f["run"][q]) for q in qids)
        row["same_nDCG@10"] = b["per_query_nDCG@10"] == f["per_query_nDCG@10"]
        for side in (b, f):
            del side["run"], side["scores"]
        rows.append(row)
    result = {"what": f"ERank zero-shot {a.model}, expected score over single-token scores, BM25 top-{a.k}, "
                      f"first {len(qids)} Cranfield test queries (split_queries seed 0), via rerank_run",  # fmt: skip
              "queries": qids, "k": a.k, "model": a.model, "rows": rows, "readme_before": README_BEFORE,
              "date": datetime.now().isoformat(timespec="seconds"), "machine": machine()}  # fmt: skip
    atomic_write_json(a.out, result)
    print(f"\n{'threads':>7}{'before s/q':>12}{'after s/q':>11}{'speedup':>9}{'max |d score|':>15}"
          f"{'same ranking':>14}{'nDCG@10 b/a':>16}")  # fmt: skip
    for r in rows:
        nb = sum(r["before"]["per_query_nDCG@10"].values()) / len(qids)
        na = sum(r["after"]["per_query_nDCG@10"].values()) / len(qids)
        print(f"{r['threads']:>7}{r['before']['sec_per_query']:>12.2f}{r['after']['sec_per_query']:>11.2f}"
              f"{r['speedup']:>8.2f}x{r['max_abs_score_diff']:>15.1e}{str(r['same_rankings']):>14}"
              f"{nb:>8.4f}/{na:.4f}")  # fmt: skip
    print(f"results -> {a.out}")
    return result


if __name__ == "__main__":
    main()
