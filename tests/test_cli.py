"""CLI smoke tests: --help everywhere, a tiny live fine-tune that logs, exports and resumes."""

from __future__ import annotations

import json

import pytest

from rankrl.cli import COMMANDS, main
from rankrl.tracking import read_metrics


def test_top_level_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)
    assert main(["nope"]) == 2


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_has_help(command, capsys):
    try:
        code = main([command, "--help"])
    except SystemExit as exc:  # tyro / argparse exit after printing help
        code = exc.code
    assert code == 0
    out = capsys.readouterr().out
    assert "--" in out or "usage" in out


def test_finetune_runs_logs_exports_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["finetune", "--model", "tiny-bert", "--task", "default", "--ranks", "kind:q=4,v=4,default=0",
            "--r_max", "4", "--steps", "6", "--eval_every", "3", "--max_eval", "32", "--batch_size", "8",
            "--lr", "0.01", "--out", str(out), "--no_progress"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "quality/accuracy" in printed and "cost/params" in printed
    rows = read_metrics(out)
    assert [r["step"] for r in rows if "quality/accuracy" in r] == [0, 3, 6]
    assert rows[0]["cost/params"] == 4 * 4 * 128  # q and v of 2 layers at rank 4, 64 -> 64 each
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert all(m.endswith(("query", "value")) for m in config["target_modules"]) and config["r"] == 4
    assert (out / "curves.png").exists() and list((tmp_path.parent).rglob("*.wandb")) is not None

    with pytest.raises(SystemExit, match="no checkpoint"):
        main(["finetune", "--model", "tiny-bert", "--out", str(tmp_path / "empty"), "--resume", "--no_wandb"])
    changed = [*args, "--no_wandb", "--resume"]
    changed[changed.index("--lr") + 1], changed[changed.index("--steps") + 1] = "0.02", "8"
    with pytest.raises(SystemExit, match=r"--lr: checkpoint 0.01 vs now 0.02, --steps: checkpoint 6 vs now 8"):
        main(changed)  # flags that change the run are refused by name, not silently replaced by the checkpoint's
    rows = read_metrics(out)
    assert main([*args, "--no_wandb", "--resume", "--threads", "1", "--eval_every", "2"]) == 0  # these may change
    assert read_metrics(out) == rows  # the run was finished: nothing trained, nothing logged twice


def test_interrupted_finetune_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    from rankrl.ranks.finetune import FineTuneRun

    out = tmp_path / "run"
    args = ["finetune", "--model", "tiny-bert", "--ranks", "uniform:2", "--r_max", "2", "--steps", "6",
            "--eval_every", "3", "--max_eval", "16", "--batch_size", "4", "--out", str(out), "--no_progress",
            "--no_wandb"]  # fmt: skip
    save = FineTuneRun.save_checkpoint

    def crash_after_first_checkpoint(self, path):
        save(self, path)
        raise KeyboardInterrupt

    monkeypatch.setattr(FineTuneRun, "save_checkpoint", crash_after_first_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        main(args)
    monkeypatch.setattr(FineTuneRun, "save_checkpoint", save)
    assert [r["step"] for r in read_metrics(out) if "quality/accuracy" in r] == [0, 3]
    assert main([*args, "--resume"]) == 0
    assert [r["step"] for r in read_metrics(out) if "quality/accuracy" in r] == [0, 3, 6]  # nothing lost
    assert (out / "adapter" / "adapter_model.safetensors").exists()


def test_resume_cuts_metrics_logged_after_the_checkpoint(tmp_path, monkeypatch):
    from rankrl.ranks.finetune import FineTuneRun

    out = tmp_path / "run"
    args = ["finetune", "--model", "tiny-bert", "--ranks", "uniform:2", "--r_max", "2", "--steps", "6",
            "--eval_every", "3", "--max_eval", "16", "--batch_size", "4", "--out", str(out), "--no_progress",
            "--no_wandb"]  # fmt: skip
    save, calls = FineTuneRun.save_checkpoint, []

    def crash_before_second_checkpoint(self, path):
        calls.append(self.state.step)
        if len(calls) == 2:  # step 6 was trained, evaluated and logged; the checkpoint still says step 3
            raise KeyboardInterrupt
        save(self, path)

    monkeypatch.setattr(FineTuneRun, "save_checkpoint", crash_before_second_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        main(args)
    monkeypatch.setattr(FineTuneRun, "save_checkpoint", save)
    assert [r["step"] for r in read_metrics(out) if "quality/accuracy" in r] == [0, 3, 6]
    assert main([*args, "--resume"]) == 0
    rows = read_metrics(out)
    assert [r["step"] for r in rows if "quality/accuracy" in r] == [0, 3, 6]  # step 6 once, from the resumed run
    assert [r["step"] for r in rows if "train/loss" in r] == [3, 6]
    assert [r["step"] for r in rows] == sorted(r["step"] for r in rows)


def test_sigint_checkpoints_exits_130_and_resume_finishes(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    import torch

    out = tmp_path / "run"
    args = ["finetune", "--model", "tiny-bert", "--ranks", "uniform:2", "--r_max", "2", "--steps", "400",
            "--eval_every", "0", "--max_eval", "16", "--max_train", "64", "--batch_size", "4", "--threads", "1",
            "--out", str(out), "--no_progress", "--no_wandb"]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "rankrl.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)  # fmt: skip
    seen = []
    for line in proc.stdout:  # training starts right after the first evaluation is printed
        seen.append(line)
        if line.startswith("step 0:"):
            proc.send_signal(signal.SIGINT)
            break
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, "".join(seen) + rest
    assert "SIGINT: stopped at step" in rest and "--resume" in rest
    step = torch.load(out / "checkpoint.pt", weights_only=True)["state"]["step"]
    assert 0 <= step < 400 and not (out / "adapter").exists()
    assert all(r["step"] <= step for r in read_metrics(out))
    assert main([*args, "--resume"]) == 0
    rows = read_metrics(out)
    assert [r["step"] for r in rows if "quality/accuracy" in r] == [0, 400]
    assert [r["step"] for r in rows] == sorted(r["step"] for r in rows)
    assert (out / "adapter" / "adapter_model.safetensors").exists()
