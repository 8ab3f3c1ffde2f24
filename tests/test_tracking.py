"""Tracking: JSONL rows read back, W&B offline run written, PNG plot."""

from __future__ import annotations

import math

import numpy as np
import torch

from rankrl.plots import plot_curves
from rankrl.resume import check_run_args, checkpoint_step, resume_checkpoint, truncate_metrics
from rankrl.tracking import Tracker, read_metrics, wandb_mode


def test_jsonl_keeps_numbers_and_resume_appends(tmp_path):
    with Tracker(tmp_path, config={"lr": 1e-3}, use_wandb=False) as t:
        t.log({"quality/accuracy": np.float32(0.5), "train/loss": torch.tensor(1.25), "note": "text"}, step=3)
        t.log({"train/loss": float("nan")}, step=4)
    with Tracker(tmp_path, use_wandb=False, resume=True) as t:
        t.log({"train/loss": 0.5}, step=5)
    rows = read_metrics(tmp_path)
    assert rows[0] == {"step": 3, "quality/accuracy": 0.5, "train/loss": 1.25}  # non-numbers stay out of JSONL
    assert math.isnan(rows[1]["train/loss"]) and rows[2] == {"step": 5, "train/loss": 0.5}
    assert (tmp_path / "config.json").exists()


def test_wandb_offline_run_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    (tmp_path / "wb").mkdir()
    assert wandb_mode() == "offline"
    with Tracker(tmp_path / "run", use_wandb=True) as t:
        t.log({"quality/accuracy": 0.75}, step=1)
        t.summary({"quality/accuracy": 0.75})
    runs = list((tmp_path / "wb").rglob("*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0
    assert read_metrics(tmp_path / "run") == [{"step": 1, "quality/accuracy": 0.75}]


def test_plot_curves_writes_png(tmp_path):
    rows = [{"step": s, "train/loss": 1 / (s + 1)} for s in range(5)]
    out = plot_curves(rows, ["train/loss", "quality/accuracy"], tmp_path / "c.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_config_and_summary_are_written_whole(tmp_path):
    with Tracker(tmp_path, config={"lr": 1e-3, "path": tmp_path}, use_wandb=False) as t:
        t.summary({"quality/accuracy": 0.5})
    import json

    assert json.loads((tmp_path / "config.json").read_text()) == {"lr": 1e-3, "path": str(tmp_path)}
    assert json.loads((tmp_path / "summary.json").read_text()) == {"quality/accuracy": 0.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "metrics.jsonl", "summary.json"]  # no temps


def test_truncate_metrics_cuts_rows_after_the_checkpoint(tmp_path):
    import doctest

    import rankrl.resume

    assert doctest.testmod(rankrl.resume).attempted and doctest.testmod(rankrl.resume).failed == 0
    with Tracker(tmp_path, use_wandb=False) as t:
        for step in (1, 2, 3):
            t.log({"train/loss": float(step)}, step=step)
    assert truncate_metrics(tmp_path / "metrics.jsonl", 2) == 1
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
    assert truncate_metrics(tmp_path / "metrics.jsonl", 5) == 0 and truncate_metrics(tmp_path / "none.jsonl", 1) == 0


def test_check_run_args_records_then_refuses_changes(tmp_path):
    import pytest

    check_run_args(tmp_path, {"lr": 0.1, "model": "tiny-qwen"}, resuming=False)
    check_run_args(tmp_path, {"lr": 0.1, "model": "tiny-qwen"}, resuming=True)  # same flags: fine
    with pytest.raises(ValueError, match=r"--lr 0.1 -> 0.2.*--output_dir"):
        check_run_args(tmp_path, {"lr": 0.2, "model": "tiny-qwen"}, resuming=True)
    check_run_args(tmp_path, {"lr": 0.2}, resuming=False)  # a fresh run records its own flags
    with pytest.warns(UserWarning, match="cannot be checked"):
        check_run_args(tmp_path / "old", {"lr": 0.2}, resuming=True)


def test_resume_checkpoint_resolves_or_fails_loudly(tmp_path):
    import pytest

    assert resume_checkpoint(None, tmp_path) is None and resume_checkpoint("false", tmp_path) is None
    with pytest.raises(FileNotFoundError, match="no checkpoint-N"):
        resume_checkpoint("true", tmp_path)
    for step in (2, 10):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
    assert resume_checkpoint("true", tmp_path) == str(tmp_path / "checkpoint-10")
    assert checkpoint_step(resume_checkpoint(str(tmp_path / "checkpoint-2"), tmp_path)) == 2
    with pytest.raises(FileNotFoundError, match="not a Trainer checkpoint"):
        resume_checkpoint(str(tmp_path), tmp_path)
