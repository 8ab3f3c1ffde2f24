"""GRPO for an encoder reranker: a MiniLM bi-encoder policy that samples whole rankings of the BM25 top-k.

Where an encoder suffices, an LLM is not needed to learn from the Rerank-v0 reward. The policy scores the
candidates of a query

    logit_i = scale * cos(E_q(query), E_d(doc_i)) + w_bm25 * z_i

(``z_i``: the candidate's BM25 score z-scored among the query's candidates), samples ``G`` rankings from
Plackett-Luce(logits) (Gumbel top-k), and rewards each with nDCG@10 of that order against *all* the query's
judgments - exactly :class:`rankrl.rerank.env.RerankEnv`'s reward. GRPO's objective follows: per query, the
advantage of ranking ``g`` is ``(r_g - mean r) / (std r + eps)`` over its ``G`` rankings, and the loss is
``-mean_g A_g log PL(top-m of ranking g)``: group-relative, no critic, one on-policy update per batch (the PPO
ratio is 1, so there is nothing to clip).

``E_q`` is the packaged MiniLM with a PEFT LoRA adapter (trained); ``E_d`` is the same encoder without the adapter,
so document embeddings are computed once (and cached) and a step costs only the queries' passes - the usual
asymmetric setup, which also leaves a document index valid. At step 0 the adapter's B is 0 and ``w_bm25`` is 0:
the policy's greedy order is the zero-shot bi-encoder's, so the benchmark's ``minilm-bi`` row is its start.
``--train_docs`` adapts the document side too (one shared adapter): candidates are then embedded with gradients
every step (~100x the cost per query of a query-only step on CPU) and all documents are re-embedded before
each evaluation. ``--objective listnet`` swaps the GRPO loss for the supervised one (softmax cross-entropy against
the candidates' gains) on the same policy and pools: the reference for what the data allows.

Written by hand because TRL's ``GRPOTrainer`` trains causal LMs that emit text and SB3 has no ranking action
space; the encoder, the adapter and the metric come from transformers, PEFT and ir-measures.

    rankrl rerank train-encoder --data ../shared/data/cranfield            # 200 steps, ~2 min on CPU
    rankrl rerank eval --model runs/rerank-encoder --data ../shared/data/cranfield --split test
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from rankrl.atomic import atomic_write, atomic_write_text, replace_dir
from rankrl.rerank.bm25 import BM25Retriever
from rankrl.rerank.collections import Collection, load_collection, split_queries
from rankrl.rerank.first_stage import FirstStage, first_stage
from rankrl.rerank.metrics import ndcg

__all__ = [
    "ENCODER_POLICY_FILE",
    "OBJECTIVES",
    "EncoderGRPOArgs",
    "EncoderPolicy",
    "embed_texts",
    "load_encoder_scorer",
    "ndcg_of_order",
    "plackett_luce_logprob",
    "plackett_luce_sample",
    "run_encoder_grpo",
]

#: ``--objective`` values: the RL objective and its supervised reference
OBJECTIVES = ("grpo", "listnet")
#: the file that marks a directory as an encoder reranker (read back by ``rankrl rerank eval``)
ENCODER_POLICY_FILE = "encoder_policy.json"


@dataclass
class EncoderGRPOArgs:
    """``rankrl rerank train-encoder``: GRPO over Plackett-Luce rankings with a MiniLM bi-encoder policy."""

    data: str = "../shared/data/cranfield"
    """collection directory (Cranfield/CISI/MED, BEIR or TREC layout) or irds:<ir_datasets id>"""
    candidates: str | None = None
    """TREC run file whose top --train_k (training) and --k (held-out evaluation) candidates per query replace
    BM25's; the policy's BM25 feature is still each candidate's BM25 score"""
    drop_unknown: bool = False
    """drop (and count) judgments and --candidates entries naming queries or documents the collection lacks"""
    model: str = "minilm"
    """encoder: ``minilm`` (the packaged all-MiniLM-L6-v2) or a local sentence-transformers-style directory"""
    output_dir: str = "runs/rerank-encoder"
    """adapter, encoder_policy.json, metrics.jsonl and reward.png go here"""
    k: int = 20
    """BM25 candidates per query that are reranked (evaluation, and training unless --train_k)"""
    train_k: int = 100
    """BM25 candidates per *training* query (0: --k); deeper pools hold more relevant documents, so more rankings
    differ in reward, while evaluation stays on the top --k"""
    steps: int = 200
    """optimizer steps (200 at lr 5e-5 with --train_k 100: mid-plateau on 30 Cranfield dev queries)"""
    queries_per_step: int = 8
    """queries per step (each with its own group of rankings)"""
    rollouts: int = 16
    """rankings G sampled per query (the GRPO group)"""
    top_m: int = 10
    """positions of a ranking whose Plackett-Luce log-probability is trained (nDCG@10 sees only these)"""
    objective: str = "grpo"
    """``grpo`` (reward only: group-relative advantages of sampled rankings) or ``listnet`` - the *supervised*
    reference on the same policy, pools and steps: cross-entropy between softmax(logits) and the candidates' gains
    (normalised), read straight from the qrels. Tells how much of a shortfall is the data and how much is RL."""
    lr: float = 5e-5
    """AdamW learning rate of the LoRA adapter (on the top-20 pool, 3e-4 overfits Cranfield after 50 steps)"""
    head_lr: float = 1e-2
    """AdamW learning rate of the two scalars (log scale, BM25 weight)"""
    lora_r: int = 8
    """LoRA rank of the query encoder's linear layers"""
    scale: float = 20.0
    """cosine scale (inverse temperature of the Plackett-Luce policy)"""
    learn_scale: bool = False
    """also train the scale (it then mostly grows: a sharper policy samples higher rewards without ranking better)"""
    train_docs: bool = False
    """also adapt the document side (one shared LoRA encoder): candidates are embedded with gradients each step
    (~20x the cost) and every document is re-embedded before each held-out evaluation"""
    bm25_feature: bool = True
    """give the policy the z-scored BM25 score with a learned weight (starts at 0)"""
    max_length: int = 256
    """token limit of documents and queries"""
    test_fraction: float = 1 / 3
    """share of judged queries held out (split_queries); training never sees them"""
    split_seed: int = 0
    """seed of the train/test query split"""
    fold: int = 0
    """which slice of the seeded query permutation is held out (0: the plain split; 0..2 at 1/3: 3-fold CV)"""
    eval_every: int = 0
    """every N steps also log held-out nDCG@10 (reported only; never used for selection); 0: start and end"""
    dev_queries: int = 0
    """model selection: hold out the last N train queries as the held-out set (the test queries stay unseen)"""
    seed: int = 0
    """seed of query order, sampling and LoRA init"""
    report_to: str = "wandb"
    """wandb or none (metrics.jsonl is always written)"""
    threads: int | None = None
    """torch CPU threads (default: torch's)"""

    def __post_init__(self) -> None:
        if self.rollouts < 2:
            raise ValueError("--rollouts must be >= 2 (GRPO needs a group of rankings)")
        if self.k < 2 or self.train_k == 1 or self.train_k < 0:
            raise ValueError("--k must be >= 2 and --train_k 0 (= --k) or >= 2: one candidate has nothing to rank")
        if self.queries_per_step < 1 or self.steps < 1 or self.top_m < 1:
            raise ValueError("--queries_per_step, --steps and --top_m must be >= 1")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"--objective must be grpo or listnet (the supervised reference), got {self.objective!r}")
        if self.report_to not in ("wandb", "none"):
            raise ValueError(f"--report_to must be wandb or none, got {self.report_to!r}")


# ---------------------------------------------------------------------------------------------- Plackett-Luce
def plackett_luce_sample(logits: Any, n_samples: int, generator: Any = None) -> Any:
    """``n_samples`` rankings (rows of item indices, best first) from Plackett-Luce(``logits``) by the Gumbel
    top-k trick: sorting ``logits + Gumbel noise`` samples the sequential softmax choice exactly."""
    import torch

    u = torch.rand((n_samples, logits.shape[-1]), generator=generator).clamp(1e-12, 1 - 1e-12)
    return torch.argsort(logits.detach().float().cpu() - torch.log(-torch.log(u)), dim=1, descending=True)


def plackett_luce_logprob(logits: Any, rankings: Any, top_m: int | None = None) -> Any:
    """Log-probability of each ranking's first ``top_m`` picks under Plackett-Luce(``logits``):
    ``sum_j logit[r_j] - logsumexp(logit[r_j:])``.

    >>> import torch
    >>> lp = plackett_luce_logprob(torch.tensor([1.0, 0.0, -1.0]), torch.tensor([[0, 1, 2], [2, 1, 0]]))
    >>> [round(float(x), 4) for x in lp.exp()]   # softmax picks: 0.6652 * 0.7311 and 0.0900 * 0.2689
    [0.4863, 0.0242]
    """
    import torch

    ordered = logits[rankings.to(logits.device)]  # (G, n): the logits in each ranking's order
    rest = torch.logcumsumexp(ordered.flip(-1), dim=-1).flip(-1)  # logsumexp of what is still unpicked
    steps = ordered - rest
    return steps[..., : top_m or ordered.shape[-1]].sum(-1)


def ndcg_of_order(order: Sequence[str], judged: Mapping[str, int], k: int = 10) -> float:
    """nDCG@k of ``order`` (doc ids, best first) against all of a query's judgments ``judged`` (doc -> gain), as
    ir-measures computes it for the Rerank-v0 reward (linear gains; the ideal list uses every judged doc).

    >>> round(ndcg_of_order(["a", "b"], {"b": 2, "c": 1}), 4)
    0.4796
    """
    return ndcg([judged.get(d, 0) for d in order], list(judged.values()), k)


# ---------------------------------------------------------------------------------------------- policy
def _encoder_path(model: str) -> str:
    if model == "minilm":
        from rankrl.models import minilm_path

        return minilm_path()
    if not (Path(model) / "config.json").is_file():
        raise FileNotFoundError(f"--model {model!r}: expected 'minilm' or a local encoder directory with config.json")
    return model


def embed_texts(encoder: Any, tokenizer: Any, texts: Sequence[str], max_length: int) -> Any:
    """Mean-pooled (over the attention mask), L2-normalised sentence embeddings, as sentence-transformers does."""
    import torch

    enc = tokenizer(list(texts), truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    hidden = encoder(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=-1)


def _doc_embeddings(encoder: Any, tokenizer: Any, coll: Collection, path: str, max_length: int) -> Any:
    """Embeddings of every document by the frozen encoder, cached under ``$RANKRL_CACHE/encoder-docs``."""
    import torch
    from tqdm.auto import tqdm

    from rankrl.models import cache_dir

    ids = list(coll.docs)
    key = hashlib.sha256(json.dumps([str(Path(path).resolve()), max_length, ids,
                                     [coll.docs[d] for d in ids]]).encode()).hexdigest()[:16]  # fmt: skip
    cached = cache_dir() / "encoder-docs" / f"{key}.pt"
    if cached.is_file():
        return torch.load(cached)
    out = []
    with torch.no_grad():
        for i in tqdm(range(0, len(ids), 64), desc="embedding documents", leave=False):
            out.append(embed_texts(encoder, tokenizer, [coll.docs[d] for d in ids[i : i + 64]], max_length))
    emb = torch.cat(out)
    atomic_write(cached, lambda tmp: torch.save(emb, tmp))
    return emb


def _bm25_z(scores: Sequence[float]) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    return (s - s.mean()) / s.std() if s.size > 1 and s.std() > 0 else np.zeros_like(s)


class EncoderPolicy:
    """The trainable pieces (LoRA query encoder, log scale, BM25 weight) and the frozen document embeddings."""

    def __init__(self, args: EncoderGRPOArgs, coll: Collection, adapter_dir: str | None = None,
                 heads: Mapping[str, float] | None = None) -> None:  # fmt: skip
        import torch
        from peft import LoraConfig, PeftModel, get_peft_model
        from transformers import AutoModel, AutoTokenizer

        self.args, self.path = args, _encoder_path(args.model)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        base = AutoModel.from_pretrained(self.path)
        base.eval()
        self.doc_ids = list(coll.docs)
        self.doc_index = {d: i for i, d in enumerate(self.doc_ids)}
        self.doc_emb = _doc_embeddings(base, self.tokenizer, coll, self.path, args.max_length)
        self.coll = coll
        if adapter_dir:
            self.encoder = PeftModel.from_pretrained(base, adapter_dir)
        else:
            lora = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, target_modules=["query", "key", "value",
                              "dense"], lora_dropout=0.0)  # fmt: skip
            self.encoder = get_peft_model(base, lora)
        if adapter_dir and args.train_docs:
            self.refresh_documents()
        heads = heads or {}
        self.log_scale = torch.nn.Parameter(torch.tensor(float(heads.get("log_scale", math.log(args.scale)))))
        self.w_bm25 = torch.nn.Parameter(torch.tensor(float(heads.get("w_bm25", 0.0))))

    def heads(self) -> dict[str, float]:
        ls, w = self.log_scale.detach(), self.w_bm25.detach()
        return {"log_scale": float(ls), "scale": float(ls.exp()), "w_bm25": float(w)}

    def queries(self, texts: Sequence[str]) -> Any:
        return embed_texts(self.encoder, self.tokenizer, texts, self.args.max_length)

    def documents(self, doc_ids: Sequence[str]) -> Any:
        """Embeddings of ``doc_ids`` by the adapted encoder, with gradients (``train_docs``)."""
        return embed_texts(self.encoder, self.tokenizer, [self.coll.docs[d] for d in doc_ids], self.args.max_length)

    def refresh_documents(self) -> None:
        """Re-embed every document with the adapted encoder (``train_docs``: the cached ones are the base's)."""
        import torch

        with torch.no_grad():
            ids = self.doc_ids
            self.doc_emb = torch.cat([self.documents(ids[i : i + 64]) for i in range(0, len(ids), 64)])

    def logits(self, q_emb: Any, doc_ids: Sequence[str], bm25: Sequence[float], d_emb: Any = None) -> Any:
        import torch

        d = self.doc_emb[[self.doc_index[x] for x in doc_ids]] if d_emb is None else d_emb
        out = self.log_scale.exp() * (d @ q_emb)
        if self.args.bm25_feature:
            out = out + self.w_bm25 * torch.as_tensor(_bm25_z(bm25), dtype=out.dtype)
        return out

    def scorer(self, retriever: BM25Retriever, k: int):
        """A Rerank-v0 :data:`~rankrl.rerank.evaluate.Scorer` (query text, candidate texts) -> greedy logits."""
        import torch

        by_text: dict[str, str] = {}
        for d, text in retriever.collection.docs.items():
            by_text.setdefault(text, d)  # identical texts embed identically and get the same BM25 score

        def score(query: str, docs: list[str]) -> list[float]:
            ids = [by_text[t] for t in docs]
            bm25 = retriever.doc_scores(query, ids)  # = the search scores for BM25 candidates; any rank for a run's
            with torch.no_grad():
                q = self.queries([query])[0]
                return self.logits(q, ids, bm25).tolist()

        return score


# ---------------------------------------------------------------------------------------------- train / load
def _held_out_ndcg(policy: EncoderPolicy, coll: Collection, qids: Sequence[str], retriever: BM25Retriever,
                   k: int, refresh: bool = True, first: FirstStage | None = None) -> float:  # fmt: skip
    """Held-out nDCG@10 of the greedy policy reranking ``first``'s top-``k`` (default: BM25's)."""
    from rankrl.rerank.evaluate import rank_with

    if refresh and policy.args.train_docs:
        policy.refresh_documents()
    return rank_with(policy.scorer(retriever, k), coll, qids, k, retriever=first or retriever,
                     measures=("nDCG@10",))["nDCG@10"]  # fmt: skip


def _sample_and_score(logits: Any, docs: Sequence[str], judged: Mapping[str, int], rollouts: int,
                      gen: Any) -> tuple[Any, Any, float]:  # fmt: skip
    """``rollouts`` Plackett-Luce rankings of ``docs``, their rewards (nDCG@10) and the greedy order's nDCG@10."""
    import torch

    rankings = plackett_luce_sample(logits, rollouts, gen)
    r = torch.tensor([ndcg_of_order([docs[j] for j in row], judged) for row in rankings.tolist()])
    greedy = ndcg_of_order([docs[j] for j in torch.argsort(logits.detach(), descending=True)], judged)
    return rankings, r, greedy


def _pool_reward(policy: EncoderPolicy, coll: Collection, pool: Sequence[str], first: Mapping, rollouts: int,
                 seed: int) -> tuple[float, float]:  # fmt: skip
    """Mean sampled reward (``rollouts`` rankings per query, a fixed seed) and greedy nDCG@10 over *every* training
    query: the per-step reward mixes easy and hard queries, this is the same queries before and after training."""
    import torch

    gen, sampled, greedy = torch.Generator().manual_seed(seed), [], []
    with torch.no_grad():
        for i in range(0, len(pool), 32):
            q_emb = policy.queries([coll.queries[q] for q in pool[i : i + 32]])
            for q, e in zip(pool[i : i + 32], q_emb, strict=True):
                docs = list(first[q])
                _, r, g = _sample_and_score(policy.logits(e, docs, list(first[q].values())), docs, coll.qrels[q],
                                            rollouts, gen)  # fmt: skip
                sampled.append(float(r.mean()))
                greedy.append(g)
    return float(np.mean(sampled)), float(np.mean(greedy))


def run_encoder_grpo(args: EncoderGRPOArgs) -> dict[str, Any]:
    """Train the encoder policy with GRPO on the train queries; save it to ``args.output_dir``; returns the summary
    (held-out nDCG@10 at the start and the end, reward per step)."""
    import torch
    from tqdm.auto import tqdm

    from rankrl.plots import plot_curves
    from rankrl.tracking import Tracker, read_metrics

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    coll = load_collection(args.data, drop_unknown=args.drop_unknown)
    train_q, test_q = split_queries(coll, args.test_fraction, args.split_seed, fold=args.fold)
    if args.dev_queries:
        train_q, test_q = train_q[: -args.dev_queries], train_q[-args.dev_queries :]
    retriever = BM25Retriever(coll)
    stage = first_stage(coll, args.candidates, drop_unknown=args.drop_unknown, bm25=retriever)
    train_k = args.train_k or args.k
    src = "--candidates run's" if args.candidates else "BM25"
    first = stage.search(train_q, k=train_k)
    if args.candidates:  # a run's order, but the policy's feature is BM25's score (as `rerank eval` computes it)
        first = {q: dict(zip(c, retriever.doc_scores(coll.queries[q], list(c)), strict=True)) for q, c in first.items()}
        print(stage.describe())
    # queries without a relevant candidate give every ranking the same reward: no signal, so they are left out
    pool = [q for q in train_q if len(first[q]) >= 2 and any(coll.qrels.get(q, {}).get(d, 0) > 0 for d in first[q])]
    if not pool:
        raise ValueError(f"no training query has a relevant document in its {src} top-{train_k}; raise --train_k")
    policy = EncoderPolicy(args, coll)
    policy.encoder.eval()  # no dropout: the rankings are sampled from, and trained on, the same logits
    trainable = [p for p in policy.encoder.parameters() if p.requires_grad]
    policy.log_scale.requires_grad_(args.learn_scale)
    heads = [policy.log_scale, policy.w_bm25]
    opt = torch.optim.AdamW([{"params": trainable, "lr": args.lr},
                             {"params": heads, "lr": args.head_lr, "weight_decay": 0.0}])  # fmt: skip
    out = Path(args.output_dir)
    rng = np.random.default_rng(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    print(f"rerank train-encoder | {args.model} + LoRA r={args.lora_r} | {len(pool)} of {len(train_q)} train queries "
          f"have a relevant doc in the {src} top-{train_k} | {args.steps} steps x {args.queries_per_step} queries x "
          f"{args.rollouts} rankings")  # fmt: skip
    # untrained: base embeddings
    start = _held_out_ndcg(policy, coll, test_q, retriever, args.k, refresh=False, first=stage)
    pool_start = _pool_reward(policy, coll, pool, first, args.rollouts, args.seed + 1)
    order: list[str] = []
    with Tracker(out, asdict(args), name=out.name, use_wandb=args.report_to == "wandb") as tracker:
        tracker.log({"heldout/nDCG@10": start, **policy.heads()}, step=0)
        bar = tqdm(range(1, args.steps + 1), desc="encoder GRPO")
        for step in bar:
            if len(order) < args.queries_per_step:
                order += [pool[i] for i in rng.permutation(len(pool))]
            batch, order = order[: args.queries_per_step], order[args.queries_per_step :]
            q_emb = policy.queries([coll.queries[q] for q in batch])
            losses, rewards, greedy = [], [], []
            for i, q in enumerate(batch):
                docs = list(first[q])
                d_emb = policy.documents(docs) if args.train_docs else None
                logits = policy.logits(q_emb[i], docs, list(first[q].values()), d_emb)
                rankings, r, g = _sample_and_score(logits, docs, coll.qrels[q], args.rollouts, gen)
                if args.objective == "listnet":  # supervised: the gains themselves, no sampling in the loss
                    gain = torch.tensor([float(coll.qrels[q].get(d, 0)) for d in docs], dtype=logits.dtype)
                    losses.append(-(gain / gain.sum() * torch.log_softmax(logits, 0)).sum())
                else:
                    adv = (r - r.mean()) / (r.std() + 1e-6)
                    losses.append(-(adv * plackett_luce_logprob(logits, rankings, args.top_m)).mean())
                rewards.append(float(r.mean()))
                greedy.append(g)
            loss = torch.stack(losses).mean()
            opt.zero_grad()
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(trainable + heads, 1.0)
            opt.step()
            row = {"reward": float(np.mean(rewards)), "train/greedy_nDCG@10": float(np.mean(greedy)),
                   "loss": loss.item(), "grad_norm": float(grad_norm), **policy.heads()}  # fmt: skip
            if args.eval_every and step % args.eval_every == 0 and step < args.steps:
                row["heldout/nDCG@10"] = _held_out_ndcg(policy, coll, test_q, retriever, args.k, first=stage)
            tracker.log(row, step=step)
            bar.set_postfix(reward=f"{row['reward']:.3f}", w_bm25=f"{row['w_bm25']:.2f}")
        # (train_docs: re-embeds every document)
        end = _held_out_ndcg(policy, coll, test_q, retriever, args.k, first=stage)
        pool_end = _pool_reward(policy, coll, pool, first, args.rollouts, args.seed + 1)
        tracker.log({"heldout/nDCG@10": end}, step=args.steps)
        staged = Path(tempfile.mkdtemp(dir=out, prefix=".adapter-"))  # the whole adapter, then swapped in
        policy.encoder.save_pretrained(staged)
        replace_dir(staged, out / "adapter")
        saved = {"args": asdict(args), "heads": policy.heads(), "encoder_path": policy.path}
        atomic_write_text(out / ENCODER_POLICY_FILE, json.dumps(saved, indent=1))
        rows = read_metrics(out / "metrics.jsonl")
        png = plot_curves(rows, ["reward", "train/greedy_nDCG@10", "heldout/nDCG@10", "w_bm25"], out / "reward.png",
                          title=f"encoder GRPO on {coll.name}")  # fmt: skip
        tracker.image("curves", png, step=args.steps)
        rewards = [r["reward"] for r in rows if "reward" in r]
        summary = {"heldout_nDCG@10_start": start, "heldout_nDCG@10_end": end, "n_heldout": len(test_q),
                   "heldout": f"last {args.dev_queries} train queries (dev)" if args.dev_queries else "test queries",
                   "train_queries_used": len(pool), "reward_per_step": rewards,
                   "train_pool_reward_start": pool_start[0], "train_pool_reward_end": pool_end[0],
                   "train_pool_greedy_nDCG@10_start": pool_start[1], "train_pool_greedy_nDCG@10_end": pool_end[1],
                   **policy.heads()}  # fmt: skip
        tracker.summary(summary)
    print(f"held-out nDCG@10 ({len(test_q)} queries): start {start:.4f} -> end {end:.4f}; reward over all "
          f"{len(pool)} train queries {pool_start[0]:.4f} -> {pool_end[0]:.4f}; saved -> {out}")
    return summary


def load_encoder_scorer(model_dir: str | Path, coll: Collection, retriever: BM25Retriever, k: int):
    """The greedy scorer of an encoder policy saved by :func:`run_encoder_grpo` (for ``rankrl rerank eval``)."""
    saved = json.loads((Path(model_dir) / ENCODER_POLICY_FILE).read_text())
    known = {f.name for f in fields(EncoderGRPOArgs)}
    args = EncoderGRPOArgs(**{key: v for key, v in saved["args"].items() if key in known})
    policy = EncoderPolicy(args, coll, adapter_dir=str(Path(model_dir) / "adapter"), heads=saved["heads"])
    policy.encoder.eval()
    return policy.scorer(retriever, k), args
