"""The ProRank recipe (rankrl.rerank.recipes.prorank): the warmup reward, rows, stage-2 score learning moving the
answer-token distribution toward graded labels, the scorer, and ``rankrl rerank train --recipe prorank`` end to end
(GRPO warmup + score learning -> merged model that ``rerank eval`` scores). tiny-qwen, no downloads."""

from __future__ import annotations

import doctest
import json
import random

import pytest

pytest.importorskip("trl")

import rankrl.rerank.job as rr  # noqa: E402
import rankrl.rerank.prompts as prompts  # noqa: E402
from rankrl.cli import main  # noqa: E402
from rankrl.models import load_model  # noqa: E402
from rankrl.rerank.recipes import RECIPES, RecipeOptions, prorank  # noqa: E402
from rankrl.tracking import read_metrics  # noqa: E402
from tests.rerank.tiny import lora_config, tiny_collection, write_trec  # noqa: E402


def test_doctests():
    result = doctest.testmod(prorank)
    assert result.failed == 0 and result.attempted >= 3


def test_registered():
    assert RECIPES["prorank"] is prorank.RECIPE and RECIPES["prorank"].post_grpo is prorank.post_grpo


def test_warmup_reward_format_then_judgment_and_counts_unparsable():
    prompts.UNPARSABLE.clear()
    logged = []
    out = prorank.prorank_warmup_reward(
        ["1", "0", "0", "Answer: 1.", "The passage is relevant.", ""],
        label=[1, 1, 0, 0, 1, 0],
        log_metric=lambda k, v: logged.append((k, v)),
    )
    f = prorank.FORMAT_REWARD
    assert out == pytest.approx([1 + f, f, 1 + f, f, 0.0, 0.0])
    assert min(r for r, t in zip(out, ["1", "0", "0", "A"], strict=False) if t) > 0  # a wrong answer beats free text
    assert prompts.UNPARSABLE["prorank"] == 2 and logged == [("rerank/unparsable_prorank", pytest.approx(2 / 6))]
    with pytest.raises(ValueError, match="one label per completion"):
        prorank.prorank_warmup_reward(["1", "0"], label=[1])


def test_rows_labels_targets_and_depth():
    coll = tiny_collection()  # gains 2, 1, 0, 0, 0 per topic; g_max 2
    docs = [f"d0{j}" for j in range(5)]
    rows = prorank.rows(coll, "0", docs, random.Random(0), RecipeOptions(group_size=5, depth=5, max_chars=40))
    assert [r["doc_id"] for r in rows] == docs
    assert [r["label"] for r in rows] == [1, 1, 0, 0, 0]
    assert [r["target"] for r in rows] == [1.0, 0.5, 0.0, 0.0, 0.0]
    assert "Answer with one digit only: 1 (relevant) or 0 (irrelevant)." in rows[0]["prompt"][0]["content"]
    drawn = prorank.rows(coll, "0", docs, random.Random(1), RecipeOptions(group_size=3, depth=5))
    ids = [r["doc_id"] for r in drawn]
    assert len(ids) == 3 and ids == sorted(ids)  # drawn from the top 5, kept in BM25 order
    ds = rr.build_dataset("prorank", coll, list(coll.queries), group_size=2, depth=4)
    assert set(ds.column_names) >= {"prompt", "query_id", "doc_id", "gain", "label", "target"}
    assert len(ds) == 2 * len(coll.queries)


def test_score_learning_moves_the_answer_distribution_toward_graded_labels():
    """Stage 2 on tiny-qwen: the loss falls and p("1") orders relevant above non-relevant docs of the train rows."""
    from peft import get_peft_model

    coll = tiny_collection()
    ds = rr.build_dataset("prorank", coll, list(coll.queries), group_size=4, max_chars=60)
    lm = load_model("tiny-qwen", task_kind="causal_lm", seed=0)
    model = get_peft_model(lm.model, lora_config())
    q0 = [r for r in ds if r["query_id"] == "0"]
    docs = [coll.docs[r["doc_id"]] for r in q0]

    def gap() -> float:  # mean p("1") of relevant docs minus that of non-relevant ones, query 0
        p = prorank.relevance_probabilities(model, lm.tokenizer, coll.queries["0"], docs, 60)
        rel = [pi for pi, r in zip(p, q0, strict=True) if r["label"]]
        non = [pi for pi, r in zip(p, q0, strict=True) if not r["label"]]
        return sum(rel) / len(rel) - sum(non) / len(non)

    before = gap()
    logged = []
    losses = prorank.score_learning(model, lm.tokenizer, ds, steps=30, learning_rate=3e-3, batch_size=8,
                                    log=lambda s, v: logged.append(s))  # fmt: skip
    assert len(losses) == 30 and logged == list(range(1, 31))
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    assert gap() > max(before, 0.0) + 0.05


def test_score_learning_stops_on_request():
    coll = tiny_collection()
    ds = rr.build_dataset("prorank", coll, list(coll.queries), group_size=2)
    from peft import get_peft_model

    lm = load_model("tiny-qwen", task_kind="causal_lm", seed=0)
    model = get_peft_model(lm.model, lora_config())
    assert prorank.score_learning(model, lm.tokenizer, ds, steps=5, learning_rate=1e-3, stop=True) == []
    with pytest.raises(ValueError, match="no trainable parameters"):
        prorank.score_learning(lm.model.requires_grad_(False), lm.tokenizer, ds, steps=1, learning_rate=1e-3)


def test_scorer_is_a_probability_and_matches_the_reference_path():
    lm = load_model("tiny-qwen", task_kind="causal_lm", seed=0)
    coll = tiny_collection()
    docs = [coll.docs[f"d1{j}"] for j in range(5)]
    fast = prorank.relevance_probabilities(lm.model, lm.tokenizer, "engine noise", docs)
    ref = prorank.relevance_probabilities(lm.model, lm.tokenizer, "engine noise", docs, prefix_cache=False)
    assert len(fast) == 5 and all(0.0 <= p <= 1.0 for p in fast)
    assert fast == pytest.approx(ref, abs=1e-4)
    score = rr.make_scorer("prorank", lm.model, lm.tokenizer, max_chars=300)
    assert score("engine noise", docs) == pytest.approx(fast, abs=1e-6)


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["rerank", "train", "--recipe", "prorank", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--score_steps" in out and "--score_learning_rate" in out


def test_train_two_stages_then_eval(tmp_path, capsys):
    """One command: 1 GRPO warmup step + 2 score-learning steps -> merged model; ``rerank eval`` scores it."""
    data = write_trec(tiny_collection(), tmp_path / "coll")
    out = tmp_path / "run"
    argv = ["rerank", "train", "--recipe", "prorank", "--model", "tiny-qwen", "--data", str(data), "--group_size",
            "2", "--rollouts", "2", "--lora_r", "2", "--max_doc_chars", "40", "--max_steps", "1",
            "--per_device_train_batch_size", "4", "--steps_per_generation", "1", "--max_completion_length", "2",
            "--score_steps", "2", "--use_cpu", "true", "--bf16", "false", "--report_to", "none",
            "--gradient_checkpointing", "false", "--save_strategy", "no", "--logging_steps", "1", "--output_dir",
            str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "prorank score learning: 2 steps" in printed
    saved = json.loads((out / "merged" / "rerank.json").read_text())
    assert saved["recipe"] == "prorank" and saved["score_steps"] == 2
    rows = read_metrics(out / "metrics.jsonl")
    assert any("reward" in r for r in rows)  # the GRPO warmup step
    score_rows = [r for r in rows if "score/loss" in r]
    assert [r["score/step"] for r in score_rows] == [1, 2] and all(r["score/loss"] > 0 for r in score_rows)
    assert main(["rerank", "eval", "--model", str(out), "--data", str(data), "--split", "test", "--k", "4"]) == 0
    record = json.loads((out / "run.test.trec.json").read_text())
    assert record["label"] == "prorank" and 0.0 <= record["metrics"]["nDCG@10"] <= 1.0
    assert "unparsable" not in record  # the scorer reads probabilities, it parses nothing
