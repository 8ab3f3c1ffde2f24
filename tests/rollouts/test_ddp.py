"""The README's claim, run: under 2-rank DDP (gloo on CPU, ``accelerate launch --multi_gpu --num_processes 2``),
``RolloutGRPOTrainer`` with the uniform allocation trains bitwise like stock ``GRPOTrainer`` (losses, logged
metrics, weights), and with the knapsack allocator its round and history are the global ones, identical on both
ranks (every rank records both ranks' prompt groups)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")
pytest.importorskip("accelerate")

SCRIPT = Path(__file__).with_name("ddp_equal.py")
ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_uniform_allocation_equals_stock_grpo_under_two_ddp_ranks(tmp_path):
    out = tmp_path / "ddp.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="")  # fmt: skip
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), str(SCRIPT), str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    ranks = json.loads(out.read_text())
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["processes"] == 2 for r in ranks)
    assert all(r["backend"] == "gloo" for r in ranks)
    for r in ranks:
        assert r["logs_equal"] and r["unequal_params"] == [], r
        assert r["changed"] and len(r["losses"]) == 2  # training moved the weights: the comparison is not vacuous
        assert r["groups"] == [4, 4, 4, 4]  # 2 prompts x 4 rollouts per rank, gathered over both ranks
    keys, counts = ranks[0]["knapsack_round"]
    assert len(keys) == 4 and sum(counts) == 16 and min(counts) >= 2
    assert ranks[0]["knapsack_round"] == ranks[1]["knapsack_round"]
    assert ranks[0]["knapsack_history"] == ranks[1]["knapsack_history"]
    assert sum(ranks[0]["knapsack_history"]["trials"]) == 2 * 16  # 2 steps x 16 rollouts over both ranks
