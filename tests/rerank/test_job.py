"""``rankrl rerank train | eval`` wiring (rankrl.rerank.job): training rows per recipe, the first-stage rank flag
from training to evaluation, and the CLI."""

from __future__ import annotations

import pytest

pytest.importorskip("trl")

import rankrl.rerank.job as rr  # noqa: E402
from rankrl.cli import main  # noqa: E402
from rankrl.models import load_model  # noqa: E402
from rankrl.rerank.collections import Collection, CollectionFormatError, load_collection  # noqa: E402
from rankrl.rerank.recipes import rank_r1  # noqa: E402
from rankrl.tracking import read_metrics  # noqa: E402
from tests.rerank.tiny import (  # noqa: E402
    RANK_LINE,
    TOPICS,
    bm25_order,
    grpo_config,
    shuffled_collection,
    tiny_collection,
    write_trec,
)


def test_build_dataset_columns_and_skips():
    coll = tiny_collection()
    ds = rr.build_dataset("erank", coll, list(coll.queries), group_size=3)
    assert set(ds.column_names) >= {"prompt", "query_id", "doc_id", "gain", "n_docs"}
    assert len(ds) == 3 * len(TOPICS) and sum(ds["gain"]) == 3 * len(TOPICS)  # BM25 top-3 holds both relevant
    r1 = rr.build_dataset("rank-r1", coll, list(coll.queries), window=4)
    assert all(len(rel) >= 1 for rel in r1["relevant"])
    big = Collection(docs={**coll.docs, "x": "zzz"}, queries={**coll.queries, "9": "qqq"}, qrels=coll.qrels)
    with pytest.warns(UserWarning, match="skipped 1 queries with no first-stage candidates"):
        assert rr.build_dataset("grouprank", big, ["0", "9"], group_size=3)["query_id"] == ["0"]


def test_build_dataset_erank_ranks_follow_bm25_order():
    from rankrl.rerank.bm25 import BM25Retriever

    coll = tiny_collection()
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
        assert docs == list(retriever.search([q], k=3)[q]) == bm25_order(retriever, coll.queries[q], docs)
        # the plain rows are the same docs in the same order, only the rank line differs
        assert [plain["doc_id"][i] for i in idx] == docs
        assert [plain["prompt"][i] for i in idx] != [ds["prompt"][i] for i in idx]
    # corpus order != BM25 order: the rank follows the score, not the doc id
    sc = shuffled_collection()
    sr = BM25Retriever(sc)
    ds = rr.build_dataset("erank", sc, ["q"], sr, group_size=3, first_stage_rank=True)
    assert ds["doc_id"] == ["d3", "d2", "d1"] == bm25_order(sr, "wing lift", ["d1", "d2", "d3"])
    assert all(f"{RANK_LINE}{r} of 3\n" in p[0]["content"] for r, p in zip((1, 2, 3), ds["prompt"], strict=True))
    with pytest.raises(ValueError, match="first_stage_rank only applies to the erank recipe"):
        rr.build_dataset("grouprank", coll, list(coll.queries), retriever, first_stage_rank=True)
    with pytest.raises(ValueError, match="first_stage_rank only applies to the erank recipe"):
        rr.RerankArgs(recipe="rank-r1", first_stage_rank=True)


def test_build_dataset_erank_draws_groups_from_the_top_depth_with_their_true_rank():
    from rankrl.rerank.bm25 import BM25Retriever

    coll = tiny_collection()
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


def test_cranfield_dataset_has_hard_negatives():
    from tests.conftest import shared_data

    coll = load_collection(shared_data("cranfield"))
    ds = rr.build_dataset("erank", coll, coll.judged_qids[:5], group_size=4)
    assert len(ds) == 20 and 0 in ds["gain"]  # BM25 non-relevant docs are in the training rows


def test_cli_eval_writes_run(tmp_path, capsys):
    data = write_trec(tiny_collection(), tmp_path / "coll")
    run = tmp_path / "run.trec"
    assert main(["rerank", "eval", "--model", "tiny-qwen", "--data", str(data), "--split", "test", "--k", "4",
                 "--run", str(run)]) == 0  # fmt: skip
    assert "nDCG@10" in capsys.readouterr().out
    lines = run.read_text().splitlines()
    assert lines and len(lines[0].split()) == 6


def test_cli_eval_rank_r1_likelihood_picks(tmp_path, capsys, monkeypatch):
    data = write_trec(tiny_collection(), tmp_path / "coll")
    picked = []
    real = rank_r1.setwise_label_picks
    monkeypatch.setattr(rank_r1, "setwise_label_picks", lambda *a, **kw: picked.append(len(a[3])) or real(*a, **kw))
    assert main(["rerank", "eval", "--model", "tiny-qwen", "--recipe", "rank-r1", "--setwise_pick", "likelihood",
                 "--data", str(data), "--k", "5", "--run", str(tmp_path / "r1.trec")]) == 0  # fmt: skip
    assert "nDCG@10" in capsys.readouterr().out and picked  # the tournaments went through the likelihood picks
    ranks = [line.split() for line in (tmp_path / "r1.trec").read_text().splitlines()]
    assert {len(r) for r in ranks} == {6} and len({(r[0], r[2]) for r in ranks}) == len(ranks)


@pytest.mark.parametrize("argv", [["rerank", "--help"], ["rerank", "train", "--help"], ["rerank", "eval", "--help"]])
def test_help(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    assert code == 0 and "usage" in capsys.readouterr().out.lower()


def test_eval_first_stage_rank_defaults_to_recorded_and_warns(tmp_path, monkeypatch):
    import json
    import warnings
    from dataclasses import asdict

    data = write_trec(tiny_collection(), tmp_path / "coll")
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
    data = write_trec(tiny_collection(), tmp_path / "coll")
    args = rr.RerankArgs(recipe="erank", model="tiny-qwen", data=str(data), group_size=2, rollouts=2, sft_steps=1,
                         lora_r=2, max_doc_chars=40, first_stage_rank=True)  # fmt: skip
    cfg = grpo_config(tmp_path / "run", max_steps=1, per_device_train_batch_size=4, num_generations=2,
                  steps_per_generation=1, max_completion_length=2)  # fmt: skip
    assert rr.run_rerank_train(args, cfg) == 0
    saved = json.loads((tmp_path / "run" / "merged" / "rerank.json").read_text())
    assert saved["first_stage_rank"] is True and saved["recipe"] == "erank"
    assert len(built) == 1 and built[0][0] is True and all(RANK_LINE in p[0]["content"] for p in built[0][1])
    rewards = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "reward" in r]
    assert len(rewards) == 1 and -0.5 <= rewards[0]["reward"] <= 1.0  # listwise reward per step, read back


def test_eval_counts_and_reports_setwise_parse_failures(tmp_path, capsys):
    import json

    data = write_trec(tiny_collection(), tmp_path / "coll")
    run = tmp_path / "r1.trec"
    # an untrained tiny model never writes <think>..</think><answer>[i]</answer>: every window falls back
    with pytest.warns(UserWarning, match=r"setwise completions could not be parsed .*--setwise_pick likelihood"):
        metrics = rr.run_rerank_eval(rr.EvalArgs(model="tiny-qwen", recipe="rank-r1", data=str(data), k=4,
                                                 run=str(run)))  # fmt: skip
    saved = json.loads((tmp_path / "r1.trec.json").read_text())
    assert saved["unparsable"] == saved["parsed_total"] == metrics["rerank/unparsable"] > 0
    assert saved["unparsable_share"] == metrics["rerank/unparsable_share"] == 1.0
    out = capsys.readouterr().out
    assert f"unparsable setwise completions: {saved['unparsable']} of {saved['parsed_total']}" in out
    assert saved["metrics"]["nDCG@10"] == metrics["nDCG@10"]


def test_setwise_scorer_counts_only_what_fails_to_parse(monkeypatch):
    from rankrl.rerank.recipes.base import RecipeOptions

    answers = iter(["<think>x</think><answer>[2]</answer>", "[1]"])
    monkeypatch.setattr(rank_r1, "generate_texts", lambda m, t, msgs, n: [next(answers) for _ in msgs])
    score = rank_r1.scorer(None, None, RecipeOptions(window=2))
    score("q", ["a", "b"])  # one window: parsed
    score("q", ["a", "b"])  # a fresh memo: asked again, unparsable
    assert (score.parse_count.failed, score.parse_count.total) == (1, 2)
    assert not hasattr(rank_r1.scorer(None, None, RecipeOptions(setwise_pick="likelihood")), "parse_count")



def test_cli_eval_reranks_a_candidates_run_and_drop_unknown_is_a_flag(tmp_path, capsys):
    import json

    data = write_trec(tiny_collection(), tmp_path / "coll")
    (data / "qrels.txt").write_text((data / "qrels.txt").read_text() + "0 0 gone-doc 1\n")
    run, cands = tmp_path / "out.trec", tmp_path / "cands.trec"
    # each query's docs in reverse order (relevant d?0/d?1 last), one doc the collection lacks; query 5 absent
    order = ["d{q}4", "zz", "d{q}3", "d{q}2", "d{q}1", "d{q}0"]
    cands.write_text("".join(f"{q} Q0 {d.format(q=q)} {r} {10 - r}.0 bm25x\n" for q in "01234"
                             for r, d in enumerate(order, 1)))  # fmt: skip
    argv = ["rerank", "eval", "--model", "tiny-qwen", "--data", str(data), "--split", "all", "--k", "3",
            "--candidates", str(cands), "--run", str(run)]  # fmt: skip
    with pytest.raises(CollectionFormatError, match=r"unknown doc 'gone-doc' \(pass --drop_unknown"):
        main(argv)
    with pytest.warns(UserWarning) as caught:
        assert main([*argv, "--drop_unknown"]) == 0
    msgs = " | ".join(str(w.message) for w in caught)
    assert "dropped 0 judgments naming unknown queries and 1 naming unknown documents" in msgs
    assert "dropped 5 of 30 candidates naming documents" in msgs and "1 of 6 queries have no candidates" in msgs
    out = capsys.readouterr().out
    assert "candidates from" in out and out.count("run") >= 1
    ranked = [line.split() for line in run.read_text().splitlines()]
    assert {(r[0], r[2]) for r in ranked} == {(q, f"d{q}{j}") for q in "01234" for j in (4, 3, 2)}  # run top-3
    record = json.loads(run.with_name(run.name + ".json").read_text())
    assert record["first_stage"] == str(cands) and record["queries"] == 6
    assert (record["candidates_unknown_docs_dropped"], record["candidates_missing_queries"]) == (5, 1)
    assert record["bm25"]["nDCG@10"] == 0.0  # the run's own top-3 holds no relevant doc


def test_training_pools_come_from_a_candidates_run(tmp_path):
    from rankrl.rerank.first_stage import RunCandidates

    coll = tiny_collection()
    path = tmp_path / "cands.trec"  # per query the three non-relevant docs first, query "5" absent
    lines = [f"{q} Q0 d{q}{j} {r} {5 - r}.0 x\n" for q in "01234" for r, j in enumerate((4, 3, 2, 1), 1)]
    path.write_text("".join(lines))
    with pytest.warns(UserWarning, match="skipped 1 queries with no first-stage candidates"):
        ds = rr.build_dataset("erank", coll, list(coll.queries), RunCandidates(coll, path), group_size=3)
    assert len(ds) == 5 * 3 and sum(ds["gain"]) == 0  # the run's top-3, not BM25's (whose top-3 hold both relevant)
    assert set(ds["doc_id"]) == {f"d{q}{j}" for q in "01234" for j in (4, 3, 2)}
