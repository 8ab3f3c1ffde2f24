"""``rankrl rerank train`` and ``eval`` for the GRPO reranker recipes of :data:`rankrl.rerank.recipes.RECIPES`.

Data: a :class:`~rankrl.rerank.collections.Collection`, its train queries
(:func:`~rankrl.rerank.collections.split_queries`) and their BM25 top candidates, so the hard negatives
(lexically close, judged or unjudged non-relevant docs) are in every prompt by construction. A query without
candidates is skipped with one counted warning. Each recipe (``rank-r1``, ``erank``, ``grouprank``; one module
each under :mod:`rankrl.rerank.recipes`) says how a query's candidates become training rows, its reward, its
trainer (ERank: SFT first, then a query-grouped GRPO) and how a trained model scores candidates; this module only
wires them: :func:`build_dataset`, :func:`make_scorer`, :func:`run_rerank_train`, :func:`run_rerank_eval`.

``train`` resumes with ``--resume_from_checkpoint DIR|true`` (flags that change the run must match
``run_args.json``; ``metrics.jsonl`` is cut back to the checkpoint's step; erank re-runs its seeded SFT stage first,
then continues GRPO from the checkpoint) and stops on SIGINT / SIGTERM after the current step with a checkpoint
(exit status 130). ``eval`` writes the TREC run and, beside it, a JSON of the metrics with the count of generated
completions it could not parse (each fell back to BM25 order, see :class:`~rankrl.rerank.prompts.ParseCount`).

All trainers use LoRA (PEFT ``peft_config``). ``train`` saves the merged model + tokenizer + ``rerank.json`` (the
:class:`RerankArgs`, ``first_stage_rank`` included) to ``<output_dir>/merged`` so ``rankrl rerank eval --model
<output_dir>`` needs nothing else and prompts the way the model was trained.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rankrl.atomic import atomic_write_text, replace_dir
from rankrl.rerank.bm25 import BM25Retriever
from rankrl.rerank.collections import Collection, split_queries
from rankrl.rerank.encoder import ENCODER_POLICY_FILE
from rankrl.rerank.evaluate import Scorer
from rankrl.rerank.first_stage import FirstStage, first_stage
from rankrl.rerank.prompts import require_chat_template
from rankrl.rerank.recipes import RECIPES, RecipeOptions, get_recipe, recipes_with
from rankrl.rerank.recipes.rank_r1 import SETWISE_PICKS

__all__ = [
    "EvalArgs",
    "RerankArgs",
    "build_dataset",
    "make_scorer",
    "run_rerank_eval",
    "run_rerank_train",
]


@dataclass
class RerankArgs:
    """rankrl's fields of ``rankrl rerank train`` (every GRPOConfig flag is accepted too)."""

    recipe: str = "erank"
    """rank-r1 (setwise, think + answer), erank (pointwise SFT + listwise GRPO), grouprank (groupwise) or prorank
    (GRPO prompt warmup for --max_steps, then --score_steps of fine-grained score learning)"""
    model: str = "tiny-qwen"
    """model alias (tiny-qwen, smollm2), local directory or hub id"""
    data: str = "../shared/data/cranfield"
    """collection directory (Cranfield/CISI/MED, BEIR or TREC layout) or irds:<ir_datasets id>"""
    candidates: str | None = None
    """TREC run file (qid Q0 docid rank score tag) whose candidates form the training pools instead of BM25's; each
    query's top --window / --group_size / --candidate_depth by score"""
    drop_unknown: bool = False
    """drop (and count) judgments and --candidates entries naming queries or documents the collection lacks"""
    group_size: int = 4
    """erank: docs per query M in one reward call; grouprank: candidates per prompt"""
    window: int = 4
    """rank-r1: candidates per setwise prompt (training and inference)"""
    rollouts: int = 4
    """completions per prompt G (= TRL's num_generations)"""
    sft_steps: int = 20
    """erank stage-1 SFT steps (0: skip)"""
    score_steps: int = 20
    """prorank stage-2 (fine-grained score learning) steps after the GRPO prompt warmup (0: skip)"""
    score_learning_rate: float = 1e-4
    """prorank stage-2 learning rate (AdamW on the LoRA adapter)"""
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
        get_recipe(self.recipe, "--recipe")
        _check_first_stage_rank(self.recipe, self.first_stage_rank)
        if self.rollouts < 2:
            raise ValueError("--rollouts must be >= 2 (GRPO needs a group)")
        if self.group_size < 2 or self.window < 2:
            raise ValueError("--group_size and --window must be >= 2")
        if self.candidate_depth is not None and self.candidate_depth < self.group_size:
            raise ValueError(f"--candidate_depth ({self.candidate_depth}) must be >= --group_size ({self.group_size})")


def _check_first_stage_rank(recipe: str, first_stage_rank: bool) -> None:
    if first_stage_rank and "first_stage_rank" not in getattr(RECIPES.get(recipe), "features", ()):
        names = recipes_with("first_stage_rank")
        raise ValueError(f"first_stage_rank only applies to the {names} recipe, got recipe {recipe!r}; drop "
                         f"--first_stage_rank or use --recipe {names}")  # fmt: skip


def _skip_warning(skipped: int, what: str) -> None:
    if skipped:
        warnings.warn(f"skipped {skipped} queries with {what}", stacklevel=3)


def build_dataset(recipe: str, coll: Collection, qids: Sequence[str], retriever: FirstStage | None = None, *,
                  group_size: int = 4, window: int = 4, max_chars: int = 300, seed: int = 0,
                  first_stage_rank: bool = False, depth: int | None = None) -> Any:  # fmt: skip
    """Training rows (a ``datasets.Dataset``) of ``recipe`` from the first-stage candidates of ``qids`` (``retriever``:
    BM25 by default, or :class:`~rankrl.rerank.first_stage.RunCandidates` of a run file).

    Columns: ``prompt`` (chat messages), ``query_id`` and, per recipe, ``relevant`` + ``doc_ids`` (rank-r1),
    ``doc_id`` + ``gain`` + ``n_docs`` (erank: exactly ``group_size`` rows per query, in query order = BM25
    order), ``doc_ids`` + ``gains`` (grouprank). Queries without (enough) candidates are skipped with a counted
    warning. ``depth`` (erank only, default ``group_size``): each query's group is ``group_size`` docs drawn at
    random (seeded, kept in BM25 order) from its top ``depth``. ``first_stage_rank`` (erank only): each prompt shows
    the doc's 1-based position among those top ``depth`` in ``retriever.search`` order (descending BM25 score, ties
    by corpus order) - as at evaluation, where a reranker sees "rank r of k" over the whole top-k.
    """
    from datasets import Dataset

    spec = get_recipe(recipe)
    _check_first_stage_rank(recipe, first_stage_rank)
    retriever = retriever or first_stage(coll)
    depth = group_size if depth is None else depth
    if depth != group_size and "depth" not in spec.features:
        raise ValueError(f"depth only applies to the {recipes_with('depth')} recipe, got recipe {recipe!r}")
    if depth < group_size:
        raise ValueError(f"depth ({depth}) must be >= group_size ({group_size}): the group is drawn from the top depth")
    opts = RecipeOptions(group_size=group_size, window=window, max_chars=max_chars, depth=depth,
                         first_stage_rank=first_stage_rank)  # fmt: skip
    first = retriever.search(list(qids), k=spec.candidates(opts))
    rng = random.Random(seed)  # one stream over the queries, in order
    rows: list[dict] = []
    empty = short = 0
    for q in qids:
        docs = list(first.get(q, {}))
        if not docs:
            empty += 1
            continue
        new = spec.rows(coll, q, docs, rng, opts)
        short += not new
        rows += new
    _skip_warning(empty, "no first-stage candidates")
    _skip_warning(short, spec.skip_note.format(group_size=group_size))
    if not rows:
        raise ValueError(f"no training rows: none of the {len(qids)} queries has candidates")
    return Dataset.from_list(rows)


def make_scorer(recipe: str, model: Any, tokenizer: Any, *, window: int = 4, group_size: int = 4,
                max_chars: int = 300, max_new_tokens: int = 64, first_stage_rank: bool = False,
                setwise_pick: str = "generate") -> Scorer:  # fmt: skip
    """A :data:`rankrl.rerank.evaluate.Scorer` ``(query, docs) -> scores`` for ``recipe``; ``first_stage_rank``
    (erank only): prompts show each doc's position in ``docs``, which must be the first-stage (BM25) order;
    ``setwise_pick`` (rank-r1): ``generate`` (reason, then answer; Rank-R1) or ``likelihood``
    (:func:`~rankrl.rerank.recipes.rank_r1.setwise_label_picks`)."""
    _check_first_stage_rank(recipe, first_stage_rank)
    if setwise_pick not in SETWISE_PICKS:
        raise ValueError(f"setwise_pick must be one of {SETWISE_PICKS}, got {setwise_pick!r}")
    spec = get_recipe(recipe)
    if setwise_pick != "generate" and "setwise_pick" not in spec.features:
        raise ValueError(f"setwise_pick={setwise_pick!r} only applies to the {recipes_with('setwise_pick')} recipe, "
                         f"not {recipe!r}")  # fmt: skip
    opts = RecipeOptions(group_size=group_size, window=window, max_chars=max_chars, depth=group_size,
                         first_stage_rank=first_stage_rank, max_new_tokens=max_new_tokens,
                         setwise_pick=setwise_pick)  # fmt: skip
    return spec.scorer(model, tokenizer, opts)


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
    model to ``<output_dir>/merged``. Returns 0, or 130 after a SIGINT / SIGTERM (with a checkpoint once GRPO
    started)."""
    from peft import LoraConfig

    from rankrl.interrupt import EXIT_INTERRUPTED, stop_on_signals
    from rankrl.rerank.collections import load_collection
    from rankrl.resume import prepare_grpo_run
    from rankrl.tracking import wandb_mode

    if "wandb" in (config.report_to or []):
        os.environ.setdefault("WANDB_MODE", wandb_mode())
    resume = prepare_grpo_run(args, config, args.rollouts, "--rollouts", "rankrl rerank train")
    coll = load_collection(args.data, drop_unknown=args.drop_unknown)
    first = first_stage(coll, args.candidates, drop_unknown=args.drop_unknown)
    train_q, _ = split_queries(coll, args.test_fraction, args.split_seed)
    train_q = train_q[: args.max_queries] if args.max_queries else train_q
    lm = _load(args, config.seed)
    # one prompt set for both erank stages (SFT, GRPO), with the BM25 rank when first_stage_rank
    rows = build_dataset(args.recipe, coll, train_q, first, group_size=args.group_size, window=args.window,
                         max_chars=args.max_doc_chars, seed=config.seed, depth=args.candidate_depth,
                         first_stage_rank=args.first_stage_rank)  # fmt: skip
    lora = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, target_modules="all-linear", task_type="CAUSAL_LM")
    model = lm.model
    print(f"rerank train | recipe {args.recipe} | model {args.model} | {len(rows)} rows from {len(train_q)} queries"
          + (" | BM25 rank in prompts" if args.first_stage_rank else "")
          + (f" | {first.describe()}" if args.candidates else ""))  # fmt: skip
    recipe = RECIPES[args.recipe]
    with stop_on_signals() as stop:
        trainer = _train_stages(args, config, lm, model, rows, coll, lora, recipe, resume, stop)
    if stop:
        where = (f"after step {trainer.state.global_step}; checkpoint -> {Path(config.output_dir)}/checkpoint-"
                 f"{trainer.state.global_step}; continue with the same flags and --resume_from_checkpoint true"
                 if trainer is not None else
                 "during the SFT stage, before any GRPO checkpoint; run the same command again")  # fmt: skip
        print(f"{stop.name}: stopped {where}")
        return EXIT_INTERRUPTED
    trainer.save_model(config.output_dir)  # (the Trainer saves on the main process only)
    merged = Path(config.output_dir) / "merged"
    if trainer.accelerator.is_main_process:  # under `accelerate launch`, one writer for the merged model
        staged = Path(tempfile.mkdtemp(dir=config.output_dir, prefix=".merged-"))  # complete, then swapped in
        trainer.model.merge_and_unload().save_pretrained(staged)
        lm.tokenizer.save_pretrained(staged)
        atomic_write_text(staged / "rerank.json", json.dumps(asdict(args), indent=1))
        replace_dir(staged, merged)
        print(f"saved -> {merged}")
    trainer.accelerator.wait_for_everyone()
    return 0


def _train_stages(args: RerankArgs, config: Any, lm: Any, model: Any, rows: Any, coll: Collection, lora: Any,
                  recipe: Any, resume: str | None, stop: Any) -> Any:  # fmt: skip
    """ERank's SFT stage (if any), then GRPO (resumed from ``resume``), then the recipe's ``post_grpo`` stage (if any:
    prorank's score learning, on the GRPO trainer's model); the GRPO trainer, or None when ``stop`` fired during
    SFT."""
    from rankrl.resume import checkpoint_step
    from rankrl.tracking import trainer_metrics_callback, trainer_stop_callback

    if recipe.sft_dataset is not None and args.sft_steps:
        from trl import SFTConfig, SFTTrainer

        sft_cfg = SFTConfig(output_dir=str(Path(config.output_dir) / "sft"), max_steps=args.sft_steps,
                            per_device_train_batch_size=config.per_device_train_batch_size,
                            learning_rate=config.learning_rate, use_cpu=config.use_cpu, bf16=config.bf16,
                            report_to=config.report_to, logging_steps=config.logging_steps, save_strategy="no",
                            seed=config.seed)  # fmt: skip
        sft = SFTTrainer(model=model, args=sft_cfg, train_dataset=recipe.sft_dataset(coll, rows),
                         processing_class=lm.tokenizer, peft_config=lora)  # fmt: skip
        sft.add_callback(trainer_stop_callback(stop, save=False))
        sft.train()
        if stop:  # SFT is seeded and re-run on resume, so its checkpoint would not be used
            return None
        model = sft.model.merge_and_unload()  # stage 2 trains a fresh adapter on the SFT-merged weights
    trainer = recipe.trainer()(model=model, processing_class=lm.tokenizer, reward_funcs=recipe.reward, args=config,
                               train_dataset=rows, peft_config=lora)  # fmt: skip
    resume_step = checkpoint_step(resume) if resume is not None else None
    trainer.add_callback(trainer_metrics_callback(config.output_dir, resume_step=resume_step))  # -> metrics.jsonl
    trainer.add_callback(trainer_stop_callback(stop))
    trainer.train(resume_from_checkpoint=resume)
    if recipe.post_grpo is not None and not stop:  # a recipe's stage after GRPO (prorank: score learning)
        recipe.post_grpo(trainer, rows, args, stop)
    return trainer


@dataclass
class EvalArgs:
    """Rerank the BM25 top-k of held-out queries with a trained model; write a TREC run and print metrics."""

    model: str = "runs/rerank"
    """a `rerank train` output dir (its merged/ is used), a model directory or alias"""
    data: str = "../shared/data/cranfield"
    """collection directory (Cranfield/CISI/MED, BEIR or TREC layout) or irds:<ir_datasets id>"""
    split: str = "test"
    """test or train (split_queries with the saved --test_fraction / --split_seed) or all judged queries"""
    recipe: str | None = None
    """rank-r1, erank, grouprank or prorank; default: the one saved with the model, else erank"""
    k: int = 20
    """first-stage candidates reranked per query (BM25's, or the top k by score of --candidates)"""
    candidates: str | None = None
    """TREC run file (qid Q0 docid rank score tag) to rerank instead of BM25's top --k; documents and queries still
    come from --data; a query the run lacks gets an empty ranking (counted warning)"""
    drop_unknown: bool = False
    """drop (and count) judgments and --candidates entries naming queries or documents the collection lacks"""
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
                      f"the trained model's; drop --first_stage_rank to use the saved value", stacklevel=3)  # fmt: skip
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
    coll = load_collection(args.data, drop_unknown=args.drop_unknown)
    first = first_stage(coll, args.candidates, drop_unknown=args.drop_unknown)
    lm = _load(train_args, 0)
    scorer = make_scorer(train_args.recipe, lm.model, lm.tokenizer, window=train_args.window,
                         group_size=train_args.group_size, max_chars=train_args.max_doc_chars,
                         first_stage_rank=train_args.first_stage_rank, setwise_pick=args.setwise_pick)  # fmt: skip
    out = Path(args.run) if args.run else (model_dir.parent if model_dir.name == "merged" else Path.cwd()) / \
        f"run.{args.split}.trec"  # fmt: skip
    note = ", BM25 rank in prompts" if train_args.first_stage_rank else ""
    return _eval_scorer(scorer, args, coll, first, train_args.test_fraction, train_args.split_seed, out,
                        train_args.recipe, note)  # fmt: skip


def _eval_scorer(scorer: Any, args: EvalArgs, coll: Collection, retriever: FirstStage, test_fraction: float,
                 split_seed: int, out: Path, label: str, note: str = "",
                 fold: int = 0) -> dict[str, float]:  # fmt: skip
    """Rerank ``args.split``'s queries with ``scorer``, write the TREC run and ``<run file>.json`` (metrics, BM25's, and
    the unparsable-completion count when the scorer parses text), print its metrics next to BM25's; returns the
    reranker's metrics (plus ``rerank/unparsable`` and ``rerank/unparsable_share`` for parsing scorers).
    ``test_fraction``, ``split_seed`` and ``fold`` are the model's own split, so ``test`` is exactly the queries its
    training never saw."""
    from rankrl.rerank.collections import write_run
    from rankrl.rerank.evaluate import RERANK_MEASURES, rerank_run
    from rankrl.rerank.metrics import evaluate

    train_q, test_q = split_queries(coll, test_fraction, split_seed, fold=fold)
    qids = {"train": train_q, "test": test_q, "all": coll.judged_qids}[args.split][: args.max_queries]
    run = rerank_run(scorer, coll, qids, args.k, retriever)
    bm25 = rerank_run(lambda q, d: [0.0] * len(d), coll, qids, args.k, retriever)  # the first stage's own order
    base_name = "run" if args.candidates else "BM25"
    what = f"{len(qids)} {args.split} queries, top-{args.k}{note}"
    if args.candidates:
        print(retriever.describe())
    write_run(run, out, tag=f"rankrl-{label}")
    metrics = evaluate(run, coll.qrels, RERANK_MEASURES, qids=list(qids))
    base = evaluate(bm25, coll.qrels, RERANK_MEASURES, qids=list(qids))
    print(f"{'measure':<10}{base_name:>8}{label:>12}   ({what})")
    for m in RERANK_MEASURES:
        print(f"{m:<10}{base[m]:>8.4f}{metrics[m]:>12.4f}")
    record: dict[str, Any] = {"label": label, "split": args.split, "k": args.k, "queries": len(qids),
                              "metrics": dict(metrics), "bm25": dict(base),
                              "first_stage": str(args.candidates) if args.candidates else "bm25"}  # fmt: skip
    if args.candidates:  # "bm25" then holds the run's own order's metrics
        record.update(candidates_unknown_docs_dropped=retriever.unknown_docs,
                      candidates_unknown_queries=len(retriever.unknown_queries),
                      candidates_missing_queries=len(set(retriever.missing) & set(qids)))  # fmt: skip
    count = getattr(scorer, "parse_count", None)
    if count is not None:
        share = count.failed / count.total if count.total else 0.0
        metrics = {**metrics, "rerank/unparsable": count.failed, "rerank/unparsable_share": share}
        record.update(unparsable=count.failed, parsed_total=count.total, unparsable_share=share)
        print(f"unparsable {count.what}: {count.failed} of {count.total} ({share:.1%})")
        if count.failed:
            warnings.warn(f"{count.failed} of {count.total} {count.what} could not be parsed and fell back to "
                          f"{count.fallback}, so the {label} scores are partly BM25's; use a model trained for the "
                          "answer format" + (" or --setwise_pick likelihood (no parsing)" if label == "rank-r1"
                                             else ""), stacklevel=3)  # fmt: skip
    summary = out.with_name(out.name + ".json")
    atomic_write_text(summary, json.dumps(record, indent=1))
    print(f"run -> {out}\nmetrics -> {summary}")
    return metrics


def _run_encoder_eval(args: EvalArgs, path: Path) -> dict[str, float]:
    from rankrl.rerank.collections import load_collection
    from rankrl.rerank.encoder import load_encoder_scorer

    coll = load_collection(args.data, drop_unknown=args.drop_unknown)
    bm25 = BM25Retriever(coll)  # the policy's BM25 feature, whatever the candidates
    scorer, saved = load_encoder_scorer(path, coll, bm25, args.k)
    out = Path(args.run) if args.run else path / f"run.{args.split}.trec"
    first = first_stage(coll, args.candidates, drop_unknown=args.drop_unknown, bm25=bm25)
    return _eval_scorer(scorer, args, coll, first, saved.test_fraction, saved.split_seed, out, "encoder",
                        fold=saved.fold)  # fmt: skip
