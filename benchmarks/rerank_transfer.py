"""Cross-collection rerankers: the encoder GRPO reranker trained on one collection, evaluated on the others.

For each training collection T (Cranfield, CISI, MED) the MiniLM bi-encoder policy of ``rankrl rerank
train-encoder`` is trained with the *committed defaults* (chosen beforehand on Cranfield dev queries, not on any
evaluation collection: BM25 top-100 training pools, lr 5e-5, 200 steps x 8 queries x 16 rankings, query-side LoRA,
the default 2/3 train split of T's judged queries), then every *other* collection E is reranked - all its judged
queries, BM25 top-``k`` (20) - by

* ``bm25``       the first-stage order itself;
* ``minilm-bi``  the zero-shot MiniLM bi-encoder (the policy at step 0: cosine of mean-pooled embeddings);
* ``trained``    the policy trained on T (LoRA query encoder + the learned BM25-feature weight).

Each pair T -> E gets nDCG@10 and RR@10 over E's judged queries, paired tests over queries (scipy ``ttest_rel``
and ``wilcoxon`` on per-query nDCG@10) of trained vs zero-shot and trained vs BM25 (and zero-shot vs BM25), wins /
losses / ties and seconds per query (document embeddings are computed once per collection and cached under
``$RANKRL_CACHE/encoder-docs``; that one-off cost is excluded, for the zero-shot and the trained rows alike).
Per T, the unseen collections' queries are also pooled into one paired test.

Leave one collection out: ``--train cisi-med`` trains one policy on two collections at once (``rerank train-encoder
--data cisi,med``: read as one collection, ids prefixed by collection, the default 2/3 split of their judged queries,
the same committed defaults) and evaluates it on the third; its rows are keyed ``cisi-med``.

Parts (``--parts``, comma-separated; every part is small enough for one < 10 min locked job on 2 CPU threads):

* ``train``  train the policy on each ``--train`` collection (skipped when the cached model exists:
             ``$RANKRL_CACHE/rerank-transfer/<T>-<config hash>``);
* ``eval``   baselines of every unseen collection (once, kept in the JSON) and the trained rows of each
             ``--train`` collection on them;
* ``table``  print the table and write the PNG from the merged JSON.

``--variant both-sides`` trains the configuration that was significant in the Cranfield cross-validation
(README: one LoRA encoder for queries *and* documents, ``--train_docs``, 60 steps x 4 queries, lr 1e-4, top-20
pools; chosen there, not on any evaluation collection) instead of the defaults; its rows are keyed ``<T>+docs``.
Evaluating it re-embeds each unseen collection's documents with the trained encoder (~2 min each, counted in
s/query only for the zero-shot/default rows' cached embedding: see ``sec_per_query``).

Results merge into ``benchmarks/results/rerank_transfer.json`` (+ ``.png``)::

    flock /tmp/rankrl-pytest.lock python benchmarks/rerank_transfer.py --parts train --train cranfield
    flock /tmp/rankrl-pytest.lock python benchmarks/rerank_transfer.py --parts eval,table --train cranfield
    python benchmarks/rerank_transfer.py --parts table
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import platform
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
COLLECTIONS = ("cranfield", "cisi", "med")
MEASURES = ("nDCG@10", "RR@10")
ROWS = ("bm25", "minilm-bi", "trained")
#: training configurations: the committed defaults, and the both-sides one of the README's cross-validation
VARIANTS: dict[str, dict] = {"default": {},
                             "both-sides": {"train_docs": True, "steps": 60, "queries_per_step": 4, "lr": 1e-4,
                                            "train_k": 20}}  # fmt: skip
SUFFIX = {"default": "", "both-sides": "+docs"}


def tag_of(name: str, variant: str) -> str:
    """The results key of a training collection under a variant (``cranfield``, ``cranfield+docs``)."""
    return name + SUFFIX[variant]


def base_of(tag: str) -> str:
    """The training collection(s) of a results key.

    >>> base_of("cisi+docs"), base_of("med"), base_of("cisi-med")
    ('cisi', 'med', 'cisi-med')
    """
    return tag.split("+", 1)[0]


def sources(tag: str) -> list[str]:
    """The collections a results key was trained on.

    >>> sources("cisi-med"), sources("cranfield+docs")
    (['cisi', 'med'], ['cranfield'])
    """
    return base_of(tag).split("-")


def trained_tags(results: Mapping) -> list[str]:
    """Every training key: the single collections x variants first, then the multi-collection ones trained so far."""
    singles = [tag_of(c, v) for c in COLLECTIONS for v in VARIANTS]
    return singles + sorted(t for t in results.get("trained", {}) if t not in singles)


# ---------------------------------------------------------------------------------------------- statistics
def paired(values: Mapping[str, float], base: Mapping[str, float]) -> dict:
    """Paired comparison over ``base``'s queries: mean difference, wins/losses/ties, t-test and Wilcoxon p.

    >>> p = paired({"a": 0.5, "b": 0.2, "c": 0.3}, {"a": 0.4, "b": 0.2, "c": 0.1})
    >>> (round(p["mean_diff"], 4), p["wins"], p["losses"], p["ties"])
    (0.1, 2, 0, 1)
    """
    from scipy.stats import ttest_rel, wilcoxon

    qids = list(base)
    x, y = np.array([values[q] for q in qids]), np.array([base[q] for q in qids])
    d = x - y
    out = {"mean_diff": float(d.mean()) if d.size else 0.0, "wins": int((d > 0).sum()),
           "losses": int((d < 0).sum()), "ties": int((d == 0).sum()), "n": int(d.size),
           "ttest_p": None, "wilcoxon_p": None}  # fmt: skip
    if np.any(d != 0) and len(d) > 1:
        out["ttest_p"] = float(ttest_rel(x, y).pvalue)
        out["wilcoxon_p"] = float(wilcoxon(x, y).pvalue)
    return out


def pool(per_query: Sequence[Mapping[str, float]], names: Sequence[str]) -> dict[str, float]:
    """Several collections' per-query values as one mapping (query ids prefixed by their collection).

    >>> pool([{"1": 0.5}, {"1": 0.25}], ["cisi", "med"])
    {'cisi/1': 0.5, 'med/1': 0.25}
    """
    return {f"{n}/{q}": v for pq, n in zip(per_query, names, strict=True) for q, v in pq.items()}


def config_key(config: Mapping) -> str:
    """A short hash of a training configuration (the cache directory's suffix)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:10]


# ---------------------------------------------------------------------------------------------- rows
def measure(scorer, coll, qids: Sequence[str], k: int, retriever) -> dict:
    """Rerank the BM25 top-``k`` of ``qids`` with ``scorer``: aggregate and per-query nDCG@10 / RR@10, s/query."""
    from rankrl.rerank.evaluate import rerank_run
    from rankrl.rerank.metrics import evaluate, evaluate_per_query

    start = time.perf_counter()
    run = rerank_run(scorer, coll, qids, k, retriever)
    seconds = time.perf_counter() - start
    agg = evaluate(run, coll.qrels, MEASURES, qids=list(qids))
    pq = evaluate_per_query(run, coll.qrels, MEASURES, qids=list(qids))
    return {"nDCG@10": agg["nDCG@10"], "RR@10": agg["RR@10"], "sec_per_query": seconds / max(1, len(qids)),
            "n_queries": len(qids), "k": k, "date": datetime.now().isoformat(timespec="seconds"),
            "machine": machine(), "per_query_nDCG@10": pq["nDCG@10"], "per_query_RR@10": pq["RR@10"]}  # fmt: skip


def keep_bm25_order(query: str, docs: list[str]) -> list[float]:
    return [0.0] * len(docs)


def machine() -> dict:
    import torch

    return {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "loadavg_1min": round(os.getloadavg()[0], 2)}  # fmt: skip


def train_args(name: str, data: Path, output_dir: str, threads: int | None, variant: str = "default"):
    """The committed ``rerank train-encoder`` defaults (nothing tuned here) or a :data:`VARIANTS` entry; no W&B, no
    intermediate evals."""
    from rankrl.rerank.encoder import EncoderGRPOArgs

    return EncoderGRPOArgs(data=",".join(str(data / n) for n in name.split("-")), output_dir=output_dir,
                           report_to="none", eval_every=0,
                           threads=threads, **VARIANTS[variant])  # fmt: skip


def public_config(args) -> dict:
    return {k: v for k, v in dataclasses.asdict(args).items() if k not in ("data", "output_dir", "threads")}


def model_dir(name: str, data: Path, threads: int | None, variant: str = "default") -> tuple[Path, dict]:
    from rankrl.models import cache_dir

    cfg = public_config(train_args(name, data, "", threads, variant))
    return cache_dir() / "rerank-transfer" / f"{name}-{config_key(cfg)}", cfg


def _tenth(values: list[float], which: int) -> float:
    n = max(1, len(values) // 10)
    return float(np.mean(values[:n] if which == 0 else values[-n:]))


def train(name: str, data: Path, threads: int | None, variant: str = "default") -> dict:
    """Train (or reuse the cached) policy on collection ``name``; returns its training record."""
    from rankrl.rerank.encoder import run_encoder_grpo

    out, cfg = model_dir(name, data, threads, variant)
    done = out / "transfer_summary.json"
    if done.is_file():
        print(f"[train {name}] cached: {out}", flush=True)
        return json.loads(done.read_text())
    args = train_args(name, data, str(out), threads, variant)
    start = time.perf_counter()
    summary = run_encoder_grpo(args)
    seconds = time.perf_counter() - start
    rewards = summary.pop("reward_per_step")
    record = {"train_seconds_incl_doc_embedding": seconds, "model_dir": str(out), "config": cfg,
              "in_domain": {**summary, "reward_first_tenth_mean": _tenth(rewards, 0),
                            "reward_last_tenth_mean": _tenth(rewards, -1), "reward_per_step": rewards},
              "date": datetime.now().isoformat(timespec="seconds"), "machine": machine()}  # fmt: skip
    from rankrl.atomic import atomic_write_text

    atomic_write_text(done, json.dumps(record, indent=1))
    return record


def evaluate_pair(train_name: str, eval_name: str, data: Path, k: int, threads: int | None, results: dict,
                  variant: str = "default") -> None:
    """Baselines of ``eval_name`` (once) and the policy trained on ``train_name`` reranking it."""
    from rankrl.rerank.bm25 import BM25Retriever
    from rankrl.rerank.collections import load_collection
    from rankrl.rerank.encoder import EncoderPolicy, load_encoder_scorer

    coll = load_collection(str(data / eval_name))
    qids = list(coll.judged_qids)
    retriever = BM25Retriever(coll)
    results["collections"][eval_name] = {"docs": len(coll.docs), "judged_queries": len(qids)}
    base = results["baselines"].setdefault(eval_name, {})
    if "bm25" not in base or base["bm25"]["n_queries"] != len(qids) or base["bm25"]["k"] != k:
        base["bm25"] = measure(keep_bm25_order, coll, qids, k, retriever)
        zero = EncoderPolicy(train_args(eval_name, data, "", threads), coll)  # step 0 = the zero-shot bi-encoder
        zero.encoder.eval()
        base["minilm-bi"] = measure(zero.scorer(retriever, k), coll, qids, k, retriever)
        base["minilm-bi"]["paired_vs_bm25"] = paired(base["minilm-bi"]["per_query_nDCG@10"],
                                                     base["bm25"]["per_query_nDCG@10"])  # fmt: skip
        for row in ("bm25", "minilm-bi"):
            print(f"  [{eval_name}] {row}: nDCG@10 {base[row]['nDCG@10']:.4f}", flush=True)
    out, _ = model_dir(train_name, data, threads, variant)
    scorer, _ = load_encoder_scorer(out, coll, retriever, k)
    row = measure(scorer, coll, qids, k, retriever)
    row["vs_zero_shot"] = paired(row["per_query_nDCG@10"], base["minilm-bi"]["per_query_nDCG@10"])
    row["vs_bm25"] = paired(row["per_query_nDCG@10"], base["bm25"]["per_query_nDCG@10"])
    row["RR@10_vs_zero_shot"] = paired(row["per_query_RR@10"], base["minilm-bi"]["per_query_RR@10"])
    results["transfer"][f"{tag_of(train_name, variant)}->{eval_name}"] = row
    print(f"  [{tag_of(train_name, variant)} -> {eval_name}] trained: nDCG@10 {row['nDCG@10']:.4f} "
          f"(vs zero-shot {row['vs_zero_shot']['mean_diff']:+.4f}, p {row['vs_zero_shot']['ttest_p']})", flush=True)


def pooled_test(results: dict, trained: Mapping[str, Mapping[str, float]], zero_shot_vs_bm25: bool = True) -> dict:
    """One paired test over the judged queries of several collections: ``trained`` maps each collection to the
    trained row's per-query nDCG@10 on it; BM25 and zero-shot come from the baselines of the same collections."""
    names = list(trained)
    get = {"trained": pool([trained[e] for e in names], names),  # row -> pooled per-query nDCG@10
           **{r: pool([results["baselines"][e][r]["per_query_nDCG@10"] for e in names], names)
              for r in ("bm25", "minilm-bi")}}  # fmt: skip
    out = {"collections": names, "n_queries": len(get["bm25"]),
           **{f"nDCG@10_{r}": float(np.mean(list(v.values()))) for r, v in get.items()},
           "vs_zero_shot": paired(get["trained"], get["minilm-bi"]), "vs_bm25": paired(get["trained"], get["bm25"])}
    if zero_shot_vs_bm25:
        out["zero_shot_vs_bm25"] = paired(get["minilm-bi"], get["bm25"])
    return out


def pooled(results: dict, train_name: str) -> dict | None:
    """Every unseen collection's judged queries of ``train_name``'s rows (a :func:`tag_of` key) as one paired test
    (None until all ran)."""
    unseen = [e for e in COLLECTIONS if e not in sources(train_name) and f"{train_name}->{e}" in results["transfer"]]
    if not unseen:
        return None
    return pooled_test(results, {e: results["transfer"][f"{train_name}->{e}"]["per_query_nDCG@10"] for e in unseen})


def leave_one_out(results: dict) -> dict | None:
    """Every collection reranked by the policy trained on the other two (``a-b`` keys), pooled into one paired test
    over all judged queries (None until every such row ran)."""
    rows = {}
    for e in COLLECTIONS:
        tag = "-".join(c for c in COLLECTIONS if c != e)
        if f"{tag}->{e}" not in results["transfer"]:
            return None
        rows[e] = results["transfer"][f"{tag}->{e}"]["per_query_nDCG@10"]
    return pooled_test(results, rows, zero_shot_vs_bm25=False)


# ---------------------------------------------------------------------------------------------- output
def fmt_p(p) -> str:
    return "-" if p is None else f"{p:.2g}"


def fmt_pair(p: Mapping | None) -> str:
    if not p:
        return "-"
    return (f"{p['mean_diff']:+.3f}, {p['wins']}/{p['losses']}/{p['ties']}, t {fmt_p(p['ttest_p'])}, "
            f"W {fmt_p(p['wilcoxon_p'])}")  # fmt: skip


def table(results: dict) -> str:
    """The Markdown table (the README's headline) of every pair measured so far."""
    lines = ["| trained on -> evaluated on (judged queries) | BM25 | MiniLM zero-shot | + encoder GRPO | "
             "GRPO vs zero-shot (d, W/L/T, p t, p Wilcoxon) | GRPO vs BM25 (d, W/L/T, p t, p Wilcoxon) | "
             "RR@10 BM25 / zero-shot / GRPO | s/query BM25 / zero-shot / GRPO |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for t in [*trained_tags(results), "leave-one-out"]:
        for e in COLLECTIONS:
            row = results["transfer"].get(f"{t}->{e}")
            if row is None:
                continue
            b = results["baselines"][e]
            lines.append(
                f"| {t} -> {e} ({row['n_queries']}) | {b['bm25']['nDCG@10']:.3f} | {b['minilm-bi']['nDCG@10']:.3f} | "
                f"**{row['nDCG@10']:.3f}** | {fmt_pair(row['vs_zero_shot'])} | {fmt_pair(row['vs_bm25'])} | "
                f"{b['bm25']['RR@10']:.3f} / {b['minilm-bi']['RR@10']:.3f} / {row['RR@10']:.3f} | "
                f"{b['bm25']['sec_per_query']:.4f} / {b['minilm-bi']['sec_per_query']:.3f} / "
                f"{row['sec_per_query']:.3f} |")  # fmt: skip
        p = results.get("pooled", {}).get(t)
        if p and (len(p["collections"]) > 1 or t == "leave-one-out"):
            lines.append(f"| {t} -> {' + '.join(p['collections'])} pooled ({p['n_queries']}) | "
                         f"{p['nDCG@10_bm25']:.3f} | {p['nDCG@10_minilm-bi']:.3f} | **{p['nDCG@10_trained']:.3f}** | "
                         f"{fmt_pair(p['vs_zero_shot'])} | {fmt_pair(p['vs_bm25'])} | | |")  # fmt: skip
    return "\n".join(lines)


def plot(results: dict, out: Path) -> Path | None:
    """nDCG@10 of BM25, zero-shot and trained for every pair T -> E."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rankrl.atomic import atomic_write

    pairs = [p for p in (f"{t}->{e}" for t in trained_tags(results) for e in COLLECTIONS) if p in results["transfer"]]
    if not pairs:
        return None
    fig, ax = plt.subplots(figsize=(max(7.0, 2 + 1.6 * len(pairs)), 4.2))
    x, w = np.arange(len(pairs)), 0.27
    for i, (row, label) in enumerate(zip(ROWS, ("BM25 top-20", "MiniLM zero-shot", "+ encoder GRPO (trained on T)"),
                                         strict=True)):  # fmt: skip
        vals = [results["transfer"][p]["nDCG@10"] if row == "trained"
                else results["baselines"][p.split("->")[1]][row]["nDCG@10"] for p in pairs]  # fmt: skip
        ax.bar(x + (i - 1) * w, vals, w, label=label)
    ax.set_xticks(x, [p.replace("->", " -> ") for p in pairs])
    ax.set_ylabel("nDCG@10 (all judged queries of E)")
    ax.set_title("encoder GRPO reranker trained on T, evaluated on unseen E (BM25 top-20)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        return atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    finally:
        plt.close(fig)


def load_results(path: Path) -> dict:
    if path.is_file():
        return json.loads(path.read_text())
    return {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="train,eval,table", help="comma-separated: train, eval, table")
    ap.add_argument("--train", default="cranfield", help=f"comma-separated training collections of {COLLECTIONS}; "
                    "a-b trains one policy on both a and b")  # fmt: skip
    ap.add_argument("--data", type=Path, default=DATA, help="folder holding cranfield/, cisi/ and med/")
    ap.add_argument("--k", type=int, default=20, help="BM25 candidates reranked at evaluation")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--out", type=Path, default=RESULTS / "rerank_transfer.json")
    ap.add_argument("--variant", choices=list(VARIANTS), default="default",
                    help="training configuration: the committed defaults or both-sides (see the module docstring)")
    a = ap.parse_args()
    parts = {p.strip() for p in a.parts.split(",") if p.strip()}
    if parts - {"train", "eval", "table"}:
        ap.error(f"unknown parts {sorted(parts - {'train', 'eval', 'table'})}")
    trains = [t.strip() for t in a.train.split(",") if t.strip()]
    if any(set(t.split("-")) - set(COLLECTIONS) or len(set(t.split("-"))) != len(t.split("-")) for t in trains):
        ap.error(f"--train must name collections of {COLLECTIONS} (a-b: one policy trained on both)")
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)

    from rankrl.atomic import atomic_write_text

    results = load_results(a.out)
    results.setdefault("collections", {})
    results.setdefault("baselines", {})
    results.setdefault("transfer", {})
    results.setdefault("trained", {})
    results.setdefault("pooled", {})
    results["description"] = (
        "encoder GRPO reranker (rankrl rerank train-encoder, committed defaults) trained on one collection or two "
        "merged (their default 2/3 train split of judged queries), evaluated on every other collection's judged "
        "queries: BM25 "
        f"top-{a.k} reranked; paired tests over queries on per-query nDCG@10 (scipy ttest_rel, wilcoxon); s/query "
        "excludes the one-off cached document embedding (zero-shot and trained alike)")

    def save() -> None:
        for t in trained_tags(results):
            p = pooled(results, t)
            if p:
                results["pooled"][t] = p
        if loo := leave_one_out(results):
            results["pooled"]["leave-one-out"] = loo
        atomic_write_text(a.out, json.dumps(results, indent=1))

    var = a.variant
    for t in trains:
        tag = tag_of(t, var)
        if "train" in parts:
            print(f"[train] {tag}", flush=True)
            record = train(t, a.data, a.threads, var)
            results["trained"][tag] = dict(record)
            save()
        if "eval" in parts:
            if tag not in results["trained"]:
                record = train(t, a.data, a.threads, var) if model_dir(t, a.data, a.threads, var)[0].joinpath(
                    "transfer_summary.json").is_file() else None  # fmt: skip
                if record is None:
                    raise SystemExit(f"no trained model for {tag}: run --parts train --train {t} --variant {var} first")
                results["trained"][tag] = record
            for e in COLLECTIONS:
                if e not in t.split("-"):
                    print(f"[eval] {tag} -> {e}", flush=True)
                    evaluate_pair(t, e, a.data, a.k, a.threads, results, var)
                    save()
    if "table" in parts:
        save()
        print(table(results))
        png = plot(results, a.out.with_suffix(".png"))
        if png:
            print(f"-> {a.out}, {png}")


if __name__ == "__main__":
    main()
