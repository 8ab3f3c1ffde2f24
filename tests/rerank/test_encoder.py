"""GRPO for the encoder reranker (rankrl.rerank.encoder): Plackett-Luce pieces, training, saving, evaluating."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from safetensors.torch import load_file  # noqa: E402

from rankrl.cli import main  # noqa: E402
from rankrl.models import load_model  # noqa: E402
from rankrl.rerank.collections import Collection, load_collection  # noqa: E402
from rankrl.tracking import read_metrics  # noqa: E402
from tests.rerank.tiny import tiny_collection, write_trec  # noqa: E402


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
    from rankrl.rerank.encoder import ndcg_of_order
    from rankrl.rerank.evaluate import rerank
    from rankrl.rerank.metrics import evaluate

    coll = tiny_collection()
    rng = torch.Generator().manual_seed(1)
    for q in coll.queries:
        docs = list(coll.docs)[:12]
        order = [docs[i] for i in torch.randperm(len(docs), generator=rng).tolist()]
        want = evaluate({q: rerank(order, [-i for i in range(len(order))])}, coll.qrels, ("nDCG@10",), qids=[q])
        assert ndcg_of_order(order, coll.qrels[q]) == pytest.approx(want["nDCG@10"], abs=1e-9)


def test_encoder_grpo_trains_saves_and_evaluates(tmp_path, monkeypatch, capsys):
    from rankrl.rerank.encoder import ENCODER_POLICY_FILE, EncoderGRPOArgs, run_encoder_grpo

    monkeypatch.setenv("RANKRL_CACHE", str(tmp_path / "cache"))
    write_trec(tiny_collection(), tmp_path / "data")
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
    from rankrl.rerank.bm25 import BM25Retriever
    from rankrl.rerank.encoder import EncoderGRPOArgs, load_encoder_scorer, run_encoder_grpo

    monkeypatch.setenv("RANKRL_CACHE", str(tmp_path / "cache"))
    coll = tiny_collection()
    write_trec(coll, tmp_path / "data")
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
    coll = tiny_collection()
    write_trec(coll, tmp_path / "data")
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
    coll = tiny_collection()
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
    coll = tiny_collection()
    write_trec(coll, tmp_path / "data")
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

    coll = tiny_collection()
    # the only relevant document shares no term with any query: BM25 never retrieves it
    unreachable = Collection(docs={**coll.docs, "zz": "unrelated text"}, queries=coll.queries, name="unreachable",
                             qrels={q: {**{d: 0 for d in j}, "zz": 1} for q, j in coll.qrels.items()})  # fmt: skip
    write_trec(unreachable, tmp_path / "data")
    with pytest.raises(ValueError, match="raise --train_k"):
        run_encoder_grpo(EncoderGRPOArgs(data=str(tmp_path / "data"), output_dir=str(tmp_path / "o"), k=3,
                                         report_to="none"))  # fmt: skip


def test_encoder_grpo_train_k_trains_on_a_deeper_pool_than_it_reranks(tmp_path, monkeypatch, capsys):
    """Relevant documents only at BM25 ranks 3-5: the top-2 pool has nothing to learn from, the top-5 pool has."""
    from rankrl.rerank.encoder import EncoderGRPOArgs, run_encoder_grpo

    monkeypatch.setenv("RANKRL_CACHE", str(tmp_path / "cache"))
    coll = tiny_collection()  # per topic: "<topic> study 0/1" (BM25 ranks 1-2), "<word> other paper 2-4" (ranks 3-5)
    deep = Collection(docs=coll.docs, queries=coll.queries, name="deep",
                      qrels={q: {d: int(d[-1] >= "2") for d in j} for q, j in coll.qrels.items()})  # fmt: skip
    write_trec(deep, tmp_path / "data")
    kw = dict(data=str(tmp_path / "data"), k=2, steps=2, queries_per_step=2, rollouts=4, report_to="none")
    with pytest.raises(ValueError, match="BM25 top-2; raise --train_k"):
        run_encoder_grpo(EncoderGRPOArgs(output_dir=str(tmp_path / "shallow"), train_k=0, **kw))  # 0: = --k
    summary = run_encoder_grpo(EncoderGRPOArgs(output_dir=str(tmp_path / "deep"), train_k=5, **kw))
    assert "relevant doc in the BM25 top-5" in capsys.readouterr().out
    assert summary["train_queries_used"] > 0 and max(summary["reward_per_step"]) > 0  # rankings of 5 candidates
    assert summary["heldout_nDCG@10_start"] == 0.0  # held-out reranks only the top --k 2: nothing relevant there
    with pytest.raises(ValueError, match="--train_k"):
        EncoderGRPOArgs(train_k=1)


def test_encoder_grpo_trains_on_a_candidates_run_with_bm25_scores_as_the_feature(tmp_path, monkeypatch, capsys):
    from rankrl.rerank.bm25 import BM25Retriever
    from rankrl.rerank.encoder import EncoderGRPOArgs, run_encoder_grpo

    monkeypatch.setenv("RANKRL_CACHE", str(tmp_path / "cache"))
    coll = tiny_collection()
    write_trec(coll, tmp_path / "data")
    cands = tmp_path / "cands.trec"  # reverse of the docs' order: relevant d?0/d?1 at ranks 4-5
    cands.write_text("".join(f"{q} Q0 d{q}{j} {5 - j} {j}.0 x\n" for q in coll.queries for j in range(5)))
    seen = []
    real = BM25Retriever.doc_scores
    monkeypatch.setattr(BM25Retriever, "doc_scores", lambda self, q, ids: seen.append(list(ids)) or real(self, q, ids))
    kw = dict(data=str(tmp_path / "data"), candidates=str(cands), steps=2, queries_per_step=2, rollouts=4,
              report_to="none")  # fmt: skip
    with pytest.raises(ValueError, match="--candidates run's top-2; raise --train_k"):
        run_encoder_grpo(EncoderGRPOArgs(output_dir=str(tmp_path / "shallow"), k=2, train_k=0, **kw))
    seen.clear()
    summary = run_encoder_grpo(EncoderGRPOArgs(output_dir=str(tmp_path / "enc"), k=3, train_k=5, **kw))
    assert "candidates from" in capsys.readouterr().out and summary["train_queries_used"] > 0
    assert summary["heldout_nDCG@10_start"] == 0.0  # held-out queries rerank the run's top-3: nothing relevant
    assert seen and {len(ids) for ids in seen} == {3, 5}  # BM25 feature of the run's candidates (eval 3, train 5)
