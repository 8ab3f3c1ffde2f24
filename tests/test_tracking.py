"""Tracking: JSONL rows read back, W&B offline run written, PNG plot."""

from __future__ import annotations

import math

import numpy as np
import torch

from rankrl.plots import plot_curves
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
