"""Shared fixtures: offline, W&B off, tiny models built from a config (no download)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path_factory, monkeypatch):
    # W&B and rankrl caches go to temp dirs so tests never touch the user's home or each other.
    monkeypatch.setenv("WANDB_DIR", str(tmp_path_factory.mktemp("wandb")))
    if "RANKRL_CACHE" not in os.environ:
        monkeypatch.setenv("RANKRL_CACHE", str(tmp_path_factory.getbasetemp() / "rankrl-cache"))


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    # runs with threads=1 call torch.set_num_threads; that must not leak into later tests (torch is not imported here)
    torch = sys.modules.get("torch")
    threads = torch.get_num_threads() if torch is not None else None
    yield
    torch = sys.modules.get("torch")
    if torch is not None and threads is not None:
        torch.set_num_threads(threads)


def shared_data(name: str) -> Path:
    """Path of a data set under ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} is absent (the ../shared data sets sit beside the repo in CI)")
    return path
