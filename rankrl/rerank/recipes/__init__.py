"""The GRPO reranker recipes, one module each, collected in :data:`RECIPES` (recipe name -> :class:`Recipe`).

* ``rank-r1`` (:mod:`~rankrl.rerank.recipes.rank_r1`): setwise, think + answer, stock ``GRPOTrainer``;
* ``erank`` (:mod:`~rankrl.rerank.recipes.erank`): pointwise SFT, then GRPO with a listwise reward;
* ``grouprank`` (:mod:`~rankrl.rerank.recipes.grouprank`): groupwise scores, stock ``GRPOTrainer``;
* ``prorank`` (:mod:`~rankrl.rerank.recipes.prorank`): GRPO prompt warmup (binary answer), then fine-grained score
  learning on the answer tokens' distribution.

Adding a recipe: one module that builds a :class:`Recipe` (prompt rows, reward, scorer, trainer) and one entry
below; :mod:`rankrl.rerank.job` needs nothing else.
"""

from __future__ import annotations

from rankrl.rerank.recipes import erank, grouprank, prorank, rank_r1
from rankrl.rerank.recipes.base import FEATURES, Recipe, RecipeOptions

__all__ = ["FEATURES", "RECIPES", "Recipe", "RecipeOptions", "get_recipe", "recipes_with"]

RECIPES: dict[str, Recipe] = {
    "rank-r1": rank_r1.RECIPE,
    "erank": erank.RECIPE,
    "grouprank": grouprank.RECIPE,
    "prorank": prorank.RECIPE,
}


def get_recipe(name: str, what: str = "recipe") -> Recipe:
    """The recipe called ``name``; ``ValueError`` listing the choices otherwise (``what`` names the setting)."""
    if name not in RECIPES:
        raise ValueError(f"{what} must be one of {tuple(RECIPES)}, got {name!r}")
    return RECIPES[name]


def recipes_with(feature: str) -> str:
    """The names of the recipes that read the optional setting ``feature``, for messages ("erank")."""
    return " / ".join(name for name, r in RECIPES.items() if feature in r.features)
