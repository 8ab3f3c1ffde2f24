"""The shared-prefix inference path (rankrl.rerank.prompts.shared_prefix_logits) computes what the reference
path computes: next-token logits, ERank expected scores and Rank-R1 likelihood picks equal to float tolerance, with
the prompts' common prefix run through the model once."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402

from rankrl.models import load_model  # noqa: E402
from rankrl.rerank.prompts import chat_prompts, common_prefix_length, next_token_logits  # noqa: E402
from rankrl.rerank.recipes import erank, rank_r1  # noqa: E402
from rankrl.rerank.recipes.base import RecipeOptions  # noqa: E402

#: candidates of very different lengths (padding inside a batch) in no particular order
DOCS = ["a wing", "lift of a swept wing in a slip at high angles of attack, measured in a wind tunnel", "a fish",
        "boundary layer transition on a flat plate", "", "heat transfer to a blunt body in hypersonic flow",
        "x"]  # fmt: skip


@pytest.fixture(scope="module")
def lm():
    return load_model("tiny-qwen", task_kind="causal_lm")


def _prompts(tok, docs=DOCS, query="wing lift"):
    return chat_prompts(tok, [erank.erank_messages(query, d) for d in docs])


class _CountTokens:
    """Forward pre-hook counting the token positions each forward pass of the model runs."""

    def __init__(self, model):
        self.calls: list[tuple[int, int]] = []
        self.handle = model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.calls.append(tuple(ids.shape))

    @property
    def tokens(self) -> int:
        return sum(b * n for b, n in self.calls)


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_next_token_logits_prefix_cache_equals_reference(lm, batch_size):
    prompts = _prompts(lm.tokenizer)
    ref = next_token_logits(lm.model, lm.tokenizer, prompts, batch_size=batch_size, prefix_cache=False)
    new = next_token_logits(lm.model, lm.tokenizer, prompts, batch_size=batch_size)
    assert new.shape == ref.shape == (len(DOCS), ref.shape[1]) and new.dtype == torch.float32
    torch.testing.assert_close(new, ref, atol=1e-4, rtol=1e-4)


def test_prefix_is_computed_once_and_padding_trimmed(lm):
    prompts = _prompts(lm.tokenizer)
    ids = lm.tokenizer(prompts, add_special_tokens=False)["input_ids"]
    shared = common_prefix_length(ids)
    assert shared > 10  # system turn + "Query: wing lift\nPassage:"
    ref, new = _CountTokens(lm.model), None
    next_token_logits(lm.model, lm.tokenizer, prompts, batch_size=16, prefix_cache=False)
    ref.handle.remove()
    new = _CountTokens(lm.model)
    next_token_logits(lm.model, lm.tokenizer, prompts, batch_size=16)
    new.handle.remove()
    assert new.calls[0] == (1, shared)  # the prefix, once
    assert new.calls[1] == (len(DOCS), max(len(i) for i in ids) - shared)  # every prompt's rest, one batch
    assert ref.tokens == len(DOCS) * max(len(i) for i in ids)
    assert new.tokens == shared + len(DOCS) * (max(len(i) for i in ids) - shared) < ref.tokens
    # sorted by length: batches of 2 pad only to their own longest rest
    few = _CountTokens(lm.model)
    next_token_logits(lm.model, lm.tokenizer, prompts, batch_size=2)
    few.handle.remove()
    assert sum(b * n for b, n in few.calls[1:]) < len(DOCS) * (max(len(i) for i in ids) - shared)


def test_single_prompt_and_identical_prompts(lm):
    one = _prompts(lm.tokenizer, ["a wing"])
    torch.testing.assert_close(next_token_logits(lm.model, lm.tokenizer, one),
                               next_token_logits(lm.model, lm.tokenizer, one, prefix_cache=False),
                               atol=1e-4, rtol=1e-4)  # fmt: skip
    same = one * 3  # the common prefix stops one token short of the end: every prompt keeps a token to run
    out = next_token_logits(lm.model, lm.tokenizer, same)
    torch.testing.assert_close(out, next_token_logits(lm.model, lm.tokenizer, same, prefix_cache=False),
                               atol=1e-4, rtol=1e-4)  # fmt: skip
    assert common_prefix_length([[1, 2, 3]] * 3) == 2 and common_prefix_length([[5], [6]]) == 0


def test_expected_scores_prefix_cache_equals_reference(lm):
    for rank in (False, True):
        ref = erank.expected_scores(lm.model, lm.tokenizer, "wing lift", DOCS, first_stage_rank=rank,
                                    prefix_cache=False)  # fmt: skip
        new = erank.expected_scores(lm.model, lm.tokenizer, "wing lift", DOCS, first_stage_rank=rank)
        assert new == pytest.approx(ref, abs=1e-4)
    ref_scorer = erank.scorer(lm.model, lm.tokenizer, RecipeOptions(prefix_cache=False))
    new_scorer = erank.scorer(lm.model, lm.tokenizer, RecipeOptions())
    assert new_scorer("engine noise", DOCS) == pytest.approx(ref_scorer("engine noise", DOCS), abs=1e-4)


def test_setwise_likelihood_picks_prefix_cache_equal_reference(lm):
    windows = [DOCS[:4], DOCS[4:], DOCS[1:3]]
    ref = rank_r1.setwise_label_picks(lm.model, lm.tokenizer, "wing lift", windows, prefix_cache=False)
    assert rank_r1.setwise_label_picks(lm.model, lm.tokenizer, "wing lift", windows) == ref
    opts = RecipeOptions(setwise_pick="likelihood", window=3)
    ref_scores = rank_r1.scorer(lm.model, lm.tokenizer, RecipeOptions(setwise_pick="likelihood", window=3,
                                                                     prefix_cache=False))("q", DOCS)  # fmt: skip
    assert rank_r1.scorer(lm.model, lm.tokenizer, opts)("q", DOCS) == ref_scores
