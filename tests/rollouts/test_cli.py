"""`rankrl rollouts`: GRPO with allocators from the command line, and the learned allocator inside the trainer."""

from __future__ import annotations

import numpy as np
import pytest

from rankrl.cli import main
from rankrl.tracking import read_metrics


def test_rollouts_help(capsys):
    assert main(["rollouts", "--help"]) == 0
    assert "train-allocator" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["rollouts", "train", "--help"])
    assert exc.value.code == 0
    assert "--allocator" in capsys.readouterr().out and main(["rollouts", "nope"]) == 2


def test_budget_is_a_deprecated_alias_of_rollouts(capsys):
    assert main(["budget", "--help"]) == 0
    captured = capsys.readouterr()
    assert "train-allocator" in captured.out  # it ran `rankrl rollouts --help`
    assert "deprecated" in captured.err and "rankrl rollouts" in captured.err


@pytest.mark.parametrize("allocator", ["uniform", "knapsack"])
def test_rollouts_train_logs_grpo_metrics(tmp_path, allocator):
    out = tmp_path / "run"
    assert main(["rollouts", "train", "--model", "tiny-qwen", "--task", "arith", "--allocator", allocator,
                 "--rollouts_per_prompt", "4", "--per_device_train_batch_size", "8", "--max_steps", "2",
                 "--max_completion_length", "4", "--max_prompts", "4", "--lora_r", "4", "--report_to", "none",
                 "--output_dir", str(out)]) == 0  # fmt: skip
    rows = [r for r in read_metrics(out) if "grpo/effective_rollout_ratio" in r]
    assert len(rows) == 2
    assert all(0 <= r["grpo/frac_nonzero_groups"] <= 1 for r in rows)
    assert (out / "adapter_config.json").exists()  # LoRA adapter saved by TRL


def test_bad_rollouts_args_are_clear():
    with pytest.raises(ValueError, match="n_min"):
        main(["rollouts", "train", "--n_min", "9", "--report_to", "none"])
    with pytest.raises(FileNotFoundError, match="trained allocator directory"):
        main(["rollouts", "train", "--allocator", "/nonexistent", "--report_to", "none"])


def test_learned_allocator_drives_the_trainer_callable(tmp_path):
    from rankrl.rollouts.allocator import trainer_allocator
    from rankrl.rollouts.history import RolloutHistory

    assert main(["rollouts", "train-allocator", "--out", str(tmp_path / "alloc"), "--timesteps", "128",
                 "--difficulty", "mixed", "--history_rounds", "1", "--prompts_per_round", "4"]) == 0  # fmt: skip
    alloc = trainer_allocator(tmp_path / "alloc", horizon=10)
    history = RolloutHistory()
    counts = alloc(["a", "b", "c", "d"], history, 32)
    assert sum(counts) == 32 and min(counts) >= 2
    history.update(["a"] * 8 + ["b"] * 8, [1] * 8 + [0, 1] * 4)
    alloc(["a", "b", "c", "d"], history, 32)
    h = alloc.history
    assert h.trials[alloc.ids["a"]] == 8 and h.successes[alloc.ids["b"]] == 4  # trainer history folded in once
    alloc(["a", "b"], history, 16)
    assert h.trials[alloc.ids["a"]] == 8  # nothing new: not counted twice
    assert np.isclose(h.last_frac[alloc.ids["b"]], 0.5)
