"""rankrl.args: one flag spelling, TRL defaults that never override the user, GPU-only flags refused on CPU."""

from __future__ import annotations

import doctest

import pytest

import rankrl.args
from rankrl.args import flag_value, passed, refuse_gpu_only_flags, with_defaults
from rankrl.cli import main


def test_doctests():
    assert doctest.testmod(rankrl.args).attempted >= 2 and doctest.testmod(rankrl.args).failed == 0


def test_user_flags_win_over_defaults():
    argv = with_defaults(["--max_steps=5", "--seed", "3"], {"--max_steps": "20", "--seed": "0", "--beta": "0.1"})
    assert argv == ["--beta", "0.1", "--max_steps=5", "--seed", "3"]
    assert passed(["--fp16"], "--fp16") and not passed(["--fp16x", "1"], "--fp16")
    assert flag_value(["--a", "1", "--a=2"], "--a") == "2"


@pytest.mark.parametrize("argv", [["--fp16", "true"], ["--fp16"], ["--tf32=True"], ["--use_vllm", "true"]])
def test_gpu_only_flags_on_cpu_are_refused_with_the_fix(argv):
    with pytest.raises(SystemExit, match=f"no CUDA GPU.*{argv[0].split('=')[0]}.*drop"):
        refuse_gpu_only_flags(argv, cuda=False)
    refuse_gpu_only_flags(argv, cuda=True)  # with a GPU they are the user's business
    refuse_gpu_only_flags(["--fp16", "false"], cuda=False)  # switched off: fine


def test_gpu_only_flag_on_cpu_stops_the_command_before_any_work(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="--fp16 true: drop --fp16"):
        main(["rollouts", "train", "--model", "tiny-qwen", "--task", "arith", "--fp16", "true"])
    with pytest.raises(SystemExit, match="--fp16 true: drop --fp16"):
        main(["rerank", "train", "--model", "tiny-qwen", "--fp16", "true"])
