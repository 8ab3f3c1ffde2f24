"""`rankrl apply` transfers a policy trained for tiny-bert to tiny-qwen (another architecture, more modules than
the policy's rows) as a PEFT LoraConfig whose ranks PEFT applies exactly and that respects the budget; a policy of
another observation layout is refused; `rankrl baselines` runs every method at equal budget."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from peft import LoraConfig, get_peft_model

from rankrl.cli import main
from rankrl.models import load_model
from rankrl.ranks.apply import write_ranks
from rankrl.ranks.budgets import Budget, feasible
from rankrl.ranks.compare import METHODS
from rankrl.ranks.env import LoRARankConfig
from rankrl.ranks.finetune import FineTuneConfig
from rankrl.ranks.lora import check_adapter_ranks
from rankrl.ranks.policy import PolicyLayoutError, load_policy, widen_policy
from rankrl.ranks.sim import SimCalibration
from rankrl.ranks.train import TrainPolicyConfig, train_policy
from rankrl.targets import find_target_modules


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    """A policy trained on a synthetic (tiny-bert-shaped) sim with 12 rows, evaluated live on tiny-bert."""
    out = tmp_path_factory.mktemp("policy") / "run"
    run = FineTuneConfig(model="tiny-bert", steps=8, lr=3e-3, batch_size=8, max_eval=16, max_train=128, eval_every=0,
                         threads=1)  # fmt: skip
    config = TrainPolicyConfig(env=LoRARankConfig(run=run, decisions=2, max_modules=12), probe_steps=4, timesteps=32,
                               n_steps=32, ppo_batch_size=32, n_epochs=1, out=str(out), wandb=False,
                               progress=False)  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:  # module fixtures run before conftest's per-test isolation
        mp.setenv("RANKRL_CACHE", str(tmp_path_factory.mktemp("cache")))
        train_policy(config, calibration=SimCalibration.synthetic(r_max=8, run_steps=8))
    return out


def test_apply_transfers_to_a_new_architecture_exactly_and_within_budget(policy_dir, tmp_path, capsys):
    out = tmp_path / "qwen"
    args = ["apply", "--policy", str(policy_dir), "--model", "tiny-qwen", "--out", str(out), "--budget.rank", "3",
            "--threads", "1", "--finetune", "--steps", "3", "--max_eval", "16"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "model.layers.1.mlp.down_proj" in printed and "quality/accuracy" in printed
    ranks = json.loads((out / "ranks.json").read_text())
    fresh = load_model("tiny-qwen", seed=0).model
    targets = find_target_modules(fresh)
    assert len(targets) == len(ranks) == 14 > 12  # more modules than the policy has rows: widened, not refused
    assert feasible(targets, ranks, Budget.mean_rank(targets, 3.0))
    config = LoraConfig.from_pretrained(str(out))  # plain PEFT reads it
    assert set(config.target_modules) == {n for n, r in ranks.items() if r > 0}
    check_adapter_ranks(get_peft_model(fresh, config), ranks)  # every module got exactly its rank
    with (out / "ranks.csv").open() as f:
        table = list(csv.DictReader(f))
    assert {r["module"]: int(r["rank"]) for r in table} == ranks and (out / "ranks.png").exists()
    assert (out / "finetuned" / "adapter_model.safetensors").exists()


def test_long_finetune_at_the_policy_lr_warns_and_a_flat_loss_is_reported(policy_dir, tmp_path, capsys):
    base = ["apply", "--policy", str(policy_dir), "--model", "tiny-bert", "--threads", "1", "--max_eval", "16"]
    args = [*base, "--out", str(tmp_path / "a"), "--finetune", "--steps", "9"]
    with pytest.warns(UserWarning, match="lower --lr"):  # 9 > the policy's 8-step episodes, no --lr given
        assert main(args) == 0
    args = [*base, "--out", str(tmp_path / "b"), "--finetune", "--steps", "2", "--lr", "1e-9"]
    assert main(args) == 0  # lr ~0: the loss can't fall; apply says so instead of a silent flat line
    assert "WARNING: eval loss did not fall" in capsys.readouterr().out


def test_widened_policy_acts_identically_on_the_real_rows(policy_dir):
    policy = load_policy(policy_dir).policy
    rng = np.random.default_rng(0)
    rows, mask = np.zeros((12, policy.observation_space["rows"].shape[1]), np.float32), np.zeros(12, np.float32)
    rows[:9], mask[:9] = rng.uniform(0, 2, (9, rows.shape[1])), 1.0
    glob = rng.uniform(0, 1, policy.observation_space["globals"].shape).astype(np.float32)
    narrow, _ = policy.predict({"rows": rows, "mask": mask, "globals": glob}, deterministic=True)
    wide_policy = widen_policy(policy, 40)
    pad = {"rows": np.concatenate([rows, np.zeros((28, rows.shape[1]), np.float32)]),
           "mask": np.concatenate([mask, np.zeros(28, np.float32)]), "globals": glob}  # fmt: skip
    wide, _ = wide_policy.predict(pad, deterministic=True)
    np.testing.assert_allclose(wide[:9], narrow[:9], atol=1e-6)


@pytest.mark.parametrize("change", ["features", "globals", "version"])
def test_policy_of_another_observation_layout_is_refused(policy_dir, tmp_path, capsys, change):
    other = tmp_path / "other"
    shutil.copytree(policy_dir, other)
    meta = json.loads((other / "policy.json").read_text())
    if change == "version":  # a v1 policy (grid-rank actions, no budget in its observation): same names, refused
        meta["layout_version"] = 1
    else:
        key = "feature_names" if change == "features" else "global_names"
        meta["observation"][key] = meta["observation"][key][:-1] + ["something_else"]
    (other / "policy.json").write_text(json.dumps(meta))
    with pytest.raises(PolicyLayoutError, match="another observation layout.*rankrl train-policy"):
        load_policy(other)
    assert main(["apply", "--policy", str(other), "--model", "tiny-qwen", "--out", str(tmp_path / "x")]) == 2
    assert "retrain the policy" in capsys.readouterr().err


def test_baselines_table_has_every_method_at_equal_budget(policy_dir, tmp_path, capsys):
    out = tmp_path / "baselines"
    args = ["baselines", "--run.model", "tiny-bert", "--run.steps", "4", "--seeds", "0", "1", "--run.max_eval", "16",
            "--run.batch_size", "8", "--run.max_train", "128", "--uniform_lrs", "1e-3", "1e-2", "--policy",
            str(policy_dir), "--out", str(out), "--run.threads", "1", "--no_wandb"]  # fmt: skip
    assert main(args) == 0
    result = json.loads((out / "results.json").read_text())
    cap = result["budget"]["params"]
    assert {r["method"] for r in result["table"]} == {*METHODS, "policy"}
    uni = [r for r in result["table"] if r["method"] == "uniform"]
    assert [r["lr"] for r in uni] == [1e-3, 1e-2]
    assert [r["tuned"] for r in uni] == [r is min(uni, key=lambda r: r["eval_loss"]) for r in uni] and any(
        r["tuned"] for r in uni)  # fmt: skip
    assert len(result["runs"]) == 2 * (len(METHODS) + 1 + 1)  # 2 seeds x (methods + policy + one more uniform lr)
    assert all(r["params"] <= cap and np.isfinite(r["eval_loss"]) for r in result["runs"])
    assert {r["seed"] for r in result["runs"]} == {0, 1}
    with (out / "results.csv").open() as f:
        assert len(list(csv.DictReader(f))) == len(result["table"])
    assert "tuned uniform" in capsys.readouterr().out


def test_a_rank_write_failing_half_way_leaves_the_old_files_whole(tmp_path, monkeypatch):
    import rankrl.ranks.apply as apply_mod
    from rankrl.ranks.compare import write_results

    targets = find_target_modules(load_model("tiny-bert").model)
    write_ranks(targets, {t.name: 2 for t in targets}, tmp_path)
    old = {n: (tmp_path / n).read_text() for n in ("ranks.json", "ranks.csv")}

    class HalfWriter:  # writes the header and one row, then the disk is full
        def __init__(self, f, *args, **kwargs):
            self.f, self.rows = f, 0

        def writerow(self, row):
            if self.rows == 2:
                raise OSError("disk full")
            self.f.write(",".join(map(str, row)) + "\n")
            self.rows += 1

    monkeypatch.setattr(apply_mod.csv, "writer", HalfWriter)
    with pytest.raises(OSError, match="disk full"):
        write_ranks(targets, {t.name: 4 for t in targets}, tmp_path)
    assert (tmp_path / "ranks.csv").read_text() == old["ranks.csv"]  # not half of the new table
    assert json.loads((tmp_path / "ranks.json").read_text()) == {t.name: 4 for t in targets}  # complete, the new one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ranks.csv", "ranks.json"]  # no temp file left

    monkeypatch.undo()
    result = {"table": [{"method": "uniform", "accuracy": 0.5}], "runs": []}
    write_results(result, tmp_path)
    before = (tmp_path / "results.json").read_text()

    def half_then_fail(self, data, *args, **kwargs):
        with open(self, "w") as f:
            f.write(data[: len(data) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_results({**result, "runs": [1]}, tmp_path)
    monkeypatch.undo()
    assert (tmp_path / "results.json").read_text() == before
    assert not list(tmp_path.glob(".*"))


def test_baselines_budget_below_rank_one_everywhere_is_an_error_not_head_only(tmp_path, capsys):
    args = ["baselines", "--run.model", "tiny-bert", "--budget.params", "10", "--run.max_train", "64",
            "--run.threads", "1", "--out", str(tmp_path / "b"), "--no_wandb"]  # fmt: skip
    assert main(args) == 2  # a message and exit status 2, not a traceback
    err = capsys.readouterr().err
    assert re.search(r"rankrl baselines: .*below one module at rank 1.*every method would train the head only.*"
                     r"--budget.params >= 1792", err), err  # fmt: skip
    assert not (tmp_path / "b" / "results.json").exists()
    # above one module but below uniform: uniform and AdaLoRA alone cannot use it; the error names the methods that can
    args = [*args[:4], "200", *args[5:], "--methods", "uniform", "adalora"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert re.search(r"below uniform LoRA at rank 1 \(1,792 params\): uniform and adalora would train the head "
                     r"only.*--methods attention mlp", err), err  # fmt: skip


def test_baselines_tune_every_method_on_dev_and_score_test_below_uniform_budget(tmp_path, capsys):
    """Mean rank 0.5 on tiny-bert: uniform (and AdaLoRA) cannot spend it and are skipped with a note; attention- and
    MLP-only spend it on their kinds; every method sweeps --lrs, the lr picked is the lowest *dev* loss, and every run
    carries test-split scores."""
    out = tmp_path / "b"
    args = ["baselines", "--run.model", "tiny-bert", "--run.steps", "3", "--run.max_eval", "16", "--run.max_train",
            "64", "--run.threads", "1", "--budget.rank", "0.5", "--methods", "uniform", "attention", "mlp", "random",
            "adalora", "--lrs", "1e-3", "3e-2", "--test", "--seeds", "0", "1", "--out", str(out),
            "--no_wandb"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "uniform and adalora skipped" in printed and "test_loss" in printed
    result = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in result["table"]] == ["attention", "attention", "mlp", "mlp", "random", "random"]
    cap = result["budget"]["params"]
    assert len(result["runs"]) == 3 * 2 * 2
    for r in result["runs"]:
        assert 0.8 * cap <= r["params"] <= cap and np.isfinite(r["test_loss"]) and 0 <= r["test_accuracy"] <= 1
        on = {n for n, k in r["ranks"].items() if k > 0}
        if r["method"] == "attention":
            assert on and all(".attention." in n for n in on)
        if r["method"] == "mlp":
            assert on and not any(".attention." in n for n in on)
    for method in ("attention", "mlp", "random"):
        rows = [r for r in result["table"] if r["method"] == method]
        assert [r["tuned"] for r in rows] == [r is min(rows, key=lambda x: x["eval_loss"]) for r in rows]
        assert rows[0]["test_loss"] != rows[1]["test_loss"]  # the lr changed the run
