"""RerankEnv and rank_with: API checks, rewards against ir-measures, one evaluation path for every reranker."""

from __future__ import annotations

import gymnasium as gym
import ir_measures
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import rankrl  # noqa: F401  (registers rankrl/Rerank-v0)
from rankrl.rerank.bm25 import BM25Retriever
from rankrl.rerank.collections import Collection, split_queries
from rankrl.rerank.env import RerankConfig, RerankEnv
from rankrl.rerank.evaluate import rank_with, rerank
from rankrl.rerank.metrics import evaluate

NDCG10 = ir_measures.nDCG @ 10


def tiny() -> Collection:
    docs = {
        "d1": "wing lift slipstream experiment", "d2": "wing flutter panel", "d3": "heat conduction slab",
        "d4": "heat transfer wing boundary layer", "d5": "boundary layer separation flow", "d6": "supersonic wing",
        "d7": "rotor noise",
    }  # fmt: skip
    queries = {"q1": "wing lift", "q2": "heat conduction", "q3": "boundary layer flow"}
    qrels = {"q1": {"d1": 3, "d2": 1, "d6": 2, "d3": 0}, "q2": {"d3": 2, "d4": 1}, "q3": {"d5": 3, "d7": 1}}
    return Collection(docs=docs, queries=queries, qrels=qrels, name="tiny")


def _ndcg10(coll: Collection, run: dict) -> float:
    """nDCG@10 straight from ir-measures (qrels restricted to the run: it averages over every judged query)."""
    return ir_measures.calc_aggregate([NDCG10], {q: coll.qrels[q] for q in run}, run)[NDCG10]


def _by_gain(env: RerankEnv, info: dict) -> np.ndarray:
    """Action ordering the candidates by gain (the oracle reordering), padded rows 0."""
    gains = [env.collection.qrels[info["qid"]].get(d, 0) for d in info["doc_ids"]]
    action = np.full(env.config.max_candidates, -1.0, dtype=np.float32)
    action[: len(gains)] = np.array(gains) / 4.0
    return action


@pytest.mark.filterwarnings("ignore:.*unconventional shape")  # SB3 flags 2-D rows; set policies handle them
def test_env_checkers_pass():
    env = RerankEnv(tiny(), split="all", max_candidates=5)
    gym_check_env(env, skip_render_check=True)
    sb3_check_env(RerankEnv(tiny(), split="all", max_candidates=5), warn=True)


def test_registration_arguments_and_observation():
    env = gym.make("rankrl/Rerank-v0", collection=tiny(), split="all", max_candidates=4)
    obs, info = env.reset(seed=0, options={"qid": "q1"})
    assert obs["mask"].tolist() == [1, 1, 1, 1] and info["query"] == "wing lift"
    assert info["doc_ids"][0] == "d1" and info["doc_texts"][0] == "wing lift slipstream experiment"
    assert obs["rows"][0, 0] == 1.0 and obs["rows"][0, 5] == 1.0  # top BM25 score, both query terms present
    assert env.observation_space.contains(obs)
    with pytest.raises(ValueError, match="unknown RerankEnv arguments"):
        RerankEnv(tiny(), max_candidate=4)
    with pytest.raises(ValueError, match="needs a collection"):
        RerankEnv()
    with pytest.raises(ValueError, match="split"):
        RerankConfig(split="dev")
    with pytest.raises(ValueError, match="not among"):
        env.reset(options={"qid": "q9"})


def test_episode_is_one_step_and_seeded():
    env = RerankEnv(tiny(), split="all", max_candidates=5)
    draws = [env.reset(seed=s)[1]["qid"] for s in range(8)]
    assert draws == [env.reset(seed=s)[1]["qid"] for s in range(8)] and set(draws) <= {"q1", "q2", "q3"}
    env.reset(seed=0)
    _, _, terminated, truncated, _ = env.step(env.action_space.sample())
    assert terminated and not truncated
    with pytest.raises(RuntimeError, match="reset"):
        env.step(env.action_space.sample())


def test_reward_ideal_and_reversed_orders_on_tiny():
    env = RerankEnv(tiny(), split="all", max_candidates=5)
    _, info = env.reset(options={"qid": "q1"})  # every relevant doc of q1 is a candidate
    action = _by_gain(env, info)
    _, best, _, _, step_info = env.step(action)
    assert best == 1.0 == step_info["reward_oracle"]
    assert step_info["ranking"][:3] == ["d1", "d6", "d2"]
    env.reset(options={"qid": "q1"})
    n = len(info["doc_ids"])
    _, worst, _, _, _ = env.step(np.concatenate([-action[:n], np.zeros(5 - n, np.float32)]))
    assert worst < best
    _, info = env.reset(options={"qid": "q3"})  # d7 (gain 1) shares no term: never a candidate -> oracle < 1
    assert "d7" not in info["doc_ids"]
    reward = env.step(_by_gain(env, info))[1]
    run = {"q3": {d: float(10 - i) for i, d in enumerate(["d5"] + [d for d in info["doc_ids"] if d != "d5"])}}
    assert reward < 1 and reward == pytest.approx(_ndcg10(env.collection, run))


def test_rerank_order_and_ties():
    assert rerank(["a", "b", "c"], [0.1, 0.9, 0.1]) == {"b": 3.0, "a": 2.0, "c": 1.0}
    assert list(rerank(["a", "b", "c"], [0, 0, 0])) == ["a", "b", "c"]  # ties keep first-stage order
    with pytest.raises(ValueError, match="one per candidate"):
        rerank(["a"], [1.0, 2.0])
    with pytest.raises(ValueError, match="finite"):
        rerank(["a"], [float("nan")])


def test_require_relevant_drops_hopeless_queries():
    coll = tiny()
    coll.qrels["q2"] = {"d3": 0, "d4": 0, "d7": 1}  # no relevant candidate for q2
    env = RerankEnv(coll, split="all", max_candidates=5, require_relevant=True)
    assert env.qids == ["q1", "q3"]


def test_cranfield_reward_matches_ir_measures(cranfield):
    env = RerankEnv(cranfield, split="test", max_candidates=20)
    assert len(env.qids) == 75 and env.qids == split_queries(cranfield, 1 / 3, 0)[1]
    gaps = 0
    for qid in env.qids[:15]:
        _, info = env.reset(options={"qid": qid})
        action = _by_gain(env, info)
        _, reward, _, _, step_info = env.step(action)
        ranked = step_info["ranking"]
        run = {qid: {d: float(len(ranked) - i) for i, d in enumerate(ranked)}}
        assert reward == pytest.approx(_ndcg10(cranfield, run))
        assert reward == pytest.approx(step_info["reward_oracle"]) and reward >= step_info["reward_bm25"]
        gaps += reward < 1.0 - 1e-9  # normalised by all judged docs: unretrieved relevant docs cap it below 1
        if reward > 0:
            env.reset(options={"qid": qid})
            assert env.step(-action)[1] < reward
    assert gaps > 0


def test_rank_with_is_the_env_evaluation(cranfield):
    retriever = BM25Retriever(cranfield)
    _, test = split_queries(cranfield, 1 / 3, 0)
    env = RerankEnv(cranfield, split="test", retriever=retriever)
    bm25 = rank_with(lambda q, docs: [0.0] * len(docs), cranfield, test, k=20, retriever=retriever)
    first_stage = evaluate(retriever.search(test, k=20), cranfield.qrels, ("nDCG@10",))["nDCG@10"]
    assert bm25["nDCG@10"] == pytest.approx(first_stage) == pytest.approx(np.mean(list(env.reward_bm25.values())))

    def overlap(query: str, docs: list[str]) -> list[float]:  # a different reranker, evaluated identically
        terms = set(query.split())
        return [len(terms & set(d.split())) / len(terms) for d in docs]

    other = rank_with(overlap, cranfield, test, k=20, retriever=retriever)
    assert set(other) == {"nDCG@10", "RR@10"} and other["nDCG@10"] != bm25["nDCG@10"]
