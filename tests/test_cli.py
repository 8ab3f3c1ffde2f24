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
