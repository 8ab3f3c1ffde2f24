"""GRPO reranker recipes: exact rewards, listwise batching, a live Rank-R1 step, inference and the CLI."""

from __future__ import annotations

import doctest
import json
import math

import pytest

from rankrl.tracking import read_metrics

pytest.importorskip("trl")

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from trl import GRPOConfig  # noqa: E402

import rankrl.rerank.job as rr  # noqa: E402
import rankrl.rerank.rewards as rw  # noqa: E402
from rankrl.cli import main  # noqa: E402
from rankrl.models import load_model  # noqa: E402
from rankrl.rerank.collections import Collection, load_collection  # noqa: E402

TOPICS = ["wing lift", "engine noise", "heat transfer", "shock wave", "boundary layer", "flutter model"]


def _collection() -> Collection:
    docs, qrels = {}, {}
    for qi, topic in enumerate(TOPICS):
        for j in range(5):
            d = f"d{qi}{j}"
            docs[d] = f"{topic} study {j}" if j < 2 else f"{topic.split()[0]} other paper {j}"
            qrels.setdefault(str(qi), {})[d] = 2 - j if j < 2 else 0
    return Collection(docs=docs, queries={str(i): t for i, t in enumerate(TOPICS)}, qrels=qrels, name="tiny")


def _write_trec(coll: Collection, root):
    root.mkdir(parents=True, exist_ok=True)
    (root / "docs.tsv").write_text("".join(f"{d}\t{t}\n" for d, t in coll.docs.items()))
    (root / "topics.tsv").write_text("".join(f"{q}\t{t}\n" for q, t in coll.queries.items()))
    (root / "qrels.txt").write_text("".join(f"{q} 0 {d} {g}\n" for q, j in coll.qrels.items() for d, g in j.items()))
    return root


def _config(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, num_generations=2,
                max_completion_length=8, temperature=1.0, seed=0, use_cpu=True, bf16=False, report_to="none",
                logging_steps=1, gradient_checkpointing=False, save_strategy="no", learning_rate=1e-2)  # fmt: skip
    base.update(kw)
    return GRPOConfig(**base)


def _lora():
    from peft import LoraConfig

    return LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")


# ---------------------------------------------------------------------------------------------- rewards
def test_doctests():
    for mod in (rw, rr):
        result = doctest.testmod(mod)
        assert result.failed == 0 and result.attempted > 0, mod.__name__


def test_rank_r1_reward_exact_and_counts_malformed():
    rw.UNPARSABLE.clear()
    logged = []
    good = "<think>wings</think>\n<answer> [2] </answer>"
    out = rw.rank_r1_reward(
        [good, good, "<answer>[2]</answer>", "<think>x</think><answer>2</answer>"],
        relevant=[[2], [1, 3], [2], [2]],
        log_metric=lambda k, v: logged.append((k, v)),
    )
    assert out == [1.0, 0.0, 0.0, 0.0]
    assert rw.UNPARSABLE["rank-r1"] == 2 and logged == [("rerank/unparsable_rank_r1", 0.5)]


def test_erank_listwise_reward_exact():
    rw.UNPARSABLE.clear()
    # one query, M=2 docs x G=2: "a" (gain 1) scored 8 and 8 (tied at positions 1-2), "b" (gain 0) 3 and junk
    out = rw.erank_listwise_reward(
        ["8", "8", "3", "ten"], query_id=["q"] * 4, doc_id=["a", "a", "b", "b"], gain=[1, 1, 0, 0], n_docs=[2] * 4
    )
    tied = (1 + 1 / math.log2(3)) / 2
    assert out == pytest.approx([tied, tied, -0.5 / math.log2(4), -0.5])  # junk gets the floor -neg_weight
    assert rw.UNPARSABLE["erank"] == 1


def test_erank_listwise_reward_refusing_to_answer_never_pays():
    """The reward hack seen on SmolLM2: with unparsable = 0, answering junk beat the (negative) mean reward."""
    kw = dict(query_id=["q"] * 6, doc_id=list("aabbcc"), gain=[0, 0, 0, 0, 2, 2], n_docs=[3] * 6, neg_weight=0.5)
    answered = rw.erank_listwise_reward(["1", "2", "3", "4", "9", "8"], **kw)
    junk_for_a = rw.erank_listwise_reward(["?", "?", "3", "4", "9", "8"], **kw)
    assert min(junk_for_a[:2]) <= min(answered)  # no parsable answer earns less than refusing to answer
    assert junk_for_a[:2] == [-0.5, -0.5]


def test_erank_listwise_reward_bad_layout_raises():
    with pytest.raises(ValueError, match="layout"):  # doc b has one rollout, doc a two
        rw.erank_listwise_reward(["1", "2", "3"], query_id=["q"] * 3, doc_id=["a", "a", "b"], gain=[1, 1, 0])
    with pytest.raises(ValueError, match="layout"):  # only 1 of the query's 2 docs in this call
        rw.erank_listwise_reward(["1", "2"], query_id=["q"] * 2, doc_id=["a", "a"], gain=[1, 1], n_docs=[2, 2])


def test_grouprank_reward_exact():
    rw.UNPARSABLE.clear()
    gains = [[0, 3, 1]] * 3
    out = rw.grouprank_reward(["[1] 0 [2] 10 [3] 5", "[1] 10 [2] 0 [3] 0", "[1] 10 [2] 0"], gains=gains)
    # perfect: nDCG 1, recall 1 (both relevant in top 2), align 1 - mean(|0-0|,|1-1|,|.5-1/3|) = 1 - 1/18, format
    assert out[0] == pytest.approx(1 + 0.5 + 0.5 * (1 - 1 / 18) + 0.1)
    # order 1, 2, 3 (ties keep prompt order): gains 0, 3, 1
    ndcg = (3 / math.log2(3) + 1 / 2) / (3 + 1 / math.log2(3))
    assert out[1] == pytest.approx(ndcg + 0.5 * 0.5 + 0.5 * (1 - (1 + 1 + 1 / 3) / 3) + 0.1)
    assert out[2] == 0.0 and rw.UNPARSABLE["grouprank"] == 1


def test_chat_template_required():
    lm = load_model("tiny-qwen", task_kind="causal_lm")
    lm.tokenizer.chat_template = None
    with pytest.raises(ValueError, match="model tiny-qwen has no chat template; pass --chat_template"):
        rw.require_chat_template(lm.tokenizer, "tiny-qwen")


# ---------------------------------------------------------------------------------------------- datasets, batching
def test_build_dataset_columns_and_skips():
    coll = _collection()
    ds = rr.build_dataset("erank", coll, list(coll.queries), group_size=3)
    assert set(ds.column_names) >= {"prompt", "query_id", "doc_id", "gain", "n_docs"}
    assert len(ds) == 3 * len(TOPICS) and sum(ds["gain"]) == 3 * len(TOPICS)  # BM25 top-3 holds both relevant
    r1 = rr.build_dataset("rank-r1", coll, list(coll.queries), window=4)
    assert all(len(rel) >= 1 for rel in r1["relevant"])
    big = Collection(docs={**coll.docs, "x": "zzz"}, queries={**coll.queries, "9": "qqq"}, qrels=coll.qrels)
    with pytest.warns(UserWarning, match="skipped 1 queries with no BM25 candidates"):
        assert rr.build_dataset("grouprank", big, ["0", "9"], group_size=3)["query_id"] == ["0"]


def test_query_grouped_sampler_layout():
    qids = ["a"] * 3 + ["b"] * 3 + ["c"] * 3
    s = rr.QueryGroupedSampler(qids, num_generations=2, queries_per_round=1, repeat_count=2, seed=0)
    out = list(s)
    assert len(out) == len(s) == 3 * 3 * 2 * 2
    for r in range(3):  # each round: one query's 3 rows x 2 rollouts, the round repeated twice
        block = out[r * 12 : (r + 1) * 12]
        assert block[:6] == block[6:] and len({qids[i] for i in block}) == 1
        assert block[:6] == sorted(block[:6]) and all(block[2 * i] == block[2 * i + 1] for i in range(3))


def test_listwise_trainer_gets_whole_queries(tmp_path):
    coll = _collection()
    ds = rr.build_dataset("erank", coll, list(coll.queries), group_size=2)
    calls = []

    def recorder(completions, **kw):
        calls.append(list(kw["query_id"]))
        return rw.erank_listwise_reward(completions, **kw)

    lm = load_model("tiny-qwen", task_kind="causal_lm")
    cfg = _config(tmp_path, max_steps=2, per_device_train_batch_size=4, num_generations=2, steps_per_generation=2)
    trainer = rr.ListwiseGRPOTrainer(model=lm.model, processing_class=lm.tokenizer, reward_funcs=recorder,
                                     args=cfg, train_dataset=ds, peft_config=_lora())  # fmt: skip
    trainer.train()
    assert calls, "reward never called"
    for call in calls:  # local round = 4 x 2 = 8 rows = 2 queries x M=2 x G=2
        assert len(call) == 8 and all(call.count(q) == 4 for q in set(call))
    bad = _config(tmp_path, per_device_train_batch_size=3, num_generations=3, steps_per_generation=1)
    with pytest.raises(ValueError, match="multiple of M x G"):
        t = rr.ListwiseGRPOTrainer(model=load_model("tiny-qwen", task_kind="causal_lm").model,
                                   processing_class=lm.tokenizer, reward_funcs=recorder, args=bad,
                                   train_dataset=ds, peft_config=_lora())  # fmt: skip
        t.get_train_dataloader()


def test_rank_r1_grpo_changes_lora(tmp_path):
    from trl import GRPOTrainer

    coll = _collection()
    ds = rr.build_dataset("rank-r1", coll, list(coll.queries), window=3, max_chars=40)

    def shaped(completions, **kw):  # rank_r1_reward is 0 on an untrained model; add a length term for a gradient
        base = rw.rank_r1_reward(completions, **kw)
        return [b + len(c[-1]["content"]) / 100 for b, c in zip(base, completions, strict=True)]

    lm = load_model("tiny-qwen", task_kind="causal_lm")
    trainer = GRPOTrainer(model=lm.model, processing_class=lm.tokenizer, reward_funcs=shaped,
                          args=_config(tmp_path), train_dataset=ds, peft_config=_lora())  # fmt: skip
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
    assert before
    trainer.train()
    after = dict(trainer.model.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before)


# ---------------------------------------------------------------------------------------------- inference, CLI
def test_expected_scores_in_range():
    lm = load_model("tiny-qwen", task_kind="causal_lm")
    ids, values = rr.score_tokens(lm.tokenizer)
    assert values[:10] == list(range(10)) and len(ids) == len(values)
    out = rr.expected_scores(lm.model, lm.tokenizer, "wing lift", ["a wing", "a fish", "lift of a wing in a slip"])
    assert len(out) == 3 and all(isinstance(v, float) and 0.0 <= v <= 10.0 for v in out)


def test_cli_eval_writes_run(tmp_path, capsys):
    data = _write_trec(_collection(), tmp_path / "coll")
    run = tmp_path / "run.trec"
    assert main(["rerank", "eval", "--model", "tiny-qwen", "--data", str(data), "--split", "test", "--k", "4",
                 "--run", str(run)]) == 0  # fmt: skip
    assert "nDCG@10" in capsys.readouterr().out
    lines = run.read_text().splitlines()
    assert lines and len(lines[0].split()) == 6


def test_cli_eval_rank_r1_likelihood_picks(tmp_path, capsys, monkeypatch):
    data = _write_trec(_collection(), tmp_path / "coll")
    picked = []
    real = rr.setwise_label_picks
    monkeypatch.setattr(rr, "setwise_label_picks", lambda *a, **kw: picked.append(len(a[3])) or real(*a, **kw))
    assert main(["rerank", "eval", "--model", "tiny-qwen", "--recipe", "rank-r1", "--setwise_pick", "likelihood",
                 "--data", str(data), "--k", "5", "--run", str(tmp_path / "r1.trec")]) == 0  # fmt: skip
    assert "nDCG@10" in capsys.readouterr().out and picked  # the tournaments went through the likelihood picks
    ranks = [line.split() for line in (tmp_path / "r1.trec").read_text().splitlines()]
    assert {len(r) for r in ranks} == {6} and len({(r[0], r[2]) for r in ranks}) == len(ranks)


def test_cranfield_dataset_has_hard_negatives():
    from tests.conftest import shared_data

    coll = load_collection(shared_data("cranfield"))
    ds = rr.build_dataset("erank", coll, coll.judged_qids[:5], group_size=4)
    assert len(ds) == 20 and 0 in ds["gain"]  # BM25 non-relevant docs are in the training rows


@pytest.mark.parametrize("argv", [["rerank", "--help"], ["rerank", "train", "--help"], ["rerank", "eval", "--help"]])
def test_help(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    assert code == 0 and "usage" in capsys.readouterr().out.lower()


def test_erank_sft_labels_are_single_token_scores_for_smollm2_style_tokenizers():
    """A "10" split into "1" "0" would make expected-score inference read the top label as 1."""
    from rankrl.models import tiny_tokenizer
    from rankrl.rerank.collections import Collection
    from rankrl.rerank.job import ERANK_MAX_SCORE, erank_sft_dataset, score_tokens

    coll = Collection(docs={"d1": "a", "d2": "b"}, queries={"q": "x"}, qrels={"q": {"d1": 4, "d2": 1}})
    rows = {"prompt": [[{"role": "user", "content": "p"}]] * 3, "gain": [4, 1, 0]}
    labels = [int(c[0]["content"]) for c in erank_sft_dataset(coll, rows)["completion"]]
    assert labels == [ERANK_MAX_SCORE, 2, 0]
    _, values = score_tokens(tiny_tokenizer())
    assert set(labels) <= set(values)  # every trained label is readable at one position


# ---------------------------------------------------------------------------------------------- first-stage rank
RANK_LINE = "First-stage (BM25) rank: "


def _shuffled_collection() -> Collection:
    """Corpus order != BM25 order for query "q" (wing lift): d3 > d2 > d1, d4 not retrieved."""
    docs = {"d1": "wing note", "d2": "wing lift data", "d3": "lift of a wing lift wing", "d4": "engine noise"}
    return Collection(docs=docs, queries={"q": "wing lift"}, qrels={"q": {"d3": 2, "d2": 1}}, name="shuffled")


def _bm25_order(retriever, query: str, doc_ids) -> list[str]:
    """``doc_ids`` by descending BM25 score computed independently of ``search`` (bm25s ``get_scores``); ties
    by corpus order."""
    from rankrl.rerank.collections import tokenize

    scores = dict(zip(retriever.doc_ids, retriever.model.get_scores(tokenize(query)).tolist(), strict=True))
    return sorted(doc_ids, key=lambda d: (-scores[d], retriever.doc_ids.index(d)))


def test_erank_prompt_shows_rank_only_when_asked():
    plain = rw.erank_messages("wing lift", "a wing")[0]["content"]
    # byte-identical to the prompt before the flag existed
    assert plain == ("Query: wing lift\nPassage: a wing\nHow relevant is the passage to the query? Answer with one "
                     "integer from 0 (irrelevant) to 9 (perfectly relevant).")  # fmt: skip
    ranked = rw.erank_messages("wing lift", "a wing", first_rank=3, n_candidates=20)[0]["content"]
    assert ranked == plain.replace("How relevant", "First-stage (BM25) rank: 3 of 20\nHow relevant")
    with pytest.raises(ValueError, match="needs both first_rank and n_candidates"):
        rw.erank_messages("q", "d", first_rank=1)
    with pytest.raises(ValueError, match="needs both first_rank and n_candidates"):
        rw.erank_messages("q", "d", n_candidates=4)
    for bad in (0, 5):
        with pytest.raises(ValueError, match=r"first_rank must be in 1\.\.n_candidates=4 \(1-based\)"):
            rw.erank_messages("q", "d", first_rank=bad, n_candidates=4)


def test_build_dataset_erank_ranks_follow_bm25_order():
    from rankrl.rerank.collections import BM25Retriever

    coll = _collection()
    retriever = BM25Retriever(coll)
    ds = rr.build_dataset("erank", coll, list(coll.queries), retriever, group_size=3, first_stage_rank=True)
    plain = rr.build_dataset("erank", coll, list(coll.queries), retriever, group_size=3)
    assert all(RANK_LINE not in p[0]["content"] for p in plain["prompt"])
    for q in coll.queries:
        idx = [i for i, qq in enumerate(ds["query_id"]) if qq == q]
        docs = [ds["doc_id"][i] for i in idx]
        lines = [next(ln for ln in ds["prompt"][i][0]["content"].splitlines() if ln.startswith(RANK_LINE))
                 for i in idx]  # fmt: skip
        assert lines == [f"{RANK_LINE}{r} of 3" for r in (1, 2, 3)]
        assert docs == list(retriever.search([q], k=3)[q]) == _bm25_order(retriever, coll.queries[q], docs)
        # the plain rows are the same docs in the same order, only the rank line differs
        assert [plain["doc_id"][i] for i in idx] == docs
        assert [plain["prompt"][i] for i in idx] != [ds["prompt"][i] for i in idx]
    # corpus order != BM25 order: the rank follows the score, not the doc id
    sc = _shuffled_collection()
    sr = BM25Retriever(sc)
    ds = rr.build_dataset("erank", sc, ["q"], sr, group_size=3, first_stage_rank=True)
    assert ds["doc_id"] == ["d3", "d2", "d1"] == _bm25_order(sr, "wing lift", ["d1", "d2", "d3"])
    assert all(f"{RANK_LINE}{r} of 3\n" in p[0]["content"] for r, p in zip((1, 2, 3), ds["prompt"], strict=True))
    with pytest.raises(ValueError, match="first_stage_rank only applies to the erank recipe"):
        rr.build_dataset("grouprank", coll, list(coll.queries), retriever, first_stage_rank=True)
    with pytest.raises(ValueError, match="first_stage_rank only applies to the erank recipe"):
        rr.RerankArgs(recipe="rank-r1", first_stage_rank=True)


def test_rerank_run_gives_scorer_candidates_in_bm25_order():
    """expected_scores(first_stage_rank=True) relies on rerank_run passing docs best-first by BM25 score."""
    from rankrl.rerank.collections import BM25Retriever
    from rankrl.rerank.env import rerank_run

    seen: dict[str, list[str]] = {}
    for coll in (_shuffled_collection(), _collection()):
        retriever = BM25Retriever(coll)
        text_id = {t: d for d, t in coll.docs.items()}

        def scorer(query, docs, text_id=text_id):
            seen[query] = [text_id[t] for t in docs]
            return [0.0] * len(docs)

        rerank_run(scorer, coll, list(coll.queries), k=4, retriever=retriever)
        for q, text in coll.queries.items():
            assert seen[text] == _bm25_order(retriever, text, seen[text]) == list(retriever.search([q], k=4)[q])
    assert seen["wing lift"][:3] == ["d00", "d01", "d02"]  # _collection: full-topic docs first
    # _shuffled_collection (checked first, then overwritten): best-first d3, d2, d1, not corpus order d1, d2, d3
    sc = _shuffled_collection()
    got: list[str] = []
    rerank_run(lambda q, docs: got.extend(docs) or [0.0] * len(docs), sc, ["q"], k=4)
    assert got == [sc.docs[d] for d in ("d3", "d2", "d1")]


def test_expected_scores_first_stage_rank_changes_scores():
    lm = load_model("tiny-qwen", task_kind="causal_lm")
    docs = ["a wing", "a fish", "lift of a wing in a slip"]
    plain = rr.expected_scores(lm.model, lm.tokenizer, "wing lift", docs)
    ranked = rr.expected_scores(lm.model, lm.tokenizer, "wing lift", docs, first_stage_rank=True)
    assert len(ranked) == 3 and all(0.0 <= v <= 10.0 for v in ranked)
    assert plain != pytest.approx(ranked, abs=1e-6)  # different prompts -> different scores
    assert rr.expected_scores(lm.model, lm.tokenizer, "wing lift", docs) == pytest.approx(plain)
    scorer = rr.make_scorer("erank", lm.model, lm.tokenizer, first_stage_rank=True)
    assert scorer("wing lift", docs) == pytest.approx(ranked)
    with pytest.raises(ValueError, match="first_stage_rank only applies to the erank recipe"):
        rr.make_scorer("rank-r1", lm.model, lm.tokenizer, first_stage_rank=True)


def test_eval_first_stage_rank_defaults_to_recorded_and_warns(tmp_path, monkeypatch):
    import json
    import warnings
    from dataclasses import asdict

    data = _write_trec(_collection(), tmp_path / "coll")
    merged = tmp_path / "out" / "merged"
    merged.mkdir(parents=True)
    (merged / "rerank.json").write_text(json.dumps(asdict(rr.RerankArgs(first_stage_rank=True))))
    lm = load_model("tiny-qwen", task_kind="causal_lm")
    monkeypatch.setattr(rr, "_load", lambda args, seed: lm)  # merged/ holds no weights here
    used = []
    real = rr.make_scorer

    def spy(*a, **kw):
        used.append(kw["first_stage_rank"])
        return real(*a, **kw)

    monkeypatch.setattr(rr, "make_scorer", spy)
    common = dict(model=str(tmp_path / "out"), data=str(data), split="test", k=4, run=str(tmp_path / "r.trec"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the recorded value: no warning
        rr.run_rerank_eval(rr.EvalArgs(**common))
        rr.run_rerank_eval(rr.EvalArgs(**common, first_stage_rank=True))
    with pytest.warns(UserWarning, match="trained with first_stage_rank=True .* evaluated with first_stage_rank=False"):
        rr.run_rerank_eval(rr.EvalArgs(**common, first_stage_rank=False))
    assert used == [True, True, False]
    # a rerank.json from before the flag means "trained without it"; no rerank.json: nothing to check against
    assert rr._eval_first_stage_rank(None, {"recipe": "erank"}, merged, "erank") is False
    with pytest.warns(UserWarning, match="trained with first_stage_rank=False"):
        assert rr._eval_first_stage_rank(True, {"recipe": "erank"}, merged, "erank") is True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert rr._eval_first_stage_rank(True, {}, merged, "erank") is True
        assert rr._eval_first_stage_rank(None, {}, merged, "erank") is False
        assert rr._eval_first_stage_rank(None, {"first_stage_rank": True}, merged, "rank-r1") is False


def test_train_records_first_stage_rank(tmp_path, monkeypatch):
    """The flag reaches the training rows (SFT and GRPO share them) and ``rerank.json`` next to the merged model
    records it (what ``rerank eval`` reads back)."""
    import json

    built = []
    real = rr.build_dataset

    def spy(*a, **kw):
        ds = real(*a, **kw)
        built.append((kw["first_stage_rank"], ds["prompt"]))
        return ds

    monkeypatch.setattr(rr, "build_dataset", spy)
    data = _write_trec(_collection(), tmp_path / "coll")
    args = rr.RerankArgs(recipe="erank", model="tiny-qwen", data=str(data), group_size=2, rollouts=2, sft_steps=1,
                         lora_r=2, max_doc_chars=40, first_stage_rank=True)  # fmt: skip
    cfg = _config(tmp_path / "run", max_steps=1, per_device_train_batch_size=4, num_generations=2,
                  steps_per_generation=1, max_completion_length=2)  # fmt: skip
    assert rr.run_rerank_train(args, cfg) == 0
    saved = json.loads((tmp_path / "run" / "merged" / "rerank.json").read_text())
    assert saved["first_stage_rank"] is True and saved["recipe"] == "erank"
    assert len(built) == 1 and built[0][0] is True and all(RANK_LINE in p[0]["content"] for p in built[0][1])
    rewards = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "reward" in r]
    assert len(rewards) == 1 and -0.5 <= rewards[0]["reward"] <= 1.0  # listwise reward per step, read back


def test_build_dataset_erank_draws_groups_from_the_top_depth_with_their_true_rank():
    from rankrl.rerank.collections import BM25Retriever

    coll = _collection()
    retriever = BM25Retriever(coll)
    ds = rr.build_dataset("erank", coll, list(coll.queries), retriever, group_size=2, depth=3, first_stage_rank=True,
                          seed=1)  # fmt: skip
    for q in coll.queries:
        top = list(retriever.search([q], k=3)[q])
        idx = [i for i, qq in enumerate(ds["query_id"]) if qq == q]
        docs = [ds["doc_id"][i] for i in idx]
        assert len(docs) == 2 and set(docs) <= set(top) and docs == sorted(docs, key=top.index)
        lines = [next(ln for ln in ds["prompt"][i][0]["content"].splitlines() if ln.startswith(RANK_LINE))
                 for i in idx]  # fmt: skip
        assert lines == [f"{RANK_LINE}{top.index(d) + 1} of 3" for d in docs]  # rank among the depth, as at eval
    with pytest.raises(ValueError, match="must be >= group_size"):
        rr.build_dataset("erank", coll, list(coll.queries), retriever, group_size=3, depth=2)
    with pytest.raises(ValueError, match="candidate_depth"):
        rr.RerankArgs(group_size=4, candidate_depth=3)


# ---------------------------------------------------------------------------------------------- encoder GRPO
def test_plackett_luce_logprob_is_a_distribution_and_top1_is_softmax():
    import itertools

    from rankrl.rerank.encoder import plackett_luce_logprob

    logits = torch.tensor([0.3, -1.2, 2.0, 0.5])
    perms = torch.tensor(list(itertools.permutations(range(4))))
    assert float(plackett_luce_logprob(logits, perms).exp().sum()) == pytest.approx(1.0, abs=1e-5)
    first = plackett_luce_logprob(logits, torch.tensor([[i, *[j for j in range(4) if j != i]] for i in range(4)]), 1)
    assert first.exp().tolist() == pytest.approx(torch.softmax(logits, 0).tolist(), abs=1e-6)


def test_plackett_luce_sample_matches_softmax_first_picks():
    from rankrl.rerank.encoder import plackett_luce_sample

    logits = torch.tensor([1.0, 0.0, -1.0])
    rankings = plackett_luce_sample(logits, 20_000, torch.Generator().manual_seed(0))
    assert sorted(rankings[0].tolist()) == [0, 1, 2]  # every row is a permutation
    freq = torch.bincount(rankings[:, 0], minlength=3).float() / 20_000
    assert freq.tolist() == pytest.approx(torch.softmax(logits, 0).tolist(), abs=0.015)


def test_ndcg_of_order_is_the_rerank_env_reward():
    from rankrl.rerank.collections import evaluate
    from rankrl.rerank.encoder import ndcg_of_order
    from rankrl.rerank.env import rerank

    coll = _collection()
    rng = torch.Generator().manual_seed(1)
    for q in coll.queries:
        docs = list(coll.docs)[:12]
        order = [docs[i] for i in torch.randperm(len(docs), generator=rng).tolist()]
        want = evaluate({q: rerank(order, [-i for i in range(len(order))])}, coll.qrels, ("nDCG@10",), qids=[q])
        assert ndcg_of_order(order, coll.qrels[q]) == pytest.approx(want["nDCG@10"], abs=1e-9)


def test_encoder_grpo_trains_saves_and_evaluates(tmp_path, monkeypatch, capsys):
    from rankrl.rerank.encoder import ENCODER_POLICY_FILE, EncoderGRPOArgs, run_encoder_grpo

    monkeypatch.setenv("RANKRL_CACHE", str(tmp_path / "cache"))
    _write_trec(_collection(), tmp_path / "data")
    args = EncoderGRPOArgs(data=str(tmp_path / "data"), output_dir=str(tmp_path / "enc"), k=5, steps=4,
                           queries_per_step=2, rollouts=4, test_fraction=1 / 3, report_to="none", lr=1e-2)  # fmt: skip
    summary = run_encoder_grpo(args)
    rows = read_metrics(tmp_path / "enc" / "metrics.jsonl")
    assert [r["step"] for r in rows if "reward" in r] == [1, 2, 3, 4]
    assert all(0.0 <= r["reward"] <= 1.0 for r in rows if "reward" in r)
    assert summary["w_bm25"] != 0.0  # the BM25 weight starts at 0 and was trained
    saved = json.loads((tmp_path / "enc" / ENCODER_POLICY_FILE).read_text())
    assert saved["heads"]["w_bm25"] == pytest.approx(summary["w_bm25"])
    adapter = load_file(str(tmp_path / "enc" / "adapter" / "adapter_model.safetensors"))
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items())  # B starts at 0: it moved
    assert (tmp_path / "enc" / "reward.png").stat().st_size > 0
    # `rankrl rerank eval` recognises the encoder policy and reproduces its held-out nDCG@10
    assert main(["rerank", "eval", "--model", str(tmp_path / "enc"), "--data", str(tmp_path / "data"),
                 "--split", "test"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    got = float(next(line for line in out.splitlines() if line.startswith("nDCG@10")).split()[-1])
    assert got == pytest.approx(summary["heldout_nDCG@10_end"], abs=1e-4)
    assert (tmp_path / "enc" / "run.test.trec").is_file()


def test_encoder_grpo_train_docs_adapts_documents_and_reloads(tmp_path, monkeypatch, capsys):
    from rankrl.rerank.collections import BM25Retriever
    from rankrl.rerank.encoder import EncoderGRPOArgs, load_encoder_scorer, run_encoder_grpo

    monkeypatch.setenv("RANKRL_CACHE", str(tmp_path / "cache"))
    coll = _collection()
    _write_trec(coll, tmp_path / "data")
    args = EncoderGRPOArgs(data=str(tmp_path / "data"), output_dir=str(tmp_path / "enc"), k=5, steps=3,
                           queries_per_step=2, rollouts=4, report_to="none", lr=1e-2, train_docs=True)  # fmt: skip
    summary = run_encoder_grpo(args)
    retriever = BM25Retriever(coll)
    scorer, _ = load_encoder_scorer(tmp_path / "enc", coll, retriever, 5)  # re-embeds documents with the adapter
    fresh, _ = load_encoder_scorer(tmp_path / "enc", coll, retriever, 5)
    q, docs = coll.queries["0"], [coll.docs[d] for d in retriever.search_text(coll.queries["0"], k=5)]
    assert scorer(q, docs) == pytest.approx(fresh(q, docs))
    assert main(["rerank", "eval", "--model", str(tmp_path / "enc"), "--data", str(tmp_path / "data")]) == 0
    got = float(next(line for line in capsys.readouterr().out.splitlines() if line.startswith("nDCG@10")).split()[-1])
    assert got == pytest.approx(summary["heldout_nDCG@10_end"], abs=1e-4)


def test_rerank_eval_of_an_encoder_uses_its_training_fold(tmp_path, monkeypatch, capsys):
    """A model trained with --fold 1 is evaluated on fold 1's held-out queries, never on its own train queries."""
    from rankrl.rerank.collections import read_run, split_queries
    from rankrl.rerank.encoder import EncoderGRPOArgs, run_encoder_grpo

    monkeypatch.setenv("RANKRL_CACHE", str(tmp_path / "cache"))
    coll = _collection()
    _write_trec(coll, tmp_path / "data")
    summary = run_encoder_grpo(EncoderGRPOArgs(data=str(tmp_path / "data"), output_dir=str(tmp_path / "enc"), k=5,
                                               steps=1, queries_per_step=2, rollouts=2, fold=1, report_to="none"))
    assert main(["rerank", "eval", "--model", str(tmp_path / "enc"), "--data", str(tmp_path / "data"),
                 "--split", "test", "--run", str(tmp_path / "r.trec")]) == 0  # fmt: skip
    want = split_queries(load_collection(tmp_path / "data"), 1 / 3, 0, fold=1)[1]
    assert sorted(read_run(tmp_path / "r.trec")) == sorted(want) != sorted(split_queries(coll, 1 / 3, 0)[1])
    got = float(next(line for line in capsys.readouterr().out.splitlines() if line.startswith("nDCG@10")).split()[-1])
    assert got == pytest.approx(summary["heldout_nDCG@10_end"], abs=1e-4)


def test_encoder_grpo_start_is_the_zero_shot_bi_encoder(tmp_path, monkeypatch):
    """Adapter B = 0 and w_bm25 = 0: the untrained policy ranks exactly like mean-pooled cosine MiniLM."""
    from rankrl.rerank.encoder import EncoderGRPOArgs, EncoderPolicy, embed_texts

    monkeypatch.setenv("RANKRL_CACHE", str(tmp_path / "cache"))
    coll = _collection()
    policy = EncoderPolicy(EncoderGRPOArgs(report_to="none"), coll)
    base = load_model("minilm").model.base_model
    with torch.no_grad():
        q = policy.queries(["wing lift"])[0]
        docs = list(coll.docs)
        got = policy.logits(q, docs, [1.0] * len(docs))
        ref = embed_texts(base.eval(), policy.tokenizer, [coll.docs[d] for d in docs], 256) @ \
            embed_texts(base, policy.tokenizer, ["wing lift"], 256)[0]  # fmt: skip
    assert got.tolist() == pytest.approx((20.0 * ref).tolist(), abs=1e-4)


def test_encoder_listnet_is_the_supervised_reference_on_the_same_policy(tmp_path, monkeypatch):
    """--objective listnet: softmax cross-entropy against the gains; over the same queries every step it falls."""
    from rankrl.rerank.collections import split_queries
    from rankrl.rerank.encoder import EncoderGRPOArgs, run_encoder_grpo

    monkeypatch.setenv("RANKRL_CACHE", str(tmp_path / "cache"))
    coll = _collection()
    _write_trec(coll, tmp_path / "data")
    train_q = split_queries(coll, 1 / 3, 0)[0]
    summary = run_encoder_grpo(EncoderGRPOArgs(data=str(tmp_path / "data"), output_dir=str(tmp_path / "enc"), k=5,
                                               steps=6, queries_per_step=len(train_q), rollouts=2, lr=1e-3,
                                               objective="listnet", report_to="none"))  # fmt: skip
    rows = [r for r in read_metrics(tmp_path / "enc" / "metrics.jsonl") if "loss" in r]
    losses = [r["loss"] for r in rows]
    assert all(x > 0 for x in losses) and losses[-1] < losses[0]  # a cross-entropy, minimised
    assert rows[-1]["train/greedy_nDCG@10"] >= rows[0]["train/greedy_nDCG@10"]
    # the same training queries before and after: fitting them raises their expected reward
    assert 0.0 < summary["train_pool_reward_start"] < summary["train_pool_reward_end"] <= 1.0
    assert summary["w_bm25"] != 0.0
    with pytest.raises(ValueError, match="--objective must be grpo or listnet"):
        EncoderGRPOArgs(objective="ppo")


def test_encoder_grpo_bad_input(capsys):
    from rankrl.rerank.encoder import EncoderGRPOArgs

    with pytest.raises(ValueError, match="--rollouts"):
        EncoderGRPOArgs(rollouts=1)
    with pytest.raises(ValueError, match="--report_to"):
        EncoderGRPOArgs(report_to="tensorboard")
    with pytest.raises(SystemExit):  # the CLI reaches the same check (tyro prints it and exits)
        main(["rerank", "train-encoder", "--rollouts", "1"])
    assert "--rollouts must be >= 2" in capsys.readouterr().err


def test_encoder_grpo_refuses_a_collection_without_relevant_candidates(tmp_path, monkeypatch):
    from rankrl.rerank.encoder import EncoderGRPOArgs, run_encoder_grpo

    coll = _collection()
    # the only relevant document shares no term with any query: BM25 never retrieves it
    unreachable = Collection(docs={**coll.docs, "zz": "unrelated text"}, queries=coll.queries, name="unreachable",
                             qrels={q: {**{d: 0 for d in j}, "zz": 1} for q, j in coll.qrels.items()})  # fmt: skip
    _write_trec(unreachable, tmp_path / "data")
    with pytest.raises(ValueError, match="raise --train_k"):
        run_encoder_grpo(EncoderGRPOArgs(data=str(tmp_path / "data"), output_dir=str(tmp_path / "o"), k=3,
                                         report_to="none"))  # fmt: skip


def test_encoder_grpo_train_k_trains_on_a_deeper_pool_than_it_reranks(tmp_path, monkeypatch, capsys):
    """Relevant documents only at BM25 ranks 3-5: the top-2 pool has nothing to learn from, the top-5 pool has."""
    from rankrl.rerank.encoder import EncoderGRPOArgs, run_encoder_grpo

    monkeypatch.setenv("RANKRL_CACHE", str(tmp_path / "cache"))
    coll = _collection()  # per topic: "<topic> study 0/1" (BM25 ranks 1-2), "<word> other paper 2-4" (ranks 3-5)
    deep = Collection(docs=coll.docs, queries=coll.queries, name="deep",
                      qrels={q: {d: int(d[-1] >= "2") for d in j} for q, j in coll.qrels.items()})  # fmt: skip
    _write_trec(deep, tmp_path / "data")
    kw = dict(data=str(tmp_path / "data"), k=2, steps=2, queries_per_step=2, rollouts=4, report_to="none")
    with pytest.raises(ValueError, match="BM25 top-2; raise --train_k"):
        run_encoder_grpo(EncoderGRPOArgs(output_dir=str(tmp_path / "shallow"), train_k=0, **kw))  # 0: = --k
    summary = run_encoder_grpo(EncoderGRPOArgs(output_dir=str(tmp_path / "deep"), train_k=5, **kw))
    assert "relevant doc in the BM25 top-5" in capsys.readouterr().out
    assert summary["train_queries_used"] > 0 and max(summary["reward_per_step"]) > 0  # rankings of 5 candidates
    assert summary["heldout_nDCG@10_start"] == 0.0  # held-out reranks only the top --k 2: nothing relevant there
    with pytest.raises(ValueError, match="--train_k"):
        EncoderGRPOArgs(train_k=1)


def test_setwise_rank_is_a_memoised_tournament_tree():
    rng = torch.Generator().manual_seed(3)
    values = torch.randperm(20, generator=rng).tolist()
    asked: list[tuple[str, ...]] = []

    def oracle(windows):  # the largest value wins its window
        asked.extend(tuple(w) for w in windows)
        return [max(range(len(w)), key=lambda i: int(w[i])) for w in windows]

    scores = rr.setwise_rank(oracle, [str(v) for v in values], window=4, top=10)
    order = sorted(range(20), key=lambda i: -scores[i])
    assert [values[i] for i in order[:10]] == list(range(19, 9, -1))  # the exact top-10, best first
    assert [values[i] for i in order[10:]] == [v for v in values if v < 10]  # the rest keep first-stage order
    assert len(asked) == len(set(asked)) <= 5 + 9 * 3  # no window asked twice; ~3 prompts per later pick
    # a picker that always answers [1] (or nonsense: fallback [1]) keeps the first-stage order
    for answer in (0, 7):
        s = rr.setwise_rank(lambda ws, a=answer: [a] * len(ws), list("abcdefghij"), window=3, top=5)
        assert s == sorted(s, reverse=True) and len(set(s)) == 10


class _PrefersLabels:
    """A stand-in causal LM whose next-token logits rank the label tokens 3 > 2 > others, and an unrelated token
    highest of all (only the window's labels may be picked)."""

    device = torch.device("cpu")

    def __init__(self, tokenizer):
        self.tokenizer, self.vocab = tokenizer, len(tokenizer)
        self.prompts: list[str] = []

    def eval(self):
        return self

    def __call__(self, input_ids, attention_mask, **_):
        from types import SimpleNamespace

        self.prompts += self.tokenizer.batch_decode(input_ids, skip_special_tokens=True)
        logits = torch.zeros(*input_ids.shape, self.vocab)
        for label, value in (("3", 2.0), ("2", 1.0), ("x", 9.0)):
            logits[:, -1, self.tokenizer.encode(label, add_special_tokens=False)[0]] = value
        return SimpleNamespace(logits=logits)


def test_setwise_label_picks_take_the_most_probable_label_of_each_window():
    lm = load_model("tiny-qwen", task_kind="causal_lm")
    model = _PrefersLabels(lm.tokenizer)
    picks = rr.setwise_label_picks(model, lm.tokenizer, "wing lift", [["a", "b", "c", "d"], ["e", "f"], ["g"]])
    assert picks == [2, 1, 0]  # label [3]; [3] is not in a window of 2 -> [2]; a window of one -> [1]
    assert len(model.prompts) == 3 and all(p.endswith(rr.SETWISE_PREFILL) for p in model.prompts)
    assert "[4] d" in model.prompts[0] and "[3]" not in model.prompts[1]
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
        rr.setwise_label_picks(lm.model, lm.tokenizer, "q", [["d"] * long_label])
