"""Rank-R1 on CPU: SmolLM2 trained by ``rankrl rerank train --recipe rank-r1`` (stock GRPO, setwise windows of 4
shuffled per prompt, reward 1 for a well-formed ``<think>..</think><answer>[i]</answer>`` naming a relevant
candidate) on Cranfield train queries, evaluated on collections it never saw (CISI, MED).

The protocol was fixed before any evaluation number was looked at (nothing here is tuned on evaluation queries):

* Training (``--stage train``): exactly :data:`TRAIN_ARGV` through the ``rankrl`` console script, on the default 2/3
  train split of Cranfield's judged queries (``split_queries(coll, 1/3, seed=0)``, 150 queries; 2 prompts per step),
  4 rollouts, 64 completion tokens (room for a short reasoning), lr 1e-4, LoRA r 8. The step count is what the CPU
  budget of the task allows (the run is resumable: ``--resume_from_checkpoint true``). Per step the metrics file
  gives the mean reward, the unparsable share and the share of groups with a nonzero reward spread; the script
  also records how far the LoRA training moved the merged weights from the untrained model.
* Position bias: training windows are shuffled per prompt (seeded; tests/rerank/test_rank_r1_windows.py), so a
  constant label earns chance. Evaluation is the standard setwise protocol: the tournament's leaf windows hold the
  BM25 top-20 in BM25 order, so a picker that always answers ``[1]`` (or whose answer does not parse: fallback
  ``[1]``) reproduces BM25's order. The ``-shuffled`` rows therefore rerank the same candidates handed over in a
  seeded random order (:func:`shuffled_input`): there an always-``[1]`` picker scores like ``random``.
* Evaluation (``--stage eval``): the judged queries of each unseen collection (CISI: the 76 judged of 112, the 36
  unjudged dropped; MED: all 30), the first ``--queries`` of each in collection order, BM25 top-20 (k = 20):
  ``bm25`` (first-stage order), ``random`` (per query the mean nDCG@10 of :data:`RANDOM_SHUFFLES` seeded uniform
  shuffles), ``zero-shot`` (untrained SmolLM2) and ``trained`` (the merged model), both with setwise likelihood
  picks (``--setwise_pick likelihood``: after the prompt and the prefilled ``<think></think>\\n<answer>[``, the most
  probable label; generated picks cost ~108 s/query on 2 CPU threads, too slow for this budget). Per-query nDCG@10
  with ``ir-measures``; paired t-test and Wilcoxon (scipy) over queries, per collection and pooled; s/query.

Results: ``benchmarks/results/rank_r1_cpu.json`` (+ ``.png``)::

    flock /tmp/rankrl-pytest.lock .venv/bin/python benchmarks/rank_r1_cpu.py --stage train
    flock /tmp/rankrl-pytest.lock .venv/bin/python benchmarks/rank_r1_cpu.py --stage eval --collections med
    flock /tmp/rankrl-pytest.lock .venv/bin/python benchmarks/rank_r1_cpu.py --stage eval --collections cisi
    .venv/bin/python benchmarks/rank_r1_cpu.py --stage table
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rerank_transfer import machine, paired, pool  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DATA = ROOT.parent / "shared" / "data"
OUTPUT_DIR = "/tmp/rank_r1_cpu"
RANKRL = str(ROOT / ".venv" / "bin" / "rankrl")
K = 20
RANDOM_SHUFFLES = 20
RANDOM_SEED = 0
THREADS = 2
EVAL_COLLECTIONS = ("med", "cisi")
LM_ROWS = ("zero-shot", "trained")

#: the training command (fixed before evaluation)
TRAIN_ARGV = ["rerank", "train", "--recipe", "rank-r1", "--model", "smollm2", "--data", str(DATA / "cranfield"),
              "--window", "4", "--rollouts", "4", "--per_device_train_batch_size", "8", "--lora_r", "8",
              "--max_steps", "10", "--max_completion_length", "64", "--learning_rate", "1e-4", "--temperature", "1.0",
              "--output_dir", OUTPUT_DIR, "--report_to", "none", "--use_cpu", "true", "--bf16", "false",
              "--gradient_checkpointing", "false", "--save_strategy", "steps", "--save_steps", "5",
              "--logging_steps", "1", "--log_completions", "false", "--seed", "0"]  # fmt: skip


def load(out: Path) -> dict:
    return json.loads(out.read_text()) if out.is_file() else {}


def save(out: Path, results: dict) -> None:
    from rankrl.atomic import atomic_write_text

    atomic_write_text(out, json.dumps(results, indent=1) + "\n")


# ---------------------------------------------------------------------------------------------- training
def weight_shift(trained: str, base: str = "smollm2") -> dict:
    """How far the merged trained model moved from the untrained one: max |dw| and relative Frobenius norm."""
    import torch

    from rankrl.models import load_model

    a = dict(load_model(base, task_kind="causal_lm", seed=0).model.named_parameters())
    b = dict(load_model(trained, task_kind="causal_lm", seed=0).model.named_parameters())
    with torch.no_grad():
        diffs = {n: (b[n].float() - a[n].float()) for n in a if n in b}
        num = sum(float(d.pow(2).sum()) for d in diffs.values())
        den = sum(float(a[n].float().pow(2).sum()) for n in diffs)
        return {"max_abs": max(float(d.abs().max()) for d in diffs.values()), "relative_fro": (num / den) ** 0.5,
                "tensors_changed": sum(bool(d.abs().max() > 0) for d in diffs.values()),
                "tensors": len(diffs)}  # fmt: skip


def train(out: Path, resume: bool) -> None:
    argv = TRAIN_ARGV + (["--resume_from_checkpoint", "true"] if resume else [])
    print("$", shlex.join([RANKRL, *argv]), flush=True)
    start = time.perf_counter()
    rc = subprocess.run([RANKRL, *argv], env={**os.environ, "OMP_NUM_THREADS": str(THREADS)}).returncode
    seconds = time.perf_counter() - start
    results = load(out)
    rec = results.setdefault("train", {"pieces": []})
    rec["pieces"].append({"command": shlex.join(["rankrl", *argv]), "seconds": round(seconds, 1), "rc": rc,
                          "date": datetime.now().isoformat(timespec="seconds"), "machine": machine()})  # fmt: skip
    save(out, results)
    if rc != 0:
        raise SystemExit(f"training stopped with status {rc}; resume with --stage train --resume")
    rows = [json.loads(line) for line in (Path(OUTPUT_DIR) / "metrics.jsonl").read_text().splitlines() if line]
    steps = [r for r in rows if "reward" in r]

    def col(key: str) -> list:
        return [round(r[key], 4) if key in r else None for r in steps]

    rec.update({"command": shlex.join(["rankrl", *TRAIN_ARGV]), "config": argv_config(TRAIN_ARGV),
                "train_seconds": round(sum(p["seconds"] for p in rec["pieces"]), 1), "steps": len(steps),
                "reward_per_step": col("reward"), "reward_std_per_step": col("reward_std"),
                "unparsable_share_per_step": col("rerank/unparsable_rank_r1"),
                "frac_reward_zero_std_per_step": col("frac_reward_zero_std"),
                "completion_mean_length_per_step": col("completions/mean_length"),
                "step_seconds": round(rec["pieces"][-1]["seconds"] / max(1, len(steps)), 1),
                "weight_shift": weight_shift(str(Path(OUTPUT_DIR) / "merged"))})  # fmt: skip
    save(out, results)
    print(json.dumps({k: v for k, v in rec.items() if k != "pieces"}, indent=1), flush=True)


def argv_config(argv: list[str]) -> dict:
    """``--flag value`` pairs of a command line as a dict.

    >>> argv_config(["rerank", "train", "--window", "4", "--bf16", "false"])
    {'window': '4', 'bf16': 'false'}
    """
    flags = [i for i, a in enumerate(argv) if a.startswith("--")]
    return {argv[i][2:]: argv[i + 1] for i in flags}


# ---------------------------------------------------------------------------------------------- evaluation
def shuffled_input(scorer, seed: int = RANDOM_SEED):
    """``scorer`` handed each query's candidates in a seeded random order (seeded by the query text), its scores
    mapped back to the first-stage order: a picker that always answers ``[1]`` then ranks like a random order.

    >>> first = shuffled_input(lambda q, d: [float(len(d) - i) for i in range(len(d))])  # "earlier is better"
    >>> s = first("q", list("abcdefgh")); sorted(s) == list(range(1, 9)) and s != sorted(s, reverse=True)
    True
    """
    import zlib

    def score(query: str, docs: list[str]) -> list[float]:
        perm = np.random.default_rng([seed, zlib.crc32(query.encode())]).permutation(len(docs))
        inner = list(scorer(query, [docs[j] for j in perm]))
        out = [0.0] * len(docs)
        for pos, j in enumerate(perm):
            out[j] = float(inner[pos])
        return out

    return score


def random_row(coll, qids: list[str], retriever) -> dict:
    """Per query, the mean nDCG@10 of :data:`RANDOM_SHUFFLES` seeded uniform orders of the top-``K``."""
    from rerank_transfer import measure

    rng = np.random.default_rng(RANDOM_SEED)
    runs = [measure(lambda q, d: rng.permutation(len(d)).astype(float), coll, qids, K, retriever)
            for _ in range(RANDOM_SHUFFLES)]  # fmt: skip
    pq = {q: float(np.mean([r["per_query_nDCG@10"][q] for r in runs])) for q in qids}
    return {**runs[0], "per_query_nDCG@10": pq, "nDCG@10": float(np.mean(list(pq.values()))), "sec_per_query": 0.0,
            "shuffles": RANDOM_SHUFFLES, "seed": RANDOM_SEED}  # fmt: skip


def evaluate(out: Path, names: list[str], rows: list[str], queries: int | None) -> None:
    """Score ``rows`` (LM rows and their ``-shuffled`` variants) on the first ``queries`` judged queries of each
    collection in ``names``; BM25 and random are added; rows merge into ``out``."""
    import torch
    from rerank_transfer import keep_bm25_order, measure

    from rankrl.models import load_model
    from rankrl.rerank.bm25 import BM25Retriever
    from rankrl.rerank.collections import load_collection
    from rankrl.rerank.job import make_scorer

    torch.set_num_threads(THREADS)
    results = load(out)
    evals = results.setdefault("eval", {})
    paths = {"zero-shot": "smollm2", "trained": str(Path(OUTPUT_DIR) / "merged")}
    for name in names:
        coll = load_collection(str(DATA / name))
        qids = list(coll.judged_qids)[:queries]
        retriever = BM25Retriever(coll)
        ev = evals.setdefault(name, {})
        if ev.get("query_ids") != qids:
            ev.clear()
        ev.update({"judged_queries": len(coll.judged_qids), "queries": len(qids), "query_ids": qids, "k": K})
        ev.setdefault("rows", {})
        ev["rows"]["bm25"] = measure(keep_bm25_order, coll, qids, K, retriever)
        ev["rows"]["random"] = random_row(coll, qids, retriever)
        save(out, results)
        for lm_row in {r.removesuffix("-shuffled") for r in rows}:
            lm = load_model(paths[lm_row], task_kind="causal_lm", seed=0)
            lm.model.eval()
            base = make_scorer("rank-r1", lm.model, lm.tokenizer, window=4, max_chars=300, setwise_pick="likelihood")
            for row in (r for r in rows if r.removesuffix("-shuffled") == lm_row):
                scorer = shuffled_input(base) if row.endswith("-shuffled") else base
                with torch.no_grad():
                    ev["rows"][row] = {**measure(scorer, coll, qids, K, retriever), "model": paths[lm_row],
                                       "setwise_pick": "likelihood"}  # fmt: skip
                print(f"[{name}] {row}: nDCG@10 {ev['rows'][row]['nDCG@10']:.4f} "
                      f"{ev['rows'][row]['sec_per_query']:.1f} s/query", flush=True)  # fmt: skip
                save(out, results)  # keep a finished row even if a later one is cut off
    results["eval_note"] = (f"BM25 top-{K} of the first N judged queries of each unseen collection; LM rows: setwise "
                            "tournament (window 4, top-10), likelihood picks; '-shuffled': candidates handed over in a "
                            "seeded random order (an always-[1] picker = random); random: mean of "
                            f"{RANDOM_SHUFFLES} shuffles per query")  # fmt: skip
    save(out, results)


PAIRS = (("trained", "zero-shot"), ("trained", "bm25"), ("trained", "random"), ("zero-shot", "bm25"),
         ("zero-shot", "random"), ("trained-shuffled", "zero-shot-shuffled"), ("trained-shuffled", "random"),
         ("zero-shot-shuffled", "random"), ("bm25", "random"))  # fmt: skip


def tests(results: dict) -> dict:
    """Paired tests (per collection and pooled over the collections) of every pair in :data:`PAIRS` measured."""
    out: dict = {}
    evals = results.get("eval", {})
    for name, ev in evals.items():
        pq = {r: v["per_query_nDCG@10"] for r, v in ev["rows"].items()}
        out[name] = {f"{a}_vs_{b}": paired(pq[a], pq[b]) for a, b in PAIRS if a in pq and b in pq}
    names = list(evals)
    if len(names) > 1:
        common = set.intersection(*(set(ev["rows"]) for ev in evals.values()))
        pq = {r: pool([evals[n]["rows"][r]["per_query_nDCG@10"] for n in names], names) for r in common}
        out["pooled"] = {f"{a}_vs_{b}": paired(pq[a], pq[b]) for a, b in PAIRS if a in pq and b in pq}
    return out


def fmt_test(t: dict | None) -> str:
    if not t:
        return "-"
    p = "-" if t["ttest_p"] is None else f"{t['ttest_p']:.2g}"
    w = "-" if t["wilcoxon_p"] is None else f"{t['wilcoxon_p']:.2g}"
    return f"{t['mean_diff']:+.3f} ({t['wins']}/{t['losses']}/{t['ties']}, t {p}, W {w})"


ROW_ORDER = ("bm25", "random", "zero-shot", "trained", "zero-shot-shuffled", "trained-shuffled")


def table(results: dict) -> str:
    """Markdown: nDCG@10 and s/query per row and collection, then the paired tests."""
    evals = results.get("eval", {})
    lines = ["| collection (queries) | " + " | ".join(ROW_ORDER) + " |", "|---" * (len(ROW_ORDER) + 1) + "|"]
    for name, ev in evals.items():
        cells = [f"{ev['rows'][r]['nDCG@10']:.3f} ({ev['rows'][r]['sec_per_query']:.1f} s/q)" if r in ev["rows"]
                 else "-" for r in ROW_ORDER]  # fmt: skip
        lines.append(f"| {name} ({ev['queries']} of {ev['judged_queries']} judged) | " + " | ".join(cells) + " |")
    t = results.get("tests", {})
    lines += ["", "| pair: mean diff nDCG@10 (W/L/T, paired t p, Wilcoxon p) | " + " | ".join(t) + " |",
              "|---" * (len(t) + 1) + "|"]  # fmt: skip
    for a, b in PAIRS:
        key = f"{a}_vs_{b}"
        if any(key in v for v in t.values()):
            lines.append(f"| {a} vs {b} | " + " | ".join(fmt_test(v.get(key)) for v in t.values()) + " |")
    return "\n".join(lines)


def plot(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rankrl.atomic import atomic_write

    evals = results.get("eval", {})
    tr = results.get("train", {})
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [2, 1]})
    names, w = list(evals), 0.8 / len(ROW_ORDER)
    for i, r in enumerate(ROW_ORDER):
        vals = [evals[n]["rows"][r]["nDCG@10"] if r in evals[n]["rows"] else np.nan for n in names]
        ax.bar(np.arange(len(names)) + (i - len(ROW_ORDER) / 2 + 0.5) * w, vals, w, label=r)
    ax.set_xticks(np.arange(len(names)), [f"{n} ({evals[n]['queries']} q)" for n in names])
    ax.set_ylabel("nDCG@10 (BM25 top-20 reranked)")
    ax.set_title("Rank-R1 (SmolLM2, GRPO on Cranfield) on unseen collections", fontsize=9)
    ax.legend(fontsize=7)
    for key, label in (("reward_per_step", "mean reward"), ("unparsable_share_per_step", "unparsable share")):
        vals = [np.nan if v is None else v for v in tr.get(key, [])]
        bx.plot(np.arange(1, len(vals) + 1), vals, marker="o", label=label)
    bx.set_xlabel("GRPO step")
    bx.set_title("training (Cranfield)", fontsize=9)
    bx.legend(fontsize=7)
    fig.tight_layout()
    try:
        atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    finally:
        plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=("train", "eval", "table"), required=True)
    ap.add_argument("--resume", action="store_true", help="train: continue from the last checkpoint")
    ap.add_argument("--collections", default=",".join(EVAL_COLLECTIONS), help="eval: comma-separated, of cisi, med")
    ap.add_argument("--rows", default="zero-shot,trained,zero-shot-shuffled,trained-shuffled",
                    help="eval: the LM rows to score (bm25 and random are always added)")  # fmt: skip
    ap.add_argument("--queries", type=int, default=None, help="eval: the first N judged queries of each collection")
    ap.add_argument("--out", type=Path, default=RESULTS / "rank_r1_cpu.json")
    a = ap.parse_args()
    if a.stage == "train":
        train(a.out, a.resume)
        return
    if a.stage == "eval":
        rows = [r.strip() for r in a.rows.split(",") if r.strip()]
        if unknown := sorted(set(rows) - set(ROW_ORDER[2:])):
            ap.error(f"unknown rows {unknown}; choose from {ROW_ORDER[2:]}")
        evaluate(a.out, [c.strip() for c in a.collections.split(",") if c.strip()], rows, a.queries)
    results = load(a.out)
    results.update({"date": datetime.now().isoformat(timespec="seconds"), "machine": machine(),
                    "question": "does Rank-R1 GRPO training of SmolLM2 on Cranfield (CPU) rerank the BM25 top-20 of "
                                "unseen collections better than its zero-shot start, BM25 and random order?",
                    "tests": tests(results)})  # fmt: skip
    results.setdefault("commands", [])
    cmd = shlex.join(["python", "benchmarks/rank_r1_cpu.py", *sys.argv[1:]])
    if cmd not in results["commands"]:
        results["commands"].append(cmd)
    save(a.out, results)
    print(table(results))
    plot(results, a.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
