"""GRPO reranker recipes on TRL: Rank-R1 (setwise), ERank (SFT then listwise-reward GRPO), GroupRank (groupwise).

Data: a :class:`~rankrl.rerank.collections.Collection`, its train queries
(:func:`~rankrl.rerank.collections.split_queries`) and their BM25 top candidates, so the hard negatives
(lexically close, judged or unjudged non-relevant docs) are in every prompt by construction. A query without
candidates is skipped with one counted warning. Rewards and prompts live in :mod:`rankrl.rerank.rewards`.

* ``rank-r1``: one row per query, ``window`` BM25 candidates in a seeded shuffled order (so the answer is not
  always ``[1]``); stock ``GRPOTrainer``. Inference: :func:`setwise_rank` (greedy top-10 selection by a tournament
  tree of windows).
* ``erank``: one row per (query, doc), a fixed ``M = group_size`` docs per query. Stage 1 SFT (``SFTTrainer``)
  on ``score = round(ERANK_MAX_SCORE * gain / g_max)`` (``ERANK_MAX_SCORE`` = 9: every score is one token) with
  ``g_max`` the largest gain in the collection's qrels (Cranfield gains 0-4 -> scores 0, 2, 4, 7, 9); stage 2
  GRPO with :class:`ListwiseGRPOTrainer` so each reward call holds all ``M x G`` rows of a query. Inference:
  :func:`expected_scores`. With ``first_stage_rank`` every prompt also shows the doc's BM25 rank
  (``First-stage (BM25) rank: 3 of 20``), in training and at inference alike.
* ``grouprank``: one row per query, the top ``group_size`` candidates scored jointly; stock ``GRPOTrainer``.

All trainers use LoRA (PEFT ``peft_config``). ``train`` saves the merged model + tokenizer + ``rerank.json`` (the
:class:`RerankArgs`, ``first_stage_rank`` included) to ``<output_dir>/merged`` so ``rankrl rerank eval --model
<output_dir>`` needs nothing else and prompts the way the model was trained.
"""

from __future__ import annotations

import json
import os
import random
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from torch.utils.data import Sampler

from rankrl.atomic import atomic_write_text
from rankrl.rerank.collections import BM25Retriever, Collection, split_queries
from rankrl.rerank.encoder import ENCODER_POLICY_FILE
from rankrl.rerank.rewards import (
    ERANK_MAX_SCORE,
    erank_listwise_reward,
    erank_messages,
    grouprank_messages,
    grouprank_reward,
    parse_group_scores,
    parse_setwise,
    rank_r1_messages,
    rank_r1_reward,
    require_chat_template,
)

__all__ = [
    "RECIPES",
    "EvalArgs",
    "ListwiseGRPOTrainer",  # noqa: F822 (built lazily by the module __getattr__: importing trl costs seconds)
    "QueryGroupedSampler",
    "RerankArgs",
    "build_dataset",
    "erank_sft_dataset",
    "expected_scores",
    "make_scorer",
    "run_rerank_eval",
    "run_rerank_train",
    "score_tokens",
    "SETWISE_PICKS",
    "setwise_label_picks",
    "setwise_rank",
]

RECIPES = ("rank-r1", "erank", "grouprank")


@dataclass
class RerankArgs:
    """rankrl's fields of ``rankrl rerank train`` (every GRPOConfig flag is accepted too)."""

    recipe: str = "erank"
    """rank-r1 (setwise, think + answer), erank (pointwise SFT + listwise GRPO) or grouprank (groupwise)"""
    model: str = "tiny-qwen"
    """model alias (tiny-qwen, smollm2), local directory or hub id"""
    data: str = "../shared/data/cranfield"
    """collection directory (Cranfield, BEIR or TREC layout)"""
    group_size: int = 4
    """erank: docs per query M in one reward call; grouprank: candidates per prompt"""
    window: int = 4
    """rank-r1: candidates per setwise prompt (training and inference)"""
    rollouts: int = 4
    """completions per prompt G (= TRL's num_generations)"""
    sft_steps: int = 20
    """erank stage-1 SFT steps (0: skip)"""
    lora_r: int = 8
    """LoRA rank of all linear projections"""
    max_queries: int | None = None
    """train on at most this many training queries"""
    test_fraction: float = 1 / 3
    """share of judged queries held out for eval (split_queries)"""
    split_seed: int = 0
    """seed of the train/test query split"""
    max_doc_chars: int = 300
    """truncate each candidate text to this many characters in prompts"""
    chat_template: str | None = None
    """a Jinja chat template (or a file holding one) for models without one"""
    first_stage_rank: bool = False
    """erank: show each doc's BM25 rank in its prompt ("rank 3 of 20"), in SFT and GRPO; saved for `rerank eval`"""
    candidate_depth: int | None = None
    """erank: draw each query's group_size docs at random from its BM25 top candidate_depth (None: the top
    group_size), so --first_stage_rank shows ranks as evaluation over the top-k does"""

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ValueError(f"--recipe must be one of {RECIPES}, got {self.recipe!r}")
        _check_first_stage_rank(self.recipe, self.first_stage_rank)
        if self.rollouts < 2:
            raise ValueError("--rollouts must be >= 2 (GRPO needs a group)")
        if self.group_size < 2 or self.window < 2:
            raise ValueError("--group_size and --window must be >= 2")
        if self.candidate_depth is not None and self.candidate_depth < self.group_size:
            raise ValueError(f"--candidate_depth ({self.candidate_depth}) must be >= --group_size ({self.group_size})")


def _check_first_stage_rank(recipe: str, first_stage_rank: bool) -> None:
    if first_stage_rank and recipe != "erank":
        raise ValueError(f"first_stage_rank only applies to the erank recipe, got recipe {recipe!r}; drop "
                         "--first_stage_rank or use --recipe erank")  # fmt: skip


def _skip_warning(skipped: int, what: str) -> None:
    if skipped:
        warnings.warn(f"skipped {skipped} queries with {what}", stacklevel=3)


def build_dataset(recipe: str, coll: Collection, qids: Sequence[str], retriever: BM25Retriever | None = None, *,
                  group_size: int = 4, window: int = 4, max_chars: int = 300, seed: int = 0,
                  first_stage_rank: bool = False, depth: int | None = None) -> Any:  # fmt: skip
    """Training rows (a ``datasets.Dataset``) of ``recipe`` from the BM25 candidates of ``qids``.

    Columns: ``prompt`` (chat messages), ``query_id`` and, per recipe, ``relevant`` + ``doc_ids`` (rank-r1),
    ``doc_id`` + ``gain`` + ``n_docs`` (erank: exactly ``group_size`` rows per query, in query order = BM25
    order), ``doc_ids`` + ``gains`` (grouprank). Queries without (enough) candidates are skipped with a counted
    warning. ``depth`` (erank only, default ``group_size``): each query's group is ``group_size`` docs drawn at
    random (seeded, kept in BM25 order) from its top ``depth``. ``first_stage_rank`` (erank only): each prompt shows
    the doc's 1-based position among those top ``depth`` in ``retriever.search`` order (descending BM25 score, ties
    by corpus order) - as at evaluation, where a reranker sees "rank r of k" over the whole top-k.
    """
    from datasets import Dataset

    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {RECIPES}, got {recipe!r}")
    _check_first_stage_rank(recipe, first_stage_rank)
    retriever = retriever or BM25Retriever(coll)
    depth = group_size if depth is None else depth
    if depth != group_size and recipe != "erank":
        raise ValueError(f"depth only applies to the erank recipe, got recipe {recipe!r}")
    if depth < group_size:
        raise ValueError(f"depth ({depth}) must be >= group_size ({group_size}): the group is drawn from the top depth")
    k = window if recipe == "rank-r1" else depth
    first = retriever.search(list(qids), k=k)
    rng = random.Random(seed)
    rows: list[dict] = []
    empty = short = 0
    for q in qids:
        docs = list(first.get(q, {}))
        if not docs:
            empty += 1
            continue
        judged = coll.qrels.get(q, {})
        query = coll.queries[q]
        if recipe == "rank-r1":
            rng.shuffle(docs)
            rows.append(
                {
                    "prompt": rank_r1_messages(query, [coll.docs[d] for d in docs], max_chars),
                    "query_id": q,
                    "doc_ids": docs,
                    "relevant": [i for i, d in enumerate(docs, 1) if judged.get(d, 0) > 0],
                }
            )
        elif recipe == "erank":
            if len(docs) < group_size:
                short += 1
                continue
            positions = range(1, len(docs) + 1)  # docs: BM25 order, best first
            if len(docs) > group_size:
                positions = sorted(rng.sample(list(positions), group_size))
            for pos in positions:
                d = docs[pos - 1]
                shown = {"first_rank": pos, "n_candidates": len(docs)} if first_stage_rank else {}
                rows.append({"prompt": erank_messages(query, coll.docs[d], max_chars, **shown), "query_id": q,
                             "doc_id": d, "gain": judged.get(d, 0), "n_docs": group_size})  # fmt: skip
        elif recipe == "grouprank":
            rows.append(
                {
                    "prompt": grouprank_messages(query, [coll.docs[d] for d in docs], max_chars),
                    "query_id": q,
                    "doc_ids": docs,
                    "gains": [judged.get(d, 0) for d in docs],
                }
            )
        else:
            raise ValueError(f"recipe must be one of {RECIPES}, got {recipe!r}")
    _skip_warning(empty, "no BM25 candidates")
    _skip_warning(short, f"fewer than {group_size} candidates (erank needs a fixed M per query)")
    if not rows:
        raise ValueError(f"no training rows: none of the {len(qids)} queries has candidates")
    return Dataset.from_list(rows)


def erank_sft_dataset(coll: Collection, rows: Any) -> Any:
    """ERank stage-1 rows: prompt -> ``round(ERANK_MAX_SCORE * gain / g_max)`` as the assistant's answer (g_max: the
    largest gain in the collection's qrels). Every label is one token, so :func:`expected_scores` can read it."""
    from datasets import Dataset

    g_max = max((g for j in coll.qrels.values() for g in j.values()), default=1) or 1
    labels = [str(round(ERANK_MAX_SCORE * g / g_max)) for g in rows["gain"]]
    completions = [[{"role": "assistant", "content": label}] for label in labels]
    return Dataset.from_dict({"prompt": rows["prompt"], "completion": completions})


# ---------------------------------------------------------------------------------------------- listwise GRPO
class QueryGroupedSampler(Sampler):
    """Yield whole queries: each query's ``M`` rows, each ``G`` times in a row, ``queries_per_round`` queries per
    generation round, the round repeated ``repeat_count`` times (TRL's ``RepeatSampler`` contract). Queries are
    permuted by a generator seeded identically on every rank."""

    def __init__(self, query_ids: Sequence[str], num_generations: int, queries_per_round: int,
                 repeat_count: int = 1, shuffle: bool = True, seed: int = 0) -> None:  # fmt: skip
        self.groups: dict[str, list[int]] = {}
        for i, q in enumerate(query_ids):
            self.groups.setdefault(q, []).append(i)
        sizes = {len(v) for v in self.groups.values()}
        if len(sizes) != 1:
            raise ValueError(f"every query needs the same number of rows M, got sizes {sorted(sizes)}")
        self.m = sizes.pop()
        self.g, self.per_round, self.repeat = num_generations, queries_per_round, repeat_count
        self.shuffle, self.seed, self._epoch = shuffle, seed, 0

    def __iter__(self):
        import torch

        qs = list(self.groups)
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed + self._epoch)
            qs = [qs[i] for i in torch.randperm(len(qs), generator=gen).tolist()]
        self._epoch += 1
        for start in range(0, len(qs) - self.per_round + 1, self.per_round):
            for _ in range(self.repeat):
                for q in qs[start : start + self.per_round]:
                    for i in self.groups[q]:
                        yield from [i] * self.g

    def __len__(self) -> int:
        return (len(self.groups) // self.per_round) * self.per_round * self.m * self.g * self.repeat


@lru_cache(maxsize=1)
def _grpo_trainer_cls():
    from trl import GRPOTrainer

    class ListwiseGRPOTrainer(GRPOTrainer):
        """Stock GRPO except the train sampler: :class:`QueryGroupedSampler`, so one reward call holds all
        ``M x G`` rows of each of its queries (needs ``per_device_train_batch_size * steps_per_generation``
        to be a multiple of ``M * G``; checked here)."""

        def _get_train_sampler(self, dataset=None):
            dataset = dataset if dataset is not None else self.train_dataset
            qids = dataset["query_id"]
            m = len(qids) // len(set(qids))
            local = self.args.per_device_train_batch_size * self.args.steps_per_generation
            if local % (m * self.num_generations):
                raise ValueError(f"per_device_train_batch_size x steps_per_generation = {local} must be a multiple "
                                 f"of M x G = {m} x {self.num_generations} for listwise rewards")  # fmt: skip
            return QueryGroupedSampler(qids, self.num_generations,
                                       self.args.generation_batch_size // (m * self.num_generations),
                                       self.num_iterations * self.args.steps_per_generation,
                                       self.shuffle_dataset, self.args.seed)  # fmt: skip

    return ListwiseGRPOTrainer


def __getattr__(name: str) -> Any:  # lazy: importing trl costs seconds
    if name == "ListwiseGRPOTrainer":
        return _grpo_trainer_cls()
    raise AttributeError(name)


# ---------------------------------------------------------------------------------------------- inference
def score_tokens(tokenizer: Any) -> tuple[list[int], list[int]]:
    """(token ids, score values) of the scores that are single tokens: "0".."10" if "10" is one token, else
    "0".."9" only (a multi-token "10" has no single-position probability)."""
    ids, values = [], []
    for s in range(11):
        tok = tokenizer.encode(str(s), add_special_tokens=False)
        if len(tok) == 1:
            ids.append(tok[0])
            values.append(s)
    if len(values) < 2:
        raise ValueError("the tokenizer has fewer than two single-token scores 0..10")
    return ids, values


def _chat_prompts(tokenizer: Any, messages: Sequence[list[dict]]) -> list[str]:
    return [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in messages]


def expected_scores(model: Any, tokenizer: Any, query: str, docs: Sequence[str], max_chars: int = 300,
                    batch_size: int = 16, first_stage_rank: bool = False) -> list[float]:  # fmt: skip
    """ERank ranking scores: ``sum_s s * p(s)`` with ``p`` the softmax over the single-token scores (see
    :func:`score_tokens`) at the answer's first position; each in [0, 10].

    ``first_stage_rank``: ``docs`` are taken to be in first-stage order (as :func:`rankrl.rerank.env.rerank_run`
    passes them: descending BM25 score) and ``docs[i]``'s prompt shows rank ``i + 1`` of ``len(docs)``."""
    import torch

    ids, values = score_tokens(tokenizer)
    vals = torch.tensor(values, dtype=torch.float32)
    n = len(docs)
    messages = [erank_messages(query, d, max_chars, first_rank=i + 1 if first_stage_rank else None,
                               n_candidates=n if first_stage_rank else None) for i, d in enumerate(docs)]  # fmt: skip
    p = torch.softmax(_next_token_logits(model, tokenizer, _chat_prompts(tokenizer, messages), batch_size)[:, ids], -1)
    return (p @ vals).tolist()


def _next_token_logits(model: Any, tokenizer: Any, prompts: Sequence[str], batch_size: int = 16) -> Any:
    """Logits (float32, CPU) of the token after each prompt: one left-padded forward pass per batch."""
    import torch

    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    out = []
    try:
        model.eval()
        for i in range(0, len(prompts), batch_size):
            enc = tokenizer(list(prompts[i : i + batch_size]), return_tensors="pt", padding=True,
                            add_special_tokens=False)  # fmt: skip
            with torch.no_grad():
                out.append(model(**enc.to(model.device)).logits[:, -1, :].float().cpu())
    finally:
        tokenizer.padding_side = side
    return torch.cat(out)


#: the assistant turn's opening for setwise likelihood picks: empty reasoning, the answer's label opened
SETWISE_PREFILL = "<think></think>\n<answer>["


def setwise_label_picks(model: Any, tokenizer: Any, query: str, windows: Sequence[Sequence[str]],
                        max_chars: int = 300) -> list[int]:  # fmt: skip
    """Setwise picks by likelihood (the generation-free Setwise prompting of Zhuang et al., SIGIR 2024) in Rank-R1's
    format: after the Rank-R1 prompt and the prefilled ``<think></think>\\n<answer>[``, the pick is the window's
    label (``1`` .. ``len(window)``) with the most probable next token. One forward pass per window and no decoding
    (SmolLM2 on 2 CPU threads, top-10 of 20: ~19 s per query instead of ~108 s), at the price of not reasoning."""
    labels = [tokenizer.encode(str(i), add_special_tokens=False) for i in range(1, max(map(len, windows)) + 1)]
    if any(len(t) != 1 for t in labels):
        raise ValueError(f"setwise likelihood picks need single-token labels; this tokenizer splits some of "
                         f"1..{len(labels)}: use a smaller --window or --setwise_pick generate")  # fmt: skip
    prompts = [p + SETWISE_PREFILL for p in _chat_prompts(tokenizer, [rank_r1_messages(query, w, max_chars)
                                                                       for w in windows])]  # fmt: skip
    logits = _next_token_logits(model, tokenizer, prompts)
    return [int(logits[i, [t[0] for t in labels[: len(w)]]].argmax()) for i, w in enumerate(windows)]


#: how ``rank-r1`` setwise inference picks a window's winner (see :func:`make_scorer`)
SETWISE_PICKS = ("generate", "likelihood")


def _generate(model: Any, tokenizer: Any, messages: Sequence[list[dict]], max_new_tokens: int) -> list[str]:
    import torch

    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        enc = tokenizer(_chat_prompts(tokenizer, messages), return_tensors="pt", padding=True,
                        add_special_tokens=False).to(model.device)  # fmt: skip
        with torch.no_grad():
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    finally:
        tokenizer.padding_side = side
    return tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)


def setwise_rank(pick, docs: Sequence[str], window: int = 4, top: int = 10) -> list[float]:
    """Rank-R1 setwise sort: greedy top-``top`` selection by a tournament tree. The candidates sit in fixed leaf
    windows of ``window`` (first-stage order); ``pick(list_of_windows) -> winner index per window`` (fallback 0)
    decides each window, winners play on in windows of ``window`` until one is left. After a selection only the
    windows whose members changed are asked again (picks are memoised by window), so a top-10 of 20 costs about
    5 + 9 x 3 window prompts instead of 10 x 8. Returns scores (higher = earlier); the unselected keep first-stage
    order.

    >>> setwise_rank(lambda ws: [max(range(len(w)), key=w.__getitem__) for w in ws], ["1", "5", "3", "4"], 2, 2)
    [2.0, 8.0, 1.0, 7.0]
    """
    memo: dict[tuple[int, ...], int] = {}

    def winners(groups: list[tuple[int, ...]]) -> list[int]:
        todo = list(dict.fromkeys(g for g in groups if len(g) > 1 and g not in memo))
        if todo:
            for g, p in zip(todo, pick([[docs[j] for j in g] for g in todo]), strict=True):
                memo[g] = g[p] if 0 <= p < len(g) else g[0]
        return [memo[g] if len(g) > 1 else g[0] for g in groups]

    leaves = [tuple(range(i, min(i + window, len(docs)))) for i in range(0, len(docs), window)]
    scores = [0.0] * len(docs)
    for rank in range(min(top, len(docs))):
        alive = winners([g for g in leaves if g])
        while len(alive) > 1:
            alive = winners([tuple(alive[i : i + window]) for i in range(0, len(alive), window)])
        scores[alive[0]] = float(2 * len(docs) - rank)
        leaves = [tuple(j for j in g if j != alive[0]) for g in leaves]
    remaining = [j for g in leaves for j in g]
    for pos, j in enumerate(remaining):
        scores[j] = float(len(remaining) - pos)
    return scores


def make_scorer(recipe: str, model: Any, tokenizer: Any, *, window: int = 4, group_size: int = 4,
                max_chars: int = 300, max_new_tokens: int = 64, first_stage_rank: bool = False,
                setwise_pick: str = "generate"):  # fmt: skip
    """A :data:`rankrl.rerank.env.Scorer` ``(query, docs) -> scores`` for ``recipe``; ``first_stage_rank``
    (erank only): prompts show each doc's position in ``docs``, which must be the first-stage (BM25) order;
    ``setwise_pick`` (rank-r1): ``generate`` (reason, then answer; Rank-R1) or ``likelihood``
    (:func:`setwise_label_picks`)."""
    _check_first_stage_rank(recipe, first_stage_rank)
    if setwise_pick not in SETWISE_PICKS:
        raise ValueError(f"setwise_pick must be one of {SETWISE_PICKS}, got {setwise_pick!r}")
    if setwise_pick != "generate" and recipe != "rank-r1":
        raise ValueError(f"setwise_pick={setwise_pick!r} only applies to the rank-r1 recipe, not {recipe!r}")
    if recipe == "erank":
        return lambda q, docs: expected_scores(model, tokenizer, q, docs, max_chars,
                                               first_stage_rank=first_stage_rank)  # fmt: skip
    if recipe == "rank-r1":

        def pick_fn(q):
            if setwise_pick == "likelihood":
                return lambda windows: setwise_label_picks(model, tokenizer, q, windows, max_chars)

            def pick(windows):
                texts = _generate(model, tokenizer, [rank_r1_messages(q, w, max_chars) for w in windows],
                                  max_new_tokens)  # fmt: skip
                return [(parse_setwise(t) or 1) - 1 for t in texts]

            return pick

        return lambda q, docs: setwise_rank(pick_fn(q), docs, window)
    if recipe == "grouprank":

        def score(q, docs):
            groups = [docs[i : i + group_size] for i in range(0, len(docs), group_size)]
            texts = _generate(model, tokenizer, [grouprank_messages(q, g, max_chars) for g in groups], max_new_tokens)
            out: list[float] = []
            for g, t in zip(groups, texts, strict=True):
                out += parse_group_scores(t, len(g)) or [0.0] * len(g)
            return out

        return score
    raise ValueError(f"recipe must be one of {RECIPES}, got {recipe!r}")


# ---------------------------------------------------------------------------------------------- jobs
def _load(args: RerankArgs, seed: int):
    from rankrl.models import load_model

    lm = load_model(args.model, task_kind="causal_lm", seed=seed)
    if args.chat_template:
        p = Path(args.chat_template)
        lm.tokenizer.chat_template = p.read_text() if p.is_file() else args.chat_template
    require_chat_template(lm.tokenizer, args.model)
    return lm


def run_rerank_train(args: RerankArgs, config: Any) -> int:
    """Train ``args.recipe`` with GRPO (``config``: a ``trl.GRPOConfig``), ERank with SFT first; saves the merged
    model to ``<output_dir>/merged``. Returns 0."""
    from peft import LoraConfig
    from trl import GRPOTrainer

    from rankrl.rerank.collections import load_collection
    from rankrl.tracking import trainer_metrics_callback, wandb_mode

    if "wandb" in (config.report_to or []):
        os.environ.setdefault("WANDB_MODE", wandb_mode())
    config.num_generations = args.rollouts
    coll = load_collection(args.data)
    train_q, _ = split_queries(coll, args.test_fraction, args.split_seed)
    train_q = train_q[: args.max_queries] if args.max_queries else train_q
    lm = _load(args, config.seed)
    # one prompt set for both erank stages (SFT, GRPO), with the BM25 rank when first_stage_rank
    rows = build_dataset(args.recipe, coll, train_q, group_size=args.group_size, window=args.window,
                         max_chars=args.max_doc_chars, seed=config.seed, depth=args.candidate_depth,
                         first_stage_rank=args.first_stage_rank)  # fmt: skip
    lora = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, target_modules="all-linear", task_type="CAUSAL_LM")
    model = lm.model
    print(f"rerank train | recipe {args.recipe} | model {args.model} | {len(rows)} rows from {len(train_q)} queries"
          + (" | BM25 rank in prompts" if args.first_stage_rank else ""))  # fmt: skip
    if args.recipe == "erank" and args.sft_steps:
        from trl import SFTConfig, SFTTrainer

        sft_cfg = SFTConfig(output_dir=str(Path(config.output_dir) / "sft"), max_steps=args.sft_steps,
                            per_device_train_batch_size=config.per_device_train_batch_size,
                            learning_rate=config.learning_rate, use_cpu=config.use_cpu, bf16=config.bf16,
                            report_to=config.report_to, logging_steps=config.logging_steps, save_strategy="no",
                            seed=config.seed)  # fmt: skip
        sft = SFTTrainer(model=model, args=sft_cfg, train_dataset=erank_sft_dataset(coll, rows),
                         processing_class=lm.tokenizer, peft_config=lora)  # fmt: skip
        sft.train()
        model = sft.model.merge_and_unload()  # stage 2 trains a fresh adapter on the SFT-merged weights
    cls, reward = GRPOTrainer, {"rank-r1": rank_r1_reward, "grouprank": grouprank_reward}.get(args.recipe)
    if args.recipe == "erank":
        cls, reward = _grpo_trainer_cls(), erank_listwise_reward
    trainer = cls(model=model, processing_class=lm.tokenizer, reward_funcs=reward, args=config, train_dataset=rows,
                  peft_config=lora)  # fmt: skip
    trainer.add_callback(trainer_metrics_callback(config.output_dir))  # reward per step -> metrics.jsonl
    trainer.train()
    trainer.save_model(config.output_dir)  # (the Trainer saves on the main process only)
    merged = Path(config.output_dir) / "merged"
    if trainer.accelerator.is_main_process:  # under `accelerate launch`, one writer for the merged model
        trainer.model.merge_and_unload().save_pretrained(merged)
        lm.tokenizer.save_pretrained(merged)
        atomic_write_text(merged / "rerank.json", json.dumps(asdict(args), indent=1))
        print(f"saved -> {merged}")
    trainer.accelerator.wait_for_everyone()
    return 0


@dataclass
class EvalArgs:
    """Rerank the BM25 top-k of held-out queries with a trained model; write a TREC run and print metrics."""

    model: str = "runs/rerank"
    """a `rerank train` output dir (its merged/ is used), a model directory or alias"""
    data: str = "../shared/data/cranfield"
    """collection directory"""
    split: str = "test"
    """test or train (split_queries with the saved --test_fraction / --split_seed) or all judged queries"""
    recipe: str | None = None
    """rank-r1, erank or grouprank; default: the one saved with the model, else erank"""
    k: int = 20
    """BM25 candidates reranked per query"""
    max_queries: int | None = None
    """evaluate at most this many queries"""
    run: str | None = None
    """TREC run file to write (default: <model>/run.<split>.trec or ./rerank.<split>.trec)"""
    first_stage_rank: bool | None = None
    """erank: BM25 rank in the prompt; default: the value in the model's rerank.json, else False (overriding warns)"""
    setwise_pick: str = "generate"
    """rank-r1: ``generate`` (reason, then answer) or ``likelihood`` (most probable label after an empty
    reasoning; one forward pass per window: 18 vs 108 s per query for SmolLM2 on 2 CPU threads)"""

    def __post_init__(self) -> None:
        if self.split not in ("test", "train", "all"):
            raise ValueError("--split must be test, train or all")
        if self.setwise_pick not in SETWISE_PICKS:
            raise ValueError(f"--setwise_pick must be one of {SETWISE_PICKS}, got {self.setwise_pick!r}")


def _eval_first_stage_rank(given: bool | None, saved: dict, model_dir: Path, recipe: str) -> bool:
    """The eval's ``first_stage_rank``: the user's flag, else the value saved with the model (erank), else False;
    warns when the flag disagrees with the saved value (a model must be prompted the way it was trained)."""
    recorded = saved.get("first_stage_rank", False) if saved else None  # a rerank.json before the flag: False
    if given is None:
        return bool(recorded) and recipe == "erank"
    if recorded is not None and given != recorded:
        warnings.warn(f"{model_dir} was trained with first_stage_rank={recorded} (its rerank.json) but is evaluated "
                      f"with first_stage_rank={given}: its prompts differ from training, so the scores are not "
                      f"the trained model's; drop --first-stage-rank to use the saved value", stacklevel=3)  # fmt: skip
    return given


def run_rerank_eval(args: EvalArgs) -> dict[str, float]:
    """Rerank, write the run file, print a metrics table next to BM25's; returns the reranker's metrics."""
    from rankrl.rerank.collections import load_collection

    path = Path(args.model)
    if (path / ENCODER_POLICY_FILE).is_file():  # an encoder policy from `rankrl rerank train-encoder`
        return _run_encoder_eval(args, path)
    model_dir = path / "merged" if (path / "merged").is_dir() else path
    saved = json.loads((model_dir / "rerank.json").read_text()) if (model_dir / "rerank.json").is_file() else {}
    recipe = args.recipe or saved.get("recipe", "erank")
    first_stage_rank = _eval_first_stage_rank(args.first_stage_rank, saved, model_dir, recipe)
    train_args = RerankArgs(**{**saved, "model": str(model_dir) if model_dir.exists() else args.model,
                               "recipe": recipe, "first_stage_rank": first_stage_rank})  # fmt: skip
    coll = load_collection(args.data)
    lm = _load(train_args, 0)
    scorer = make_scorer(train_args.recipe, lm.model, lm.tokenizer, window=train_args.window,
                         group_size=train_args.group_size, max_chars=train_args.max_doc_chars,
                         first_stage_rank=train_args.first_stage_rank, setwise_pick=args.setwise_pick)  # fmt: skip
    out = Path(args.run) if args.run else (model_dir.parent if model_dir.name == "merged" else Path.cwd()) / \
        f"run.{args.split}.trec"  # fmt: skip
    note = ", BM25 rank in prompts" if train_args.first_stage_rank else ""
    return _eval_scorer(scorer, args, coll, BM25Retriever(coll), train_args.test_fraction, train_args.split_seed,
                        out, train_args.recipe, note)  # fmt: skip


def _eval_scorer(scorer: Any, args: EvalArgs, coll: Collection, retriever: BM25Retriever, test_fraction: float,
                 split_seed: int, out: Path, label: str, note: str = "",
                 fold: int = 0) -> dict[str, float]:  # fmt: skip
    """Rerank ``args.split``'s queries with ``scorer``, write the TREC run, print its metrics next to BM25's;
    returns the reranker's metrics. ``test_fraction``, ``split_seed`` and ``fold`` are the model's own split, so
    ``test`` is exactly the queries its training never saw."""
    from rankrl.rerank.collections import evaluate, write_run
    from rankrl.rerank.env import RERANK_MEASURES, rerank_run

    train_q, test_q = split_queries(coll, test_fraction, split_seed, fold=fold)
    qids = {"train": train_q, "test": test_q, "all": coll.judged_qids}[args.split][: args.max_queries]
    run = rerank_run(scorer, coll, qids, args.k, retriever)
    bm25 = rerank_run(lambda q, d: [0.0] * len(d), coll, qids, args.k, retriever)
    what = f"{len(qids)} {args.split} queries, top-{args.k}{note}"
    write_run(run, out, tag=f"rankrl-{label}")
    metrics = evaluate(run, coll.qrels, RERANK_MEASURES, qids=list(qids))
    base = evaluate(bm25, coll.qrels, RERANK_MEASURES, qids=list(qids))
    print(f"{'measure':<10}{'BM25':>8}{label:>12}   ({what})")
    for m in RERANK_MEASURES:
        print(f"{m:<10}{base[m]:>8.4f}{metrics[m]:>12.4f}")
    print(f"run -> {out}")
    return metrics


def _run_encoder_eval(args: EvalArgs, path: Path) -> dict[str, float]:
    from rankrl.rerank.collections import load_collection
    from rankrl.rerank.encoder import load_encoder_scorer

    coll = load_collection(args.data)
    retriever = BM25Retriever(coll)
    scorer, saved = load_encoder_scorer(path, coll, retriever, args.k)
    out = Path(args.run) if args.run else path / f"run.{args.split}.trec"
    return _eval_scorer(scorer, args, coll, retriever, saved.test_fraction, saved.split_seed, out, "encoder",
                        fold=saved.fold)  # fmt: skip
