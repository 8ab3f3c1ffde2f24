"""The shape of a reranker recipe: the hooks :mod:`rankrl.rerank.job` calls, and the options they read.

A recipe is one module under ``rankrl/rerank/recipes/`` that builds one :class:`Recipe` (its prompt rows,
reward, trainer and inference scorer) and one entry in :data:`rankrl.rerank.recipes.RECIPES`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rankrl.rerank.collections import Collection
from rankrl.rerank.evaluate import Scorer

__all__ = ["FEATURES", "Recipe", "RecipeOptions", "stock_grpo_trainer"]

#: optional settings only some recipes read (a recipe lists the ones it reads in :attr:`Recipe.features`)
FEATURES = ("depth", "first_stage_rank", "setwise_pick")


@dataclass(frozen=True)
class RecipeOptions:
    """Settings of a recipe's rows and scorer (from ``RerankArgs`` / ``make_scorer``'s keywords)."""

    group_size: int = 4
    """erank: docs per query M in one reward call; grouprank: candidates per prompt"""
    window: int = 4
    """rank-r1: candidates per setwise prompt (training and inference)"""
    max_chars: int = 300
    """truncate each candidate text to this many characters in prompts"""
    depth: int = 4
    """BM25 candidates a training group is drawn from (recipes with the ``depth`` feature; else group_size)"""
    first_stage_rank: bool = False
    """show each doc's BM25 rank in its prompt (recipes with the ``first_stage_rank`` feature)"""
    max_new_tokens: int = 64
    """decoding budget of generating scorers"""
    setwise_pick: str = "generate"
    """how a setwise window's winner is picked (recipes with the ``setwise_pick`` feature)"""
    prefix_cache: bool = True
    """next-token scorers (erank, rank-r1 likelihood picks): compute the prompts' shared prefix once
    (:func:`rankrl.rerank.prompts.shared_prefix_logits`); False: the reference path, same scores to float tolerance"""


def stock_grpo_trainer() -> type:
    """TRL's ``GRPOTrainer`` (imported on demand: importing trl costs seconds)."""
    from trl import GRPOTrainer

    return GRPOTrainer


@dataclass(frozen=True)
class Recipe:
    """One GRPO reranker recipe: what ``rankrl rerank train`` and ``eval`` need from it."""

    name: str
    """the ``--recipe`` value (also the key of :data:`~rankrl.rerank.recipes.RECIPES`, and of ``UNPARSABLE``)"""
    candidates: Callable[[RecipeOptions], int]
    """BM25 candidates retrieved per training query"""
    rows: Callable[[Collection, str, list[str], random.Random, RecipeOptions], list[dict]]
    """training rows of one query from its BM25 candidate ids (best first, at least one); [] skips the query"""
    reward: Callable[..., list[float]]
    """the GRPO reward function ``(completions, **columns) -> list[float]``"""
    scorer: Callable[[Any, Any, RecipeOptions], Scorer]
    """inference: ``(model, tokenizer, options) -> (query, docs) -> scores``"""
    trainer: Callable[[], type] = stock_grpo_trainer
    """the GRPO trainer class (a callable, so trl is imported only when training)"""
    sft_dataset: Callable[[Collection, Any], Any] | None = None
    """stage-1 SFT rows from the collection and the training rows (None: GRPO only)"""
    post_grpo: Callable[[Any, Any, Any, Any], None] | None = None
    """a stage after GRPO (prorank's score learning): ``(grpo_trainer, rows, rerank_args, stop)``, training
    ``grpo_trainer.model`` (its LoRA adapter) in place before the merged model is saved (None: GRPO is the last)"""
    features: frozenset[str] = frozenset()
    """the optional settings of :data:`FEATURES` this recipe reads"""
    skip_note: str = ""
    """why a query with candidates gave no rows, for the skip warning (``{group_size}`` is filled in)"""

    def __post_init__(self) -> None:
        if unknown := sorted(self.features - set(FEATURES)):
            raise ValueError(f"recipe {self.name!r}: unknown features {unknown}; known: {FEATURES}")
