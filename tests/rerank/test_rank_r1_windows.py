"""Rank-R1 training windows are shuffled (seeded, per prompt), so position bias cannot pay: over many prompts the
relevant document sits at every position, and a constant answer ("always [1]", or any fixed label) earns chance."""

from __future__ import annotations

from collections import Counter

import pytest

pytest.importorskip("datasets")

import rankrl.rerank.job as rr  # noqa: E402
from rankrl.rerank.collections import Collection, split_queries  # noqa: E402
from rankrl.rerank.first_stage import first_stage  # noqa: E402
from rankrl.rerank.recipes.rank_r1 import rank_r1_reward  # noqa: E402

N_QUERIES, WINDOW = 400, 4
#: constant-answer reward above chance tolerated: ~2.8 binomial standard deviations at 400 prompts, p = 1/4
TOLERANCE = 0.06


def answer(label: int) -> str:
    return f"<think>the same label every time</think><answer>[{label}]</answer>"


def first_is_relevant(n: int = N_QUERIES, window: int = WINDOW) -> Collection:
    """``n`` queries, each with one relevant doc that BM25 ranks first of its ``window`` candidates (the worst case
    for position bias: unshuffled, "always [1]" would be right every time)."""
    docs, queries, qrels = {}, {}, {}
    for i in range(n):
        queries[f"q{i}"] = f"topic{i} wing"
        docs[f"r{i}"] = f"topic{i} wing topic{i} lift"
        docs.update({f"n{i}_{j}": f"topic{i} note {j}" for j in range(1, window)})
        qrels[f"q{i}"] = {f"r{i}": 1}
    return Collection(docs=docs, queries=queries, qrels=qrels, name="first-is-relevant")


@pytest.fixture(scope="module")
def biased():
    coll = first_is_relevant()
    qids = list(coll.queries)
    ds = rr.build_dataset("rank-r1", coll, qids, window=WINDOW, max_chars=60, seed=0)
    return coll, qids, ds


def test_bm25_puts_the_relevant_doc_first(biased):
    # the premise of the tests below: in first-stage order position 1 is always the answer
    coll, qids, _ = biased
    first = first_stage(coll).search(qids, k=WINDOW)
    assert all(list(first[q])[0] == f"r{q[1:]}" and len(first[q]) == WINDOW for q in qids)


def test_relevant_position_is_spread_over_the_window(biased):
    coll, qids, ds = biased
    assert len(ds) == N_QUERIES and all(len(rel) == 1 for rel in ds["relevant"])
    positions = Counter(rel[0] for rel in ds["relevant"])
    assert set(positions) == set(range(1, WINDOW + 1))
    assert min(positions.values()) >= N_QUERIES / (2 * WINDOW), positions
    # the shuffle reorders the same candidates, and the labels point at the relevant doc
    first = first_stage(coll).search(qids, k=WINDOW)
    for q, ids, rel in zip(ds["query_id"], ds["doc_ids"], ds["relevant"], strict=True):
        assert sorted(ids) == sorted(first[q]) and ids[rel[0] - 1] == f"r{q[1:]}"


def test_a_constant_answer_earns_no_more_than_chance(biased):
    _, _, ds = biased
    for label in range(1, WINDOW + 1):
        mean = sum(rank_r1_reward([answer(label)] * len(ds), relevant=ds["relevant"])) / len(ds)
        assert mean <= 1 / WINDOW + TOLERANCE, (label, mean)


def test_shuffle_is_seeded(biased):
    coll, qids, ds = biased
    again = rr.build_dataset("rank-r1", coll, qids, window=WINDOW, max_chars=60, seed=0)
    assert again["doc_ids"] == ds["doc_ids"] and again["prompt"] == ds["prompt"]
    other = rr.build_dataset("rank-r1", coll, qids, window=WINDOW, max_chars=60, seed=1)
    moved = sum(a != b for a, b in zip(other["doc_ids"], ds["doc_ids"], strict=True))
    assert moved > N_QUERIES / 2  # a different seed shuffles most prompts differently (chance of equal: 1/24)


def test_cranfield_training_windows_do_not_pay_position_bias(cranfield):
    # the real training pools (BM25 top-4 of the train queries, 150 prompts): every fixed label earns about chance
    # (the relevant share of a window); 0.1 is ~2.5 standard deviations of a mean over 150 prompts. (In BM25 order
    # Cranfield's position 1 is mostly the query's gain-0 source document, so there "always [1]" would earn 0.33 and
    # "always [2]" 0.41; shuffled, seed 0: 0.43 / 0.28 / 0.35 / 0.37 around chance 0.36.)
    train_q, _ = split_queries(cranfield, 1 / 3, 0)
    ds = rr.build_dataset("rank-r1", cranfield, train_q, window=WINDOW, seed=0)
    n = len(ds)
    chance = sum(len(rel) for rel in ds["relevant"]) / (WINDOW * n)
    for label in range(1, WINDOW + 1):
        mean = sum(rank_r1_reward([answer(label)] * n, relevant=ds["relevant"])) / n
        assert abs(mean - chance) <= 0.1, (label, mean, chance)
