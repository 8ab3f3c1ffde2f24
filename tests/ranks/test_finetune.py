"""The live fine-tuning run: learns, re-allocates mid-run, logs, checkpoints and resumes on the same curve."""

from __future__ import annotations

import math

import pytest
import torch

from rankrl.ranks.costs import allocation_cost
from rankrl.ranks.finetune import FineTuneConfig, FineTuneRun
from rankrl.tracking import Tracker, read_metrics

TINY = dict(model="tiny-qwen", task="arith", ranks="uniform:4", r_max=8, batch_size=8, max_eval=64, lr=5e-3)


def _lora_params(run):
    return {n: p.detach().clone() for n, p in run.model.named_parameters() if "lora_" in n}


def test_tiny_live_run_learns_and_logs(tmp_path):
    tracker = Tracker(tmp_path, use_wandb=False)
    run = FineTuneRun(FineTuneConfig(**TINY, steps=40), tracker=tracker)
    before, weights, before_test = run.evaluate(), _lora_params(run), run.evaluate("test")
    out = run.advance(40)
    after, after_test = run.evaluate(), run.evaluate("test")
    tracker.finish()
    assert run.finished and run.state.step == 40
    assert math.isfinite(out["train/loss"])
    assert after["quality/eval_loss"] < before["quality/eval_loss"] - 0.3
    # the test split (500 rows of arith, none in eval) improves too, and is scored apart from the eval rows
    assert after_test["quality/test_loss"] < before_test["quality/test_loss"] - 0.3
    assert after_test["quality/test_loss"] != after["quality/eval_loss"]
    assert run.state.last_eval == after  # a test score never becomes what a policy or tuner reads
    assert any(not torch.equal(weights[n], p) for n, p in _lora_params(run).items())
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows if "quality/eval_loss" in r] == [0, 40]
    assert any("train/loss" in r for r in rows)


def test_mid_run_reallocation_reports_costs_and_keeps_training(tmp_path):
    run = FineTuneRun(FineTuneConfig(**TINY, steps=20))
    run.advance(5)
    names = [t.name for t in run.targets]
    ranks = {n: (8 if i % 2 else 0) for i, n in enumerate(names)}
    costs = run.set_ranks(ranks)
    assert run.ranks == ranks
    assert costs["cost/params"] == allocation_cost(run.targets, ranks).params
    assert costs["cost/params"] == sum(8 * (t.in_features + t.out_features) for t in run.targets[1::2])
    assert costs["rank/layer_0"] == 0 and costs["rank/layer_1"] == 8
    assert math.isfinite(run.advance(5)["train/loss"])


def test_resume_continues_the_same_loss_curve(tmp_path):
    config = FineTuneConfig(**TINY, steps=30, dropout=0.1)  # dropout: the torch RNG state must be restored too
    run = FineTuneRun(config)
    run.advance(10)
    run.set_ranks({t.name: 2 + (i % 3) for i, t in enumerate(run.targets)})
    ckpt = run.save_checkpoint(tmp_path)
    assert ckpt.name == "checkpoint.pt" and not list(tmp_path.glob(".checkpoint*"))  # no temp file left
    expected = [run.advance(1)["train/loss"] for _ in range(10)]
    expected_eval = run.evaluate()

    resumed = FineTuneRun.resume(tmp_path)
    assert resumed.state.step == 10 and resumed.ranks == run.ranks
    got = [resumed.advance(1)["train/loss"] for _ in range(10)]
    assert got == pytest.approx(expected, abs=1e-6)
    assert resumed.evaluate()["quality/eval_loss"] == pytest.approx(expected_eval["quality/eval_loss"], abs=1e-6)


def test_non_finite_loss_stops_with_a_reason_instead_of_crashing(tmp_path):
    tracker = Tracker(tmp_path, use_wandb=False)
    run = FineTuneRun(FineTuneConfig(**TINY, steps=10), tracker=tracker)
    layer = run.model.base_model.model.get_submodule(run.targets[0].name)
    with torch.no_grad():
        layer.lora_B["default"].weight.fill_(float("inf"))
    out = run.advance(5)
    tracker.finish()
    assert out["train/nan"] == 1.0 and math.isnan(out["train/loss"])
    assert run.state.step == 1  # stopped at the first bad step
    assert read_metrics(tmp_path)[-1]["train/nan"] == 1.0


def test_bad_configs_are_rejected():
    with pytest.raises(ValueError, match="steps must be >= 1"):
        FineTuneConfig(steps=0)
    with pytest.raises(ValueError, match="learning rates"):
        FineTuneConfig(lr=-1)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        FineTuneRun.resume("/nonexistent/run")


@pytest.mark.slow
def test_real_minilm_learns_the_default_task():
    run = FineTuneRun(FineTuneConfig(model="minilm", task="default", ranks="uniform:4", r_max=4, steps=60,
                                     batch_size=16, max_eval=200, lr=2e-3))  # fmt: skip
    start = run.evaluate()["quality/accuracy"]
    run.advance(60)
    end = run.evaluate()["quality/accuracy"]
    assert len(run.targets) == 36  # 6 layers x (q, k, v, o, up, down)
    assert start < 0.65 and end > 0.8, (start, end)


def test_features_come_from_the_live_model_and_are_cached(monkeypatch):
    from rankrl.ranks.features import FEATURE_NAMES

    run = FineTuneRun(FineTuneConfig(**TINY, steps=5))
    feats = run.features(n_batches=2)
    matrix = feats.matrix(run.ranks, run.config.r_max)
    assert matrix.shape == (len(run.targets), len(FEATURE_NAMES))
    assert (matrix[:, FEATURE_NAMES.index("rank_frac")] == 0.5).all()  # uniform:4 of r_max 8
    assert matrix[:, FEATURE_NAMES.index("grad_sens_rel")].std() > 0  # measured, not the neutral constant
    monkeypatch.setattr(run.model, "forward", lambda *a, **k: (_ for _ in ()).throw(AssertionError("ran model")))
    again = run.features(n_batches=2)  # cache hit: the model is not run
    assert (again.static == feats.static).all()


def test_step_hooks_run_after_every_optimizer_step_in_order():
    """The public per-step hook sees steps 1..k, each after the optimizer step (weights already changed)."""
    from rankrl.ranks.finetune import FineTuneConfig, FineTuneRun

    run = FineTuneRun(FineTuneConfig(model="tiny-bert", steps=3, batch_size=4, max_eval=8, max_train=32, lr=1e-2))
    def flat(r):
        return torch.cat([p.detach().flatten() for p in r.model.parameters() if p.requires_grad])

    last, seen = [flat(run)], []

    def hook(r, step):
        seen.append((step, not torch.equal(last[-1], flat(r))))
        last.append(flat(r))

    run.step_hooks.append(hook)
    run.advance(3)
    assert seen == [(1, True), (2, True), (3, True)]
    with pytest.raises(ValueError, match="no ranks"):
        _ = FineTuneRun(FineTuneConfig(model="tiny-bert", steps=1, max_train=8), adapter=lambda base, t: base).ranks


def test_feature_cache_key_covers_everything_that_changes_the_features():
    from dataclasses import replace

    from rankrl.ranks.finetune import features_cache_key

    base = FineTuneConfig(model="tiny-bert", task="trec")

    def key(**change):
        return features_cache_key(replace(base, **change), "tiny-bert", "trec", 500, 4)

    changed = {"labels": "fine", "batch_size": 8, "max_length": 32, "seed": 1, "max_train": 100}
    keys = {name: key(**{name: value}) for name, value in changed.items()}
    assert len({key(), *keys.values()}) == len(changed) + 1  # TREC-6 vs TREC-50, batches, tokens, seed, rows
    assert features_cache_key(base, "tiny-bert", "trec", 500, 2) != key()  # batch count
    assert features_cache_key(base, "tiny-qwen", "trec", 500, 4) != key()  # model
    for same in (dict(lr=0.1), dict(steps=7), dict(threads=1), dict(eval_every=3), dict(max_eval=9)):
        assert key(**same) == key(), same  # training-only settings share the features


def test_test_split_that_the_task_lacks_is_an_error_naming_the_fix(tmp_path):
    rows = "".join(f'{{"text": "row {i}", "label": "{i % 2}"}}\n' for i in range(40))
    (tmp_path / "train.jsonl").write_text(rows)
    run = FineTuneRun(FineTuneConfig(model="tiny-bert", task=str(tmp_path), steps=1, batch_size=4, threads=1))
    with pytest.raises(ValueError, match="no test split.*test file.*--test"):
        run.evaluate("test")
    with pytest.raises(ValueError, match="'eval' or 'test'"):
        run.evaluate("dev")
