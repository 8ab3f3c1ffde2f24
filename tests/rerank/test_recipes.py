"""The reranker recipes (rankrl.rerank.recipes) and their shared prompts: exact rewards, listwise batching, a live
Rank-R1 step, expected scores and setwise inference."""

from __future__ import annotations

import doctest
import math

import pytest

pytest.importorskip("trl")

import torch  # noqa: E402

import rankrl.rerank.job as rr  # noqa: E402
import rankrl.rerank.prompts as prompts  # noqa: E402
from rankrl.models import load_model  # noqa: E402
from rankrl.rerank.recipes import erank, grouprank, rank_r1  # noqa: E402
from tests.rerank.tiny import grpo_config, lora_config, tiny_collection  # noqa: E402


def test_doctests():
    for mod in (prompts, rank_r1, erank, grouprank):
        result = doctest.testmod(mod)
        assert result.failed == 0 and result.attempted > 0, mod.__name__


def test_rank_r1_reward_exact_and_counts_malformed():
    prompts.UNPARSABLE.clear()
    logged = []
    good = "<think>wings</think>\n<answer> [2] </answer>"
    out = rank_r1.rank_r1_reward(
        [good, good, "<answer>[2]</answer>", "<think>x</think><answer>2</answer>"],
        relevant=[[2], [1, 3], [2], [2]],
        log_metric=lambda k, v: logged.append((k, v)),
    )
    assert out == [1.0, 0.0, 0.0, 0.0]
    assert prompts.UNPARSABLE["rank-r1"] == 2 and logged == [("rerank/unparsable_rank_r1", 0.5)]


def test_erank_listwise_reward_exact():
    prompts.UNPARSABLE.clear()
    # one query, M=2 docs x G=2: "a" (gain 1) scored 8 and 8 (tied at positions 1-2), "b" (gain 0) 3 and junk
    out = erank.erank_listwise_reward(
        ["8", "8", "3", "ten"], query_id=["q"] * 4, doc_id=["a", "a", "b", "b"], gain=[1, 1, 0, 0], n_docs=[2] * 4
    )
    tied = (1 + 1 / math.log2(3)) / 2
    assert out == pytest.approx([tied, tied, -0.5 / math.log2(4), -0.5])  # junk gets the floor -neg_weight
    assert prompts.UNPARSABLE["erank"] == 1


def test_erank_listwise_reward_refusing_to_answer_never_pays():
    """The reward hack seen on SmolLM2: with unparsable = 0, answering junk beat the (negative) mean reward."""
    kw = dict(query_id=["q"] * 6, doc_id=list("aabbcc"), gain=[0, 0, 0, 0, 2, 2], n_docs=[3] * 6, neg_weight=0.5)
    answered = erank.erank_listwise_reward(["1", "2", "3", "4", "9", "8"], **kw)
    junk_for_a = erank.erank_listwise_reward(["?", "?", "3", "4", "9", "8"], **kw)
    assert min(junk_for_a[:2]) <= min(answered)  # no parsable answer earns less than refusing to answer
    assert junk_for_a[:2] == [-0.5, -0.5]


def test_erank_listwise_reward_bad_layout_raises():
    with pytest.raises(ValueError, match="layout"):  # doc b has one rollout, doc a two
        erank.erank_listwise_reward(["1", "2", "3"], query_id=["q"] * 3, doc_id=["a", "a", "b"], gain=[1, 1, 0])
    with pytest.raises(ValueError, match="layout"):  # only 1 of the query's 2 docs in this call
        erank.erank_listwise_reward(["1", "2"], query_id=["q"] * 2, doc_id=["a", "a"], gain=[1, 1], n_docs=[2, 2])


def test_grouprank_reward_exact():
    prompts.UNPARSABLE.clear()
    gains = [[0, 3, 1]] * 3
    out = grouprank.grouprank_reward(["[1] 0 [2] 10 [3] 5", "[1] 10 [2] 0 [3] 0", "[1] 10 [2] 0"], gains=gains)
    # perfect: nDCG 1, recall 1 (both relevant in top 2), align 1 - mean(|0-0|,|1-1|,|.5-1/3|) = 1 - 1/18, format
    assert out[0] == pytest.approx(1 + 0.5 + 0.5 * (1 - 1 / 18) + 0.1)
    # order 1, 2, 3 (ties keep prompt order): gains 0, 3, 1
    ndcg = (3 / math.log2(3) + 1 / 2) / (3 + 1 / math.log2(3))
    assert out[1] == pytest.approx(ndcg + 0.5 * 0.5 + 0.5 * (1 - (1 + 1 + 1 / 3) / 3) + 0.1)
    assert out[2] == 0.0 and prompts.UNPARSABLE["grouprank"] == 1


def test_chat_template_required():
    lm = load_model("tiny-qwen", task_kind="causal_lm")
    lm.tokenizer.chat_template = None
    with pytest.raises(ValueError, match="model tiny-qwen has no chat template; pass --chat_template"):
        prompts.require_chat_template(lm.tokenizer, "tiny-qwen")


def test_erank_prompt_shows_rank_only_when_asked():
    plain = erank.erank_messages("wing lift", "a wing")[0]["content"]
    # byte-identical to the prompt before the flag existed
    assert plain == ("Query: wing lift\nPassage: a wing\nHow relevant is the passage to the query? Answer with one "
                     "integer from 0 (irrelevant) to 9 (perfectly relevant).")  # fmt: skip
    ranked = erank.erank_messages("wing lift", "a wing", first_rank=3, n_candidates=20)[0]["content"]
    assert ranked == plain.replace("How relevant", "First-stage (BM25) rank: 3 of 20\nHow relevant")
    with pytest.raises(ValueError, match="needs both first_rank and n_candidates"):
        erank.erank_messages("q", "d", first_rank=1)
    with pytest.raises(ValueError, match="needs both first_rank and n_candidates"):
        erank.erank_messages("q", "d", n_candidates=4)
    for bad in (0, 5):
        with pytest.raises(ValueError, match=r"first_rank must be in 1\.\.n_candidates=4 \(1-based\)"):
            erank.erank_messages("q", "d", first_rank=bad, n_candidates=4)


def test_erank_sft_labels_are_single_token_scores_for_smollm2_style_tokenizers():
    """A "10" split into "1" "0" would make expected-score inference read the top label as 1."""
    from rankrl.models import tiny_tokenizer
    from rankrl.rerank.collections import Collection
    from rankrl.rerank.recipes.erank import ERANK_MAX_SCORE, erank_sft_dataset, score_tokens

    coll = Collection(docs={"d1": "a", "d2": "b"}, queries={"q": "x"}, qrels={"q": {"d1": 4, "d2": 1}})
    rows = {"prompt": [[{"role": "user", "content": "p"}]] * 3, "gain": [4, 1, 0]}
    labels = [int(c[0]["content"]) for c in erank_sft_dataset(coll, rows)["completion"]]
    assert labels == [ERANK_MAX_SCORE, 2, 0]
    _, values = score_tokens(tiny_tokenizer())
    assert set(labels) <= set(values)  # every trained label is readable at one position


def test_query_grouped_sampler_layout():
    qids = ["a"] * 3 + ["b"] * 3 + ["c"] * 3
    s = erank.QueryGroupedSampler(qids, num_generations=2, queries_per_round=1, repeat_count=2, seed=0)
    out = list(s)
    assert len(out) == len(s) == 3 * 3 * 2 * 2
    for r in range(3):  # each round: one query's 3 rows x 2 rollouts, the round repeated twice
        block = out[r * 12 : (r + 1) * 12]
        assert block[:6] == block[6:] and len({qids[i] for i in block}) == 1
        assert block[:6] == sorted(block[:6]) and all(block[2 * i] == block[2 * i + 1] for i in range(3))


def test_listwise_trainer_gets_whole_queries(tmp_path):
    coll = tiny_collection()
    ds = rr.build_dataset("erank", coll, list(coll.queries), group_size=2)
    calls = []

    def recorder(completions, **kw):
        calls.append(list(kw["query_id"]))
        return erank.erank_listwise_reward(completions, **kw)

    lm = load_model("tiny-qwen", task_kind="causal_lm")
    cfg = grpo_config(tmp_path, max_steps=2, per_device_train_batch_size=4, num_generations=2, steps_per_generation=2)
    trainer = erank.ListwiseGRPOTrainer(model=lm.model, processing_class=lm.tokenizer, reward_funcs=recorder,
                                     args=cfg, train_dataset=ds, peft_config=lora_config())  # fmt: skip
    trainer.train()
    assert calls, "reward never called"
    for call in calls:  # local round = 4 x 2 = 8 rows = 2 queries x M=2 x G=2
        assert len(call) == 8 and all(call.count(q) == 4 for q in set(call))
    bad = grpo_config(tmp_path, per_device_train_batch_size=3, num_generations=3, steps_per_generation=1)
    with pytest.raises(ValueError, match="multiple of M x G"):
        t = erank.ListwiseGRPOTrainer(model=load_model("tiny-qwen", task_kind="causal_lm").model,
                                   processing_class=lm.tokenizer, reward_funcs=recorder, args=bad,
                                   train_dataset=ds, peft_config=lora_config())  # fmt: skip
        t.get_train_dataloader()


def test_rank_r1_grpo_changes_lora(tmp_path):
    from trl import GRPOTrainer

    coll = tiny_collection()
    ds = rr.build_dataset("rank-r1", coll, list(coll.queries), window=3, max_chars=40)

    def shaped(completions, **kw):  # rank_r1_reward is 0 on an untrained model; add a length term for a gradient
        base = rank_r1.rank_r1_reward(completions, **kw)
        return [b + len(c[-1]["content"]) / 100 for b, c in zip(base, completions, strict=True)]

    lm = load_model("tiny-qwen", task_kind="causal_lm")
    trainer = GRPOTrainer(model=lm.model, processing_class=lm.tokenizer, reward_funcs=shaped,
                          args=grpo_config(tmp_path), train_dataset=ds, peft_config=lora_config())  # fmt: skip
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
    assert before
    trainer.train()
    after = dict(trainer.model.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before)


def test_expected_scores_in_range():
    lm = load_model("tiny-qwen", task_kind="causal_lm")
    ids, values = erank.score_tokens(lm.tokenizer)
    assert values[:10] == list(range(10)) and len(ids) == len(values)
    out = erank.expected_scores(lm.model, lm.tokenizer, "wing lift", ["a wing", "a fish", "lift of a wing in a slip"])
    assert len(out) == 3 and all(isinstance(v, float) and 0.0 <= v <= 10.0 for v in out)


def test_expected_scores_first_stage_rank_changes_scores():
    lm = load_model("tiny-qwen", task_kind="causal_lm")
    docs = ["a wing", "a fish", "lift of a wing in a slip"]
    plain = erank.expected_scores(lm.model, lm.tokenizer, "wing lift", docs)
    ranked = erank.expected_scores(lm.model, lm.tokenizer, "wing lift", docs, first_stage_rank=True)
    assert len(ranked) == 3 and all(0.0 <= v <= 10.0 for v in ranked)
    assert plain != pytest.approx(ranked, abs=1e-6)  # different prompts -> different scores
    assert erank.expected_scores(lm.model, lm.tokenizer, "wing lift", docs) == pytest.approx(plain)
    scorer = rr.make_scorer("erank", lm.model, lm.tokenizer, first_stage_rank=True)
    assert scorer("wing lift", docs) == pytest.approx(ranked)
    with pytest.raises(ValueError, match="first_stage_rank only applies to the erank recipe"):
        rr.make_scorer("rank-r1", lm.model, lm.tokenizer, first_stage_rank=True)


def test_setwise_rank_is_a_memoised_tournament_tree():
    rng = torch.Generator().manual_seed(3)
    values = torch.randperm(20, generator=rng).tolist()
    asked: list[tuple[str, ...]] = []

    def oracle(windows):  # the largest value wins its window
        asked.extend(tuple(w) for w in windows)
        return [max(range(len(w)), key=lambda i: int(w[i])) for w in windows]

    scores = rank_r1.setwise_rank(oracle, [str(v) for v in values], window=4, top=10)
    order = sorted(range(20), key=lambda i: -scores[i])
    assert [values[i] for i in order[:10]] == list(range(19, 9, -1))  # the exact top-10, best first
    assert [values[i] for i in order[10:]] == [v for v in values if v < 10]  # the rest keep first-stage order
    assert len(asked) == len(set(asked)) <= 5 + 9 * 3  # no window asked twice; ~3 prompts per later pick
    # a picker that always answers [1] (or nonsense: fallback [1]) keeps the first-stage order
    for answer in (0, 7):
        s = rank_r1.setwise_rank(lambda ws, a=answer: [a] * len(ws), list("abcdefghij"), window=3, top=5)
        assert s == sorted(s, reverse=True) and len(set(s)) == 10


class _PrefersLabels:
    """A stand-in causal LM whose next-token logits rank the label tokens 3 > 2 > others, and an unrelated token
    highest of all (only the window's labels may be picked). It follows the shared-prefix calls of
    :func:`rankrl.rerank.prompts.shared_prefix_logits` (a prefix pass, then each batch's left-padded rests) and
    records every whole prompt it was asked about."""

    device = torch.device("cpu")

    def __init__(self, tokenizer, config=None):
        self.tokenizer, self.vocab, self.config = tokenizer, len(tokenizer), config
        self.prompts: list[str] = []
        self.prefix: list[int] = []

    def eval(self):
        return self

    def __call__(self, input_ids, attention_mask=None, past_key_values=None, **_):
        from types import SimpleNamespace

        if attention_mask is None:  # the shared prefix's pass: remember it, hand back an empty cache
            self.prefix = input_ids[0].tolist()
            return SimpleNamespace(logits=torch.zeros(1, 1, self.vocab), past_key_values=[])
        prefix = self.prefix if past_key_values is not None else []
        mask = attention_mask[:, -input_ids.shape[1] :].bool()
        rests = [row[m].tolist() for row, m in zip(input_ids, mask, strict=True)]
        self.prompts += self.tokenizer.batch_decode([prefix + r for r in rests], skip_special_tokens=True)
        logits = torch.zeros(input_ids.shape[0], 1, self.vocab)
        for label, value in (("3", 2.0), ("2", 1.0), ("x", 9.0)):
            logits[:, -1, self.tokenizer.encode(label, add_special_tokens=False)[0]] = value
        return SimpleNamespace(logits=logits)


def test_setwise_label_picks_take_the_most_probable_label_of_each_window():
    lm = load_model("tiny-qwen", task_kind="causal_lm")
    model = _PrefersLabels(lm.tokenizer, lm.model.config)
    windows = [["a", "b", "c", "d"], ["e", "f"], ["g"]]
    for prefix_cache in (True, False):
        model.prompts.clear()
        picks = rank_r1.setwise_label_picks(model, lm.tokenizer, "wing lift", windows, prefix_cache=prefix_cache)
        assert picks == [2, 1, 0]  # label [3]; [3] is not in a window of 2 -> [2]; a window of one -> [1]
        assert len(model.prompts) == 3 and all(p.endswith(rank_r1.SETWISE_PREFILL) for p in model.prompts)
        by_window = {p.split("[1] ")[1][0]: p for p in model.prompts}  # whole prompts (the cache runs them by length)
        assert "[4] d" in by_window["a"] and "[2] f" in by_window["e"] and "[3]" not in by_window["e"]
    # through the scorer: every tournament's winner is the 3rd of its window, so the scores are a full ranking
    scores = rr.make_scorer("rank-r1", model, lm.tokenizer, setwise_pick="likelihood")("q", list("abcdefgh"))
    assert sorted(scores) == sorted(set(scores)) and len(scores) == 8
    with pytest.raises(ValueError, match="setwise_pick must be one of"):
        rr.make_scorer("rank-r1", model, lm.tokenizer, setwise_pick="vote")
    with pytest.raises(ValueError, match="only applies to the rank-r1 recipe, not 'erank'"):
        rr.make_scorer("erank", model, lm.tokenizer, setwise_pick="likelihood")
    with pytest.raises(ValueError, match="--setwise_pick must be one of"):
        rr.EvalArgs(setwise_pick="vote")


def test_setwise_label_picks_refuse_multi_token_labels():
    lm = load_model("tiny-qwen", task_kind="causal_lm")
    long_label = next(i for i in range(2, 400) if len(lm.tokenizer.encode(str(i), add_special_tokens=False)) > 1)
    with pytest.raises(ValueError, match="single-token labels.*smaller --window"):
        rank_r1.setwise_label_picks(lm.model, lm.tokenizer, "q", [["d"] * long_label])


def test_recipes_registry_and_unknown_recipe_messages():
    """One dict entry per recipe module; an unknown name is refused with the choices listed, wherever it enters."""
    from rankrl.rerank.recipes import RECIPES, Recipe

    assert list(RECIPES) == ["rank-r1", "erank", "grouprank", "prorank"]
    assert all(isinstance(r, Recipe) and r.name == name for name, r in RECIPES.items())
    choices = r"\('rank-r1', 'erank', 'grouprank', 'prorank'\), got 'listwise'"
    with pytest.raises(ValueError, match=r"--recipe must be one of " + choices):
        rr.RerankArgs(recipe="listwise")
    with pytest.raises(ValueError, match=r"^recipe must be one of " + choices):
        rr.build_dataset("listwise", tiny_collection(), ["0"])
    with pytest.raises(ValueError, match=r"^recipe must be one of " + choices):
        rr.make_scorer("listwise", None, None)
    with pytest.raises(ValueError, match="unknown features"):
        Recipe(name="x", candidates=len, rows=len, reward=len, scorer=len, features=frozenset({"depht"}))
