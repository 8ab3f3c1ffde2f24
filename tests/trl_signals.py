"""Shared by the TRL jobs' Ctrl-C tests: start ``rankrl ...`` in a subprocess, send a signal once it has logged a
training step, and collect its exit status and output."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from rankrl.tracking import read_metrics

ROOT = Path(__file__).resolve().parents[1]


def loss_steps(out: Path) -> list[int]:
    """Steps of ``out/metrics.jsonl`` that logged a training loss."""
    return [r["step"] for r in read_metrics(out) if "loss" in r]


def signal_after_first_step(argv: list[str], out: Path, sig: int, timeout: float = 240) -> tuple[int, str]:
    """Run ``python -m rankrl.cli *argv``; once ``out`` logs a loss, send ``sig``; returns (exit status, output)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.Popen([sys.executable, "-m", "rankrl.cli", *argv], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        while not ((out / "metrics.jsonl").is_file() and loss_steps(out)):
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            assert time.monotonic() < deadline, f"no training step within {timeout} s"
            time.sleep(0.5)
        proc.send_signal(sig)
        log = proc.communicate(timeout=timeout)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, log
